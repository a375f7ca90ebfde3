import os, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT/".venv"/"bin"/"python") if (ROOT/".venv"/"bin"/"python").exists() else sys.executable


@pytest.fixture(autouse=True)
def aimass_home(tmp_path, monkeypatch):
    "Every test gets its own registry and run folders."
    home = tmp_path/"aimass-home"
    monkeypatch.setenv("AIMASS_HOME", str(home))
    return home


@pytest.fixture
def ip():
    "An IPython shell with the aimass extension loaded, as in a notebook."
    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "aimass")
    before = set(shell.user_ns)
    yield shell
    for k in set(shell.user_ns) - before: del shell.user_ns[k]
