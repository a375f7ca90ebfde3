"""The registry guards what it holds: an emptied or damaged index never costs a version (rebuild, doctor), code stored
in a card runs only when the registry recorded it (or with trust_code=True), names and the home folder fail clearly."""
import json, os, socket, sqlite3, warnings
from pathlib import Path
import numpy as np
import pytest

import aimass
from aimass.core import AimassError, aimass_home, check_name, parse_ref
from aimass.registry import Registry, doctor, list_models, load, rebuild
from factory import make_version

NET = '''
class Net(nn.Module):
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.body = nn.Linear(in_features, num_classes)
    def forward(self, x): return self.body(x)
'''
SPEC = {"class": "__main__:Net", "kwargs": {"in_features": 4, "num_classes": 3}, "lightning": False, "source": NET}
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def _coded(name="coded"):
    "A version of a model defined in a notebook cell: its card stores the class's source."
    return make_version(data="iris", spec=SPEC, name=name, epochs=1)


def _tamper(folder: Path, marker: Path, **spec):
    "Change a card's spec the way a hostile copy would: code that leaves `marker` behind when it runs."
    card = json.loads((folder/"model.json").read_text())
    card["spec"] = {**card["spec"], "source": card["spec"]["source"] + f"\nimport pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n", **spec}
    (folder/"model.json").write_text(json.dumps(card))


# ---- 2. an emptied or damaged index ----------------------------------------------------------------------------------

def test_emptied_index_refuses_to_write_and_rebuild_restores_it(aimass_home):
    mv = make_version("linear", data="iris", epochs=1, name="keep")
    Registry().set_alias("keep", "production", 1)
    weights = (mv.path/"weights.safetensors").read_bytes()
    (aimass_home/"registry.db").write_bytes(b"")  # truncated to 0 bytes
    with pytest.raises(AimassError, match=r"(?s)registry\.db.*rebuild") as e:
        Registry().save("keep", {"task": "classification"})
    assert "aimass doctor --rebuild" in str(e.value)
    with pytest.raises(AimassError, match="rebuild"): list_models()  # not a silently empty registry
    assert (mv.path/"weights.safetensors").read_bytes() == weights and sorted(p.name for p in mv.path.parent.iterdir()) == ["v1"]
    report = rebuild()
    assert "keep:v1" in str(report) and "alias" in str(report).lower() and "cannot be recovered" in str(report)
    assert list(list_models().version) == ["v1"] and Registry().get("keep:v1").file("weights.safetensors").read_bytes() == weights
    assert Registry().save("keep", {"task": "classification"}).version == 2  # numbers go on from the cards on disk
    assert (mv.path/"weights.safetensors").read_bytes() == weights


def test_garbage_index_names_the_file_and_the_rebuild(aimass_home):
    make_version("linear", data="iris", epochs=1, name="keep")
    (aimass_home/"registry.db").write_bytes(os.urandom(8192))
    for action in (Registry, list_models, lambda: load("keep")):
        with pytest.raises(AimassError) as e: action()
        assert str(aimass_home/"registry.db") in str(e.value) and "rebuild" in str(e.value)
        assert not isinstance(e.value.__cause__, sqlite3.Error)
    assert not doctor().ok and "cannot be read" in str(doctor())
    report = doctor(rebuild=True)
    assert any(p.name.startswith("registry.db.damaged-") for p in aimass_home.iterdir())  # kept, moved aside
    assert doctor().ok and load("keep").predict(ROWS).shape == (2,)
    assert report.rebuilt and "keep:v1" in str(report)


def test_save_never_deletes_an_unindexed_version_folder(aimass_home):
    reg = Registry()
    reg.save("m", {"task": "regression"})
    stray = aimass_home/"models"/"m"/"v2"  # on disk, not in the index (a save killed before it committed, an old backup)
    stray.mkdir(); (stray/"model.json").write_text(json.dumps({"task": "regression", "name": "m", "version": 2}))
    (stray/"weights.safetensors").write_bytes(b"precious")
    with pytest.warns(UserWarning, match=r"v2.*not in the index.*doctor"):
        v = reg.save("m", {"task": "regression"})
    assert v.version == 3 and (stray/"weights.safetensors").read_bytes() == b"precious"
    assert "m:v2" in str(doctor()) and not doctor().ok
    doctor(rebuild=True)
    assert list(Registry().list("m").version) == ["v1", "v2", "v3"]


def test_rebuild_keeps_what_a_readable_index_knows(aimass_home):
    reg = Registry()
    for _ in range(3): reg.save("m", {"task": "regression"})
    reg.set_alias("m", "production", 1); reg.set_alias("m", "production", 3)
    reg.delete("m:v2")
    report = rebuild()
    assert "production" in str(report) and "cannot be recovered" not in str(report)
    reg = Registry()
    assert reg.get("m@production").version == 3 and reg.rollback("m").version == 1  # history kept
    assert reg.save("m", {"task": "regression"}).version == 4  # v2's number stays used


def test_doctor_is_a_verb():
    from aimass.commands import VERBS, run
    assert VERBS["doctor"] == "doctor" and aimass.doctor is doctor
    result, _ = run(["doctor"])
    assert result.ok and "no problems" in str(result)


# ---- 7. code stored in a card ----------------------------------------------------------------------------------------

def test_registered_code_loads_edited_code_is_refused(aimass_home, tmp_path):
    from aimass.inference import Runner
    mv = _coded()
    assert load("coded").predict(ROWS).shape == (2,)  # recorded when saved: runs
    assert Runner(mv.path, "torch").outputs(ROWS).shape == (2, 3)
    marker = tmp_path/"ran"
    _tamper(mv.path, marker)
    with pytest.raises(AimassError, match=r"(?s)coded:v1.*not the code.*trust_code=True"): load("coded")
    with pytest.raises(AimassError, match="trust_code=True"): Runner(mv.path, "torch")  # predict's and serve's torch backend
    with pytest.raises(AimassError, match="trust_code=True"): Registry().load("coded")  # what export and bench use
    assert not marker.exists()
    assert load("coded", trust_code=True).predict(ROWS).shape == (2,) and marker.exists()  # explicit trust runs it


def test_a_class_path_swapped_into_a_card_is_not_called(aimass_home, tmp_path):
    mv = _coded()
    card = json.loads((mv.path/"model.json").read_text())
    card["spec"] = {"class": "os:system", "kwargs": {"command": f"touch {tmp_path/'ran'}"}, "lightning": False}
    (mv.path/"model.json").write_text(json.dumps(card))
    with pytest.raises(AimassError, match="trust_code"): load("coded")
    with pytest.raises(AimassError, match="not an nn.Module"): load("coded", trust_code=True)
    assert not (tmp_path/"ran").exists()


def test_a_version_from_elsewhere_needs_trust(aimass_home, tmp_path):
    _coded()
    (aimass_home/"registry.db").unlink()  # the folders alone, as copied from another machine
    report = rebuild()
    assert "coded:v1" in str(report) and "trust" in str(report)
    with pytest.raises(AimassError, match="trust_code=True"): load("coded")
    assert "coded:v1" in str(doctor()) and not doctor().ok
    doctor(trust="coded:v1")  # read the code, then record it as this registry's
    assert load("coded").predict(ROWS).shape == (2,) and doctor().ok


def test_template_versions_need_no_trust(aimass_home):
    make_version("linear", data="iris", epochs=1, name="plain")
    (aimass_home/"registry.db").unlink()
    rebuild()
    assert load("plain").predict(ROWS).shape == (2,)


@pytest.mark.slow
def test_a_bundle_serves_onnx_and_never_runs_card_code(aimass_home, tmp_path):
    from aimass.bundle_server import parse_config
    from aimass.inference import Runner
    mv = _coded()
    b = aimass.bundle(mv.ref, tmp_path/"bundle", check=False)
    marker = tmp_path/"ran"
    _tamper(b.path/"model", marker)
    assert Runner(b.path/"model", "onnx").outputs(ROWS).shape == (2, 3)
    with pytest.raises(AimassError, match="trust_code"): Runner(b.path/"model", "torch")  # no registry vouches for it
    with socket.socket() as sock: sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]
    cfg = parse_config(["--port", str(port)], root=b.path)
    assert [m.backend for m in cfg.models] == ["onnx"]
    assert not marker.exists()


# ---- 12. names and the home folder -----------------------------------------------------------------------------------

def test_empty_and_overlong_names_are_clear_errors():
    with pytest.raises(AimassError, match="empty"): check_name("")
    with pytest.raises(AimassError, match="300 characters.*at most"): check_name("a" * 300)
    with pytest.raises(AimassError, match="at most"): parse_ref("a" * 300)
    with pytest.raises(AimassError, match="at most"): parse_ref("m@" + "a" * 300)
    with pytest.raises(AimassError, match="at most"): Registry().save("a" * 300, {"task": "regression"})
    with pytest.raises(AimassError, match="empty"): Registry().save("", {"task": "regression"})
    with pytest.raises(AimassError, match="at most"): load("a" * 300)


def test_train_and_serve_refuse_an_empty_name():
    with pytest.raises(AimassError, match="empty"):
        aimass.train("linear", "iris", epochs=1, name="", progress=False)
    assert Registry().list().empty
    make_version("linear", data="iris", epochs=1, name="plain")
    for refs in ({"": "plain"}, ["=plain"]):  # a served model's path name, given empty
        with pytest.raises(AimassError, match="path name cannot be empty"): aimass.serve(refs)


def test_unusable_home_is_one_clear_line(tmp_path, monkeypatch):
    (tmp_path/"file").write_text("")
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path/"file"/"home"))
    with pytest.raises(AimassError) as e: aimass_home()
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path/"file"/"home") in msg and "AIMASS_HOME" in msg
    with pytest.raises(AimassError, match="AIMASS_HOME"): list_models()
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path/"locked"))
    def refuse(self, *a, **k): raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(AimassError, match=r"Permission denied.*AIMASS_HOME"): aimass_home()
    monkeypatch.undo()
    monkeypatch.setenv("AIMASS_HOME", str(tmp_path/"ro"))
    (tmp_path/"ro").mkdir()
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # root may write anywhere: pretend it may not
    with pytest.raises(AimassError, match="cannot write"): aimass_home()


def test_opening_the_registry_while_a_writer_records_its_first_version_waits_for_it(aimass_home):
    "A writer moves its version folder into place, then records it, in one transaction: opening the registry in between is no damaged index."
    import threading, time
    reg = Registry()
    staging = reg.models_dir/"first"/".staging-x"; staging.mkdir(parents=True)
    (staging/"model.json").write_text(json.dumps({"task": "regression", "name": "first", "version": 1, "created_at": "2026-11-30T00:00:00+00:00"}))
    from aimass.registry import ModelCard
    with reg._write() as db:  # the writer's transaction, held while the other side opens the registry
        os.rename(staging, reg.models_dir/"first"/"v1")
        opened = {}
        t = threading.Thread(target=lambda: opened.setdefault("reg", Registry()))
        t.start(); time.sleep(0.5)
        assert t.is_alive(), "the registry opened (or failed) before the writer committed"
        reg._insert_version(db, ModelCard.read(reg.models_dir/"first"/"v1"))
    t.join(10)
    assert "reg" in opened and opened["reg"].get("first").ref == "first:v1"
