"The aimass console script: same verbs as the magics; exit status 2 and one clear line for bad input."
import os, subprocess
import pytest
from conftest import ROOT

AIMASS = str(ROOT/".venv"/"bin"/"aimass")
pytestmark = pytest.mark.slow  # each `aimass` command is a new process that imports the stack


def sh(*args):
    return subprocess.run([AIMASS, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=300)


def test_train_then_list():
    r = sh("train", "linear", "--data", "iris", "--epochs", "2", "--name", "cli-iris")
    assert r.returncode == 0, r.stderr
    assert "cli-iris:v1" in r.stdout and "accuracy" in r.stdout
    r = sh("models")
    assert r.returncode == 0 and "cli-iris" in r.stdout
    r = sh("promote", "cli-iris", "v1")
    assert r.returncode == 0 and r.stdout.strip() == "cli-iris@production: set to v1"  # what moved, not a Ref's fields


def test_bad_input_exits_2_with_a_message():
    r = sh("train", "mlp", "--data", "nowhere")
    assert r.returncode == 2 and "Unknown dataset 'nowhere'" in r.stderr and "Traceback" not in r.stderr
    r = sh("train", "--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr
    r = sh("train", "mlp", "--epoks", "3")
    assert r.returncode == 2 and r.stderr.startswith("aimass: unrecognized arguments: --epoks 3; did you mean --epochs?\nusage: aimass train")
    r = sh("train", "mlp", "--epochs", "-1")
    assert r.returncode == 2 and r.stderr == "aimass: --epochs must be at least 1, not -1.\n"
    assert sh("--help").returncode == 0


def test_predict_from_a_shell(tmp_path):
    assert sh("train", "linear", "--data", "iris", "--epochs", "2", "--name", "cli-iris").returncode == 0
    from sklearn.datasets import load_iris
    X = load_iris(as_frame=True).frame.drop(columns="target").head(20)
    X.to_csv(tmp_path/"rows.csv", index=False)
    r = sh("predict", "cli-iris", "--data", str(tmp_path/"rows.csv"), "--output", str(tmp_path/"out.parquet"), "--no-progress")
    assert r.returncode == 0, r.stderr
    import pandas as pd
    assert len(pd.read_parquet(tmp_path/"out.parquet")) == 20
    r = sh("predict", "cli-iris", "--data", str(tmp_path/"nothere.csv"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
