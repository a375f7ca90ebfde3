"Registry: atomic versions under a killed process, concurrent writers, refs, aliases, corrupt files."
import json, os, signal, subprocess, sys, textwrap, time
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
        def insert(self, db, card):
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
    v2 = reg.save("m", {"task": "classification"}, files={"blob.bin": b"third" * 1000})
    assert v2.version == 2 and reg.get("m:v2").file("blob.bin").read_bytes() == b"third" * 1000
    leftovers = [d.name for d in (aimass_home/"models"/"m").iterdir() if d.name not in ("v1", "v2")]
    assert leftovers == []


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
