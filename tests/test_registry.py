"Registry: atomic versions under a killed process, concurrent writers, refs, aliases, corrupt files."
import json, os, signal, subprocess, sys, textwrap, time, warnings
import pytest
from conftest import PYTHON
from aimass.core import AimassError
from aimass.registry import Registry

CHILD = textwrap.dedent("""
    import os, sys, time
    import aimass.registry as R
    point = sys.argv[1]
    reg = R.Registry()
    reg.save("m", {"task": "classification"}, files={"blob.bin": b"first" * 1000})
    if point == "before-rename":      # staging folder complete, not yet moved into place
        real_rename = os.rename
        def rename(a, b):
            print("READY", flush=True); time.sleep(60); real_rename(a, b)
        R.os.rename = rename
    elif point == "before-commit":    # folder moved into place, index row not yet committed
        def insert(self, db, card, *rest):
            print("READY", flush=True); time.sleep(60)
        R.Registry._insert_version = insert
    elif point == "mid-write":        # half of a file written
        def write(path, data):
            path.write_bytes(data[: len(data) // 2]); print("READY", flush=True); time.sleep(60)
        R._write_file = write
    reg.save("m", {"task": "classification"}, files={"blob.bin": b"second" * 1000})
""")


@pytest.mark.parametrize("point", ["mid-write", "before-rename", "before-commit"])
def test_killed_mid_save_leaves_registry_consistent(aimass_home, point):
    p = subprocess.Popen([PYTHON, "-c", CHILD, point], stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        assert p.stdout.readline().strip() == "READY"
        p.send_signal(signal.SIGKILL)
    finally: p.wait(10)
    reg = Registry()
    assert list(reg.list("m").version) == ["v1"]  # never half a version
    assert reg.get("m").file("blob.bin").read_bytes() == b"first" * 1000
    # killed before the commit: a whole v2 folder that no row points to. It is never deleted: left, said, skipped.
    stray = point == "before-commit"
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        new = reg.save("m", {"task": "classification"}, files={"blob.bin": b"third" * 1000})
    assert len(said) == stray and all(str(w.message).startswith(f"m: v2 is on disk in {aimass_home/'models'/'m'}") for w in said)
    assert new.version == (3 if stray else 2) and reg.get(new.ref).file("blob.bin").read_bytes() == b"third" * 1000
    leftovers = sorted(d.name for d in (aimass_home/"models"/"m").iterdir() if d.name not in ("v1", new.path.name))
    assert leftovers == (["v2"] if stray else [])
    if stray: assert (aimass_home/"models"/"m"/"v2"/"blob.bin").read_bytes() == b"second" * 1000


def test_concurrent_writers_get_distinct_versions(aimass_home):
    code = "import aimass.registry as R\nfor i in range(5): R.Registry().save('c', {'task': 'regression', 'i': i})"
    procs = [subprocess.Popen([PYTHON, "-c", code], env=os.environ.copy()) for _ in range(3)]
    assert all(p.wait(60) == 0 for p in procs)
    reg = Registry()
    assert list(reg.list("c").version) == [f"v{i}" for i in range(1, 16)]
    assert all(reg.get(f"c:v{i}").card.version == i for i in range(1, 16))


def test_refs_aliases_rollback_history():
    reg = Registry()
    for _ in range(3): reg.save("r", {"task": "classification"})
    reg.set_alias("r", "production", 1); reg.set_alias("r", "production", 2); reg.set_alias("r", "production", 3)
    assert reg.rollback("r").version == 2
    assert reg.rollback("r").version == 1
    with pytest.raises(AimassError, match="no earlier version"): reg.rollback("r")
    assert list(reg.alias_history("r").action) == ["set", "set", "set", "rollback", "rollback"]
    with pytest.raises(AimassError, match="no alias 'staging'"): reg.get("r@staging")
    with pytest.raises(AimassError, match="not a valid alias"): reg.set_alias("r", "bad alias!", 1)
    reg.delete("r:v1")
    assert "production" not in reg.list("r").aliases.tolist()  # the alias pointed at the deleted version


def test_corrupt_files_get_clear_errors(aimass_home):
    from aimass.training import train
    run = train("linear", "iris", epochs=1, progress=False, name="corrupt")
    (run.version.path/"weights.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(AimassError, match="not a valid safetensors"): Registry().load("corrupt")
    (run.version.path/"model.json").write_text("{broken")
    with pytest.raises(AimassError, match="card cannot be read"): Registry().get("corrupt")


def _two_tasks():
    reg = Registry()
    reg.save("clf", {"task": "classification", "model": "mlp", "classes": ["no", "yes"], "status": "completed",
                     "metrics": {"test": {"accuracy": 0.91234, "f1": 0.9}, "val": {"accuracy": 0.93}},
                     "hparams": {"epochs": 10, "lr": 0.001, "batch_size": 32, "optimizer": "adamw"},
                     "spec": {"template": "mlp", "kwargs": {"hidden": [64], "dropout": 0.2}}, "data": {"name": "iris", "rows": {"train": 105}}})
    reg.save("reg", {"task": "regression", "model": "linear", "metrics": {"test": {"mse": 1.5, "mae": 1.0, "r2": 0.8}},
                     "hparams": {"epochs": 5, "lr": 0.01, "batch_size": 64}, "target": {"name": "price"}})
    reg.set_alias("clf", "production", 1)
    return reg


def test_listing_groups_tasks_and_shows_hyperparameters():
    from aimass.registry import list_models
    import pandas as pd
    _two_tasks()
    models = list_models()
    assert isinstance(models.frame, pd.DataFrame) and len(models) == 2
    assert list(models.version) == ["v1", "v1"] and list(models["name"]) == ["clf", "reg"]  # DataFrame access still works
    assert [m["name"] for m in models] == ["clf", "reg"]  # iterating gives the versions
    text, html = str(models), models._repr_html_()
    assert max(map(len, text.splitlines())) <= 110, text
    assert "nan" not in text.lower() and "nan" not in html.lower()
    clf, reg = text.split("regression")  # one table per task, each with its own metrics
    assert "accuracy" in clf and "r2" not in clf and "r2" in reg and "accuracy" not in reg
    assert "epochs=10" in clf and "lr=0.001" in clf and "hidden=[64]" in clf and "production" in clf
    assert html.count("<table") == 2 and "overflow-x" not in html


def test_models_name_shows_versions_aliases_and_card():
    from aimass.registry import list_models, show
    reg = _two_tasks()
    reg.save("clf", {"task": "classification", "metrics": {"test": {"accuracy": 0.95, "f1": 0.94}}})
    one = list_models("clf")
    assert list(one.version) == ["v1", "v2"]
    text, html = str(one), one._repr_html_()
    for part in ("v1", "v2", "production -> v1", "accuracy"): assert part in text, (part, text)
    assert "production" in html and "clf:v2" in html
    assert list(list_models("clf@production").version) == ["v1"] and "hidden" in str(list_models("clf@production"))
    card = show("clf@production")
    text, html = str(card), card._repr_html_()
    for part in ("clf:v1", "classification", "no, yes", "accuracy", "0.912", "epochs", "hidden", "iris", "not exported",
                 "not benchmarked", "production"):
        assert part in text and part in html, part
    assert repr(card).startswith("ModelVersion(clf:v1")
