"The %aimass magics through a real IPython shell: verbs, -o, variables, cell magic, and clear UsageErrors."
import os, subprocess, sys, time
import numpy as np, pandas as pd, pytest
from IPython.core.error import UsageError
from conftest import PYTHON


def test_load_ext_is_fast_and_imports_nothing_heavy():
    code = ("import time, sys; from IPython.core.interactiveshell import InteractiveShell; ip = InteractiveShell.instance();"
            "t = time.perf_counter(); ip.run_line_magic('load_ext', 'aimass'); dt = time.perf_counter() - t;"
            "print(dt, [m for m in ('torch', 'lightning', 'onnx', 'litserve', 'pandas') if m in sys.modules])")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    assert float(out[0]) < 0.5 and out[1].strip() == "[]"


def test_train_with_o_and_models(ip):
    r = ip.run_line_magic("aimass", "train linear --data iris --epochs 10 --lr 0.05 --no-progress --name iris-lin -o run")
    assert ip.user_ns["run"] is r and r.ref == "iris-lin:v1"
    table = ip.run_line_magic("aimass", "models")
    assert list(table.version) == ["v1"] and table.test_accuracy.iloc[0] > 0.8
    assert ip.run_line_magic("aimass", "show iris-lin:v1").version == 1
    assert list(ip.run_line_magic("aimass", "models iris-lin:v1").version) == ["v1"]


def test_data_and_model_from_variables(ip):
    rng = np.random.default_rng(0)
    ip.user_ns["df"] = pd.DataFrame({"a": rng.normal(size=120), "b": rng.choice(["x", "y"], 120), "t": rng.integers(0, 2, 120)})
    r = ip.run_line_magic("aimass", "train mlp --data df --target t --epochs 1 --no-progress --hidden 8")
    assert r.version.card.spec == {"template": "mlp", "kwargs": {"hidden": 8}}
    ip.run_cell("from torch import nn\nclass Tiny(nn.Module):\n    def __init__(self, in_features, num_classes):\n"
                "        super().__init__(); self.l = nn.Linear(in_features, num_classes)\n    def forward(self, x): return self.l(x.flatten(1))")
    r = ip.run_line_magic("aimass", "train Tiny --data iris --epochs 1 --no-progress")
    assert r.ref == "iris-tiny:v1" and "source" in r.version.card.spec


def test_cell_magic_trains_the_class_the_cell_defines(ip):
    body = ("import torch\nfrom torch import nn\n\nclass Wide(nn.Module):\n    def __init__(self, in_features, num_classes, width=32):\n"
            "        super().__init__(); self.width = width\n        self.f = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, num_classes))\n"
            "    def forward(self, x): return self.f(x)\n\nWide(64, 10, width=48)\n")
    r = ip.run_cell_magic("aimass", "train --data digits --epochs 2 --no-progress --name wide", body)
    assert r.version.card.spec["kwargs"].get("width") == 48
    from aimass.registry import load
    assert load("wide").net.f[1].out_features == 48   # rebuilt from the cell's source, with its arguments


@pytest.mark.parametrize("line, message", [
    ("fly", "Unknown verb 'fly'"),
    ("trian mlp", "Unknown verb 'trian': did you mean train\\?"),
    ("train mlp --epoks 3", "^unrecognized arguments: --epoks 3; did you mean --epochs\\?\nusage: %aimass train "),
    ("train mlp --epochs ten", "--epochs: expected a whole number, not 'ten'"),
    ("train mlp --learning-rate 3", "unrecognized arguments"),
    ("train mlp --data nowhere", "Unknown dataset 'nowhere'"),
    ("train mlp --data ./missing.csv --target y", "No file"),
    ("train resnet --data iris", "Unknown model template 'resnet'"),
    ("models ghost", "No model named 'ghost'"),
    ("delete ghost:v1", "No model named 'ghost'"),
    ("rollback ghost", "no alias 'production'"),
    ("train mlp --devices x --epochs 1", "Cannot set up training"),
])
def test_bad_lines_raise_usage_errors_and_the_shell_survives(ip, line, message):
    with pytest.raises(UsageError, match=message): ip.run_line_magic("aimass", line)
    assert ip.run_cell("1 + 1").result == 2


@pytest.mark.parametrize("line, message", [
    ("train mlp --epochs -1", "--epochs must be at least 1, not -1."),
    ("train mlp --batch-size 0", "--batch-size must be at least 1, not 0."),
    ("bench m --threads 0", "--threads must be at least 1, not 0."),
    ("bench m --batch-sizes -1,8", "--batch-sizes must be at least 1, not -1."),  # argparse alone takes -1,8 for an option
])
def test_a_bad_value_is_one_line_naming_the_flag(ip, line, message):
    with pytest.raises(UsageError) as e: ip.run_line_magic("aimass", line)
    assert str(e.value) == message


def test_a_missing_file_names_the_working_directory(ip):
    with pytest.raises(UsageError) as e: ip.run_line_magic("aimass", "train mlp --data ./missing.csv --target y")
    assert "missing.csv" in str(e.value) and os.getcwd() in str(e.value)


def test_cell_magic_errors(ip):
    with pytest.raises(UsageError, match="defines no nn.Module"): ip.run_cell_magic("aimass", "train --data iris", "x = 1\n")
    with pytest.raises(UsageError, match="works with train"): ip.run_cell_magic("aimass", "models", "x = 1\n")


def test_help(ip, capsys):
    ip.run_line_magic("aimass", "--help")
    assert "train" in capsys.readouterr().out
    ip.run_line_magic("aimass", "train --help")
    assert "--early-stopping" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # Completer.complete: the plain list, as `ip.complete` gives
def test_tab_completion(ip):
    from aimass.registry import Registry
    reg = Registry()
    for _ in range(2): reg.save("digits-mlp", {"task": "classification"})
    reg.set_alias("digits-mlp", "production", 1)
    complete = lambda line: ip.Completer.complete("", line, len(line))[1]
    assert complete("%aimass pro") == ["promote"]
    assert complete("%aimass bench --batch") == ["--batch-sizes"]
    assert complete("%aimass export digits-") == ["digits-mlp", "digits-mlp:v1", "digits-mlp:v2", "digits-mlp@production"]
    assert complete("%aimass show digits-mlp:v") == ["v1", "v2"]
    assert complete("%aimass serve a=digits-mlp@pro") == ["production"]
    assert complete("%aimass promote digits-mlp v") == ["v1", "v2"]
    assert "digits-mlp" not in complete("%aimass predict digits-mlp --data d")  # the value of --data, not a ref
    assert complete("%aimass train ") == ["mlp", "cnn", "linear"]  # templates where a model goes
    assert complete("%aimass train c") == ["cnn"]
    assert complete("%aimass train mlp --data d") == ["digits", "diabetes"]  # built-in datasets after --data
    assert complete("%aimass train mlp --data=w") == ["wine"]
    assert complete("%aimass train --init-from digits-mlp@") == ["production"]  # a ref
    assert complete("%aimass serve x --backend ") == ["auto", "onnx", "torch"]  # choices
    from IPython.core.completer import provisionalcompleter
    line = "%aimass show digits-mlp:v"
    with provisionalcompleter():  # the API Jupyter's frontends use: each completion replaces the piece after the ':'
        found = {(c.start, c.text) for c in ip.Completer.completions(line, len(line))}
    assert {(len(line) - 1, "v1"), (len(line) - 1, "v2")} <= found


def test_completing_flags_and_templates_imports_nothing_heavy():
    "Tab after `%aimass train --` answers from the source at once: the training layer (torch) is not imported."
    code = ("import sys, time; from IPython.core.interactiveshell import InteractiveShell; ip = InteractiveShell.instance();"
            "ip.run_line_magic('load_ext', 'aimass'); c = lambda line: ip.Completer.complete('', line, len(line))[1];"
            "t = time.perf_counter(); flags = c('%aimass train --ep'); dt = time.perf_counter() - t;"
            "print(dt, flags, c('%aimass train --hid'), c('%aimass serve m --max-b'), c('%aimass train '), c('%aimass train mlp --data ir'),"
            "[m for m in ('torch', 'lightning', 'onnx') if m in sys.modules])")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout.split(maxsplit=1)
    assert out[1].strip() == "['--epochs'] ['--hidden'] ['--max-batch-size'] ['mlp', 'cnn', 'linear'] ['iris'] []"
    assert float(out[0]) < 1.0  # it was 3 s and more, importing torch


def test_completing_refs_imports_no_torch():
    code = ("import sys; from IPython.core.interactiveshell import InteractiveShell; ip = InteractiveShell.instance();"
            "ip.run_line_magic('load_ext', 'aimass'); from aimass.registry import Registry; Registry().save('m', {'task': 'regression'});"
            "c = lambda line: ip.Completer.complete('', line, len(line))[1]; c('%aimass train m');"
            "print(c('%aimass export m'), c('%aimass export --qu'), [m for m in ('torch', 'lightning') if m in sys.modules])")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['m', 'm:v1'] ['--quantize'] []"


def test_resume_needs_only_the_name(ip):
    ip.run_line_magic("aimass", "train linear --data iris --epochs 2 --batch-size 16 --lr 0.05 --no-progress --name iris-r")
    r = ip.run_line_magic("aimass", "train --name iris-r --resume --epochs 4 --no-progress")
    assert (r.ref, list(r.history.epoch), r.version.card.hparams["batch_size"]) == ("iris-r:v2", [1, 2, 3, 4], 16)
    with pytest.raises(UsageError, match=r"^Cannot resume run iris-r/\S+ with other settings: batch_size=64 \(the run's: 16\)\. "):
        ip.run_line_magic("aimass", "train --name iris-r --resume --batch-size 64 --epochs 6")


def test_the_dashboard_leaves_its_final_state_as_html(ip):
    # A page rendered without a kernel has no widget state: the output's last update carries the final dashboard as HTML.
    from IPython.core.displaypub import CapturingDisplayPublisher
    shown, ip.display_pub = ip.display_pub, CapturingDisplayPublisher()
    try: ip.run_line_magic("aimass", "train linear --data iris --epochs 3 --progress dashboard --name dash")
    finally: outputs, ip.display_pub = ip.display_pub.outputs, shown
    first, last = outputs[0], outputs[-1]
    assert last["update"] and last["transient"]["display_id"] == first["transient"]["display_id"]
    assert "application/vnd.jupyter.widget-view+json" in last["data"]  # the live widget stays where the front end runs it
    page = last["data"]["text/html"]
    assert page.count("<svg") == 3 and "<polyline" in page  # loss, val acc, val f1
    assert "completed · epoch 3/3" in page and "best epoch" in page and "epochs/s" in page


def test_promote_rollback(ip):
    for _ in range(2): ip.run_line_magic("aimass", "train linear --data iris --epochs 1 --no-progress --name pr")
    assert repr(ip.run_line_magic("aimass", "promote pr v1")) == "pr@production: set to v1"
    assert repr(ip.run_line_magic("aimass", "promote pr v2")) == "pr@production: v1 -> v2"
    moved = ip.run_line_magic("aimass", "rollback pr")
    assert repr(moved) == "pr@production: v2 -> v1" and moved.version == 1  # says what moved, not Ref(name=..., ...)
    assert repr(ip.run_line_magic("aimass", "promote pr v2 --alias staging")) == "pr@staging: set to v2"
    assert ip.run_line_magic("aimass", "show pr@production").version == 1


@pytest.mark.slow
def test_predict_serve_several_and_bundle_from_magics(ip, tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"size": rng.normal(10, 3, 150).round(1), "kind": rng.choice(["a", "b", "c"], 150)})
    df["big"] = np.where(df["size"] > 10, "yes", "no")
    df.loc[::11, "size"] = np.nan
    ip.user_ns["df"] = df
    ip.run_line_magic("aimass", "train mlp --data df --target big --epochs 2 --no-progress --name sizes")
    ip.run_line_magic("aimass", "export sizes")
    out = tmp_path/"scored.csv"
    p = ip.run_line_magic("aimass", f"predict sizes --data df --output {out} --keep kind --no-progress -o scored")
    assert ip.user_ns["scored"] is p and p.rows == 150 and out.exists()
    assert list(pd.read_csv(out).columns[:2]) == ["kind", "prediction"]
    with pytest.raises(UsageError, match="overwrite"): ip.run_line_magic("aimass", f"predict sizes --data df --output {out}")
    ip.run_line_magic("aimass", "promote sizes v1")
    srv = ip.run_line_magic("aimass", "serve a=sizes@production b=sizes:v1 -o srv")
    try:
        assert set(srv.models) == {"a", "b"} and srv.models["a"].follow == "sizes@production"
        rows = df.drop(columns="big").head(4)
        assert [r["label"] for r in srv.predict(rows, model="b")] == list(p.frame.prediction.head(4))
        rep = ip.run_line_magic("aimass", f"loadtest {srv.url} --model a --requests 50 --concurrency 2")
        assert rep.errors == {} and rep.served_by == {"sizes:v1": 50}
    finally:
        ip.run_line_magic("aimass", "stop --all")
    b = ip.run_line_magic("aimass", f"bundle sizes@production {tmp_path/'deploy'}")
    assert b.ref == "sizes:v1" and (tmp_path/"deploy"/"server.py").exists() and (tmp_path/"deploy"/"Dockerfile").exists()
    with pytest.raises(UsageError, match="overwrite"): ip.run_line_magic("aimass", f"bundle sizes {tmp_path/'deploy'}")
