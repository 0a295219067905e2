"""CI runs the README's two set-up commands verbatim, and the first installs everything the tests need."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_bash_blocks() -> list[str]:
    return re.findall(r"^```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.M | re.S)


def test_ci_reads_its_two_commands_from_the_readme_and_installs_nothing_else():
    script = (ROOT / ".ci" / "run").read_text()
    assert "pip install" not in script                    # every install step is the README's
    blocks = readme_bash_blocks()
    for n in (1, 2):                                       # .ci/run's own reader agrees with this one
        got = subprocess.run(["bash", "-c", re.search(r"readme_block\(\) \{.*?\n(.*?)\n\}", script, re.S).group(1)
                              .replace("$1", str(n))], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        assert got.strip() == blocks[n - 1].strip()


def test_the_readme_install_line_installs_the_test_extras_and_bohb():
    install, tests = readme_bash_blocks()[:2]
    assert "\n" not in install and install.startswith("python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 && ")
    assert '.venv/bin/pip install -e ".[dev]"' in install
    assert ".venv/bin/pip install --no-deps hpbandster==0.7.4" in install    # BOHB's searcher (tests need it)
    assert install.endswith(".venv/bin/python -m tuning.run --space smoke")
    assert tests == ".venv/bin/python -m pytest -q"
