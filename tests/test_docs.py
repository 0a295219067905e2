"""The documentation holds: every relative link (file and #anchor) resolves, and every command in a bash block of
the README (and of docs/) parses with that CLI's own argparse parser (no stale flags); the README stays a front page."""

import importlib
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "search_spaces" / "README.md",
         REPO / "bench" / "README.md"]
# `python -m <module>` and the console scripts (pyproject.toml) -> the module whose `_parser()` reads their flags
CLIS = {"multivae.train": "multivae.train_cli", "multivae.recommend": "multivae.recommend", "tuning.run": "tuning.run",
        "tuning.report": "tuning.report", "tuning.ablation": "tuning.ablation", "multivae-train": "multivae.train_cli",
        "multivae-recommend": "multivae.recommend", "multivae-tune": "tuning.run", "multivae-report": "tuning.report"}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The page without its fenced blocks and inline code, where a `[x](y)` is not a link."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: links as their text, lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        if m := re.match(r"#{1,6} (.*)", line):
            s = slug(m.group(1))
            out.add(s if s not in seen else f"{s}-{seen[s]}")
            seen[s] = seen.get(s, 0) + 1
    return out


def broken_links(page: Path) -> list[str]:
    bad = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto:: not checked offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{page.relative_to(REPO)}: {target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{page.relative_to(REPO)}: {target} (no heading #{anchor} in {dest.relative_to(REPO)})")
    return bad


def test_the_pages_exist():
    assert all(p.is_file() for p in PAGES), [str(p) for p in PAGES if not p.is_file()]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    bad = broken_links(page)
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_slugs_follow_github():
    assert slug("Precision: bf16 on this machine (issue 15)") == "precision-bf16-on-this-machine-issue-15"
    assert slug("### `scheduler`".lstrip("# ")) == "scheduler"
    assert slug("Speed (CPU; details in [bench/README.md](bench/README.md))") == "speed-cpu-details-in-benchreadmemd"


def bash_commands(page: Path) -> list[str]:
    """Each command line of the page's ```bash blocks: continuations joined, `&&`, `|` and `;` split apart."""
    commands = []
    for lang, body in FENCE.findall(page.read_text()):
        if lang != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            part: list[str] = []
            for t in [*tokens, "&&"]:
                if t in ("&&", "||", "|", ";", "&"):
                    if part:
                        commands.append(shlex.join(part))
                    part = []
                else:
                    part.append(t)
    return commands


def cli_of(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(parser module, args) of one of our CLIs, `python -m X ...`, a console script, or after `ray job submit ... --`."""
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):   # NAME=value before a command
        tokens = tokens[1:]
    if "--" in tokens and tokens[0] == "ray":
        return cli_of(tokens[tokens.index("--") + 1:])
    if len(tokens) >= 3 and Path(tokens[0]).name.startswith("python") and tokens[1] == "-m" and tokens[2] in CLIS:
        return CLIS[tokens[2]], tokens[3:]
    if tokens and tokens[0] in CLIS and "." not in tokens[0]:
        return CLIS[tokens[0]], tokens[1:]
    return None


def unparsable(command: str) -> str | None:
    """None when the command's CLI parses it, else why not (the parser's own one-line error)."""
    found = cli_of(shlex.split(command))
    if found is None:
        return None
    module, args = found
    try:
        importlib.import_module(module)._parser().parse_args(args)
    except SystemExit as exc:
        if exc.code != 0:
            return f"{command!r}: exit {exc.code}"
    return None


def test_every_readme_command_parses_with_its_cli(capsys):
    commands = bash_commands(REPO / "README.md")
    ours = [c for c in commands if cli_of(shlex.split(c))]
    assert len(ours) >= 5, ours   # the smoke search, a search, the report, recommend, a cluster job
    failures = [f for f in map(unparsable, ours) if f]
    assert failures == [], capsys.readouterr().err


@pytest.mark.parametrize("page", PAGES[1:], ids=lambda p: str(p.relative_to(REPO)))
def test_every_command_of_the_docs_parses_with_its_cli(page, capsys):
    failures = [f for f in map(unparsable, bash_commands(page)) if f]
    assert failures == [], capsys.readouterr().err


def test_a_stale_flag_is_caught(capsys):
    assert unparsable("python -m tuning.run --space smoke --no-such-flag") is not None
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    assert unparsable("multivae-tune --space smoke --num-samples 2") is None
    assert unparsable("RAY_AUTH_MODE=token ray job submit -- python -m tuning.run --bogus") is not None


def test_readme_is_a_front_page_and_starts_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    blocks = [body for lang, body in FENCE.findall(text) if lang == "bash"][:2]
    # .ci/run runs these two: the install + smoke search, then the tests, each one line
    assert [b.count("\n") for b in blocks] == [1, 1]
    assert blocks[0].strip().endswith("&& .venv/bin/python -m tuning.run --space smoke")
    assert blocks[1].strip() == ".venv/bin/python -m pytest -q"


def test_the_licence_pyproject_names_is_there():
    tomllib = pytest.importorskip("tomllib")
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]["text"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
