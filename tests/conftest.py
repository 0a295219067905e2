"""Suite-wide setup. Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it is imported, so it is set here,
before any test module imports Ray: every Ray node of the tests then binds 127.0.0.1 only."""

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

# The signing key of the experiments the tests make (tuning.signing), in a folder of this test session, never
# the user's own ~/.config; subprocesses inherit it.
import tempfile  # noqa: E402

os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="multivae-tests-config-")
