import os, sys
from pathlib import Path
import pytest
from factory import SharedHome

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT/".venv"/"bin"/"python") if (ROOT/".venv"/"bin"/"python").exists() else sys.executable


def _has_cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError: return False


def pytest_collection_modifyitems(config, items):
    "Tests marked `gpu` need CUDA: skipped, with the reason, where there is none."
    gpu = [i for i in items if i.get_closest_marker("gpu")]
    if gpu and not _has_cuda():
        for item in gpu: item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(autouse=True)
def aimass_home(request, tmp_path, monkeypatch):
    "Every test gets its own empty registry and run folders, or its module's shared one (factory.shared_home)."
    shared = request.getfixturevalue("home") if "home" in request.fixturenames else None
    home = shared["dir"] if isinstance(shared, SharedHome) else tmp_path/"aimass-home"
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
