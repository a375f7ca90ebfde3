"""Deployment bundles: the folder serves the model from a fresh virtual environment holding only its requirements.txt."""
import dataclasses, json, os, re, shutil, signal, socket, subprocess, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("torch")

from aimass.core import AimassError
from aimass.registry import Registry
from aimass import deployment as B
from factory import shared_home

HEAVY = ("torch", "lightning", "pytorch_lightning", "torchmetrics", "ipywidgets", "IPython", "ipykernel", "jupyter_core",
         "matplotlib", "sklearn", "nbdev", "aimass")

ROWS = [{"age": 31.0, "city": "rome", "income": 52.5},
        {"age": None, "city": "paris", "income": 47.0},     # a missing number: imputed
        {"age": 58.0, "city": None, "income": None},        # missing category and number
        {"age": 44.0, "city": "atlantis", "income": 50.0},  # a category never seen: no one-hot bit
        {"age": 39.0, "income": 51.0}]                      # a column left out: missing


def _frame(n=240, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"age": rng.normal(40, 10, n).round(1), "city": rng.choice(["oslo", "paris", "rome"], n),
                       "income": rng.normal(50, 5, n).round(2)})
    df.loc[::7, "age"] = np.nan
    df.loc[::11, "city"] = None
    df["label"] = np.where((df.age.fillna(40) > 40) ^ (df.city == "rome"), "yes", "no")
    return df


@shared_home(scope="session")
def home(folder):
    "One AIMASS_HOME for the session: a tabular model (categorical column, missing values) bundled once; v2 left unexported."
    from aimass.training import train
    train("mlp", _frame(), target="label", epochs=3, name="churn", progress=False)
    train("mlp", _frame(seed=1), target="label", epochs=1, name="churn", progress=False)  # v2: no export
    first = B.bundle("churn:v1", folder/"bundles"/"churn", port=8123)  # v1 has no export yet: bundle exports it
    return {"bundle": first}


@pytest.fixture(scope="session")
def fresh_venv(home):
    "A virtual environment from the base interpreter (no system site packages) with only the bundle's requirements."
    venv, req = home["dir"]/"venv", home["bundle"].path/"requirements.txt"
    t0 = time.perf_counter()
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=300)
    t1 = time.perf_counter()
    p = subprocess.run([str(venv/"bin"/"pip"), "install", "-q", "-r", str(req)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    print(f"\nfresh venv: created in {t1 - t0:.1f} s, requirements installed in {time.perf_counter() - t1:.1f} s")
    return venv/"bin"/"python"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_gone(pgid, wait=10.0):
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try: os.killpg(pgid, 0)
        except ProcessLookupError: return True
        time.sleep(0.05)
    return False


class BundleServer:
    "`python server.py` of a bundle, started the way a user would, in its own process group."
    def __init__(self, python, folder, cwd, tmpdir, port=None, env=None):
        self.port = port or _free_port()
        self.url, self.log = f"http://127.0.0.1:{self.port}", Path(cwd)/f"server-{self.port}.log"
        keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(python), str(Path(folder)/"server.py"), "--port", str(self.port)], cwd=cwd,
                                         env={**keep, "TMPDIR": str(tmpdir), **(env or {})}, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_healthy(self, within=120.0):
        end = time.monotonic() + within
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200: return self
            except httpx.HTTPError: pass
            time.sleep(0.1)
        raise AssertionError(f"no /health within {within} s:\n{self.log.read_text()[-3000:]}")

    def stop(self):
        try: os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError: pass
        self.proc.wait(15)
        return _group_gone(self.proc.pid)


@pytest.fixture
def tmpdirs(tmp_path):
    (tmp_path/"elsewhere").mkdir(); (tmp_path/"tmp").mkdir()
    return tmp_path/"elsewhere", tmp_path/"tmp"


@pytest.mark.venv
def test_fresh_venv_serves_the_bundle(home, fresh_venv, tmpdirs):
    b, (cwd, tmp) = home["bundle"], tmpdirs
    probe = f"import importlib.util as u; print([m for m in {HEAVY!r} if u.find_spec(m)])"
    found = subprocess.run([str(fresh_venv), "-c", probe], capture_output=True, text=True, cwd=cwd, check=True).stdout.strip()
    assert found == "[]", f"the fresh venv holds training-side packages: {found}"
    srv = BundleServer(fresh_venv, b.path, cwd, tmp)
    try:
        t0 = time.perf_counter()
        srv.wait_healthy()
        print(f"\nbundle server healthy in {time.perf_counter() - t0:.1f} s")
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            r = c.post("/predict", json={"instances": ROWS})
            assert r.status_code == 200, r.text
            assert r.headers["X-Model-Version"] == "churn:v1"
            preds = r.json()["predictions"]
            local = Registry().load("churn:v1")
            assert [p["label"] for p in preds] == list(local.predict(ROWS))
            probs = np.array([[p["probabilities"][k] for k in local.classes] for p in preds])
            np.testing.assert_allclose(probs, local.outputs(ROWS), atol=1e-5)
            # the README's example request and answer are what the server does
            example = json.loads((b.path/"example.json").read_text())
            assert json.dumps(example["instances"][0]) in b.readme
            documented = json.loads(b.readme.split("Answer:\n\n```json\n")[1].split("```")[0])["predictions"][0]
            served = c.post("/predict", json=example).json()["predictions"][0]
            assert served["label"] == documented["label"]
            np.testing.assert_allclose(list(served["probabilities"].values()), list(documented["probabilities"].values()), rtol=1e-3)
            info = c.get("/info").json()
            assert (info["ref"], info["backend"], info["task"], info["classes"]) == ("churn:v1", "onnx", "classification", ["no", "yes"])
            assert [col["name"] for col in info["schema"]["columns"]] == ["age", "city", "income"]
            bad = c.post("/predict", json={"instances": [{"age": "old", "city": "rome", "income": 1}]})
            assert bad.status_code == 400 and "age" in bad.json()["detail"]
            assert c.post("/predict", json={"rows": ROWS}).status_code == 422
            assert c.post("/predict", content=b"not json", headers={"Content-Type": "application/json"}).status_code == 422
            latin1 = c.post("/predict", content='{"instances": [{"age": 3, "city": "forlì", "income": 1}]}'.encode("latin-1"),
                            headers={"Content-Type": "application/json"})
            assert latin1.status_code == 400 and "UTF-8" in latin1.json()["detail"], latin1.text
            assert c.post("/predict", json={"instances": ROWS[:1]}).status_code == 200  # still serving
            end = time.monotonic() + 5  # each HTTP process saves its counters every 0.25 s
            while c.get("/stats").json()["requests"] < 7 and time.monotonic() < end: time.sleep(0.1)
            assert c.get("/stats").json()["by_status"] == {"200": 3, "400": 2, "422": 2}
            assert c.get("/docs").status_code == 200
        assert f"serving {b.path/'model'} with onnx" in srv.log.read_text()
    finally:
        assert srv.stop(), "processes of the bundle's server are left"
    with socket.socket() as s: s.bind(("127.0.0.1", srv.port))  # the port is free again


@pytest.mark.venv
def test_api_key_and_stale_run_folders(home, fresh_venv, tmpdirs):
    "AIMASS_API_KEY guards every path but /health; a run folder left by a killed server is removed by the next start."
    b, (cwd, tmp) = home["bundle"], tmpdirs
    stale = tmp/"aimass-bundle-999999-old"; stale.mkdir()  # pid 999999 does not exist (pid_max is lower)
    srv = BundleServer(fresh_venv, b.path, cwd, tmp, env={"AIMASS_API_KEY": "s3cret"})
    try:
        srv.wait_healthy()
        assert httpx.post(srv.url + "/predict", json={"instances": ROWS}).status_code == 401
        r = httpx.post(srv.url + "/predict", json={"instances": ROWS}, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200 and len(r.json()["predictions"]) == len(ROWS)
        assert not stale.exists() and len(list(tmp.glob("aimass-bundle-*"))) == 1
    finally:
        assert srv.stop()


def _help_defaults(text: str) -> dict:
    "`{flag: its default as shown, or None}` from an argparse --help text."
    segments = re.split(r"(?<!,) (?=--[a-z])", " ".join(text.split()).split(" options: ", 1)[1])
    return {s.split()[0].rstrip(","): (m[1] if (m := re.search(r"\(default: ([^()]*)\)$", s.strip())) else None)
            for s in segments if s.startswith("--")}


@pytest.mark.venv
def test_server_py_flags(home, fresh_venv, tmpdirs):
    "server.py has a flag for every ServerConfig setting a user gives, each with the bundle's default."
    from aimass.bundle_server import flag_fields
    from aimass.launcher import ServerConfig
    b, (cwd, _) = home["bundle"], tmpdirs
    help_ = subprocess.run([str(fresh_venv), str(b.path/"server.py"), "--help"], capture_output=True, text=True, cwd=cwd)
    assert help_.returncode == 0 and "--max-batch-size" in help_.stdout and "8123" in help_.stdout  # bundle(port=8123) is the default
    shown, expected = _help_defaults(help_.stdout), ServerConfig(**b.manifest["server"])
    user_facing = [f.name for f in dataclasses.fields(ServerConfig) if f.name not in (*ServerConfig.internal, "follow_interval", "device", "precision")]
    assert [f.name for f in flag_fields()] == user_facing
    assert {name: shown.get("--" + name.replace("_", "-")) for name in user_facing} == {n: str(getattr(expected, n)) for n in user_facing}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); s.listen()
        busy = subprocess.run([str(fresh_venv), str(b.path/"server.py"), "--port", str(s.getsockname()[1])],
                              capture_output=True, text=True, cwd=cwd, timeout=60)
    assert busy.returncode == 2 and "already in use" in busy.stderr
    bad = subprocess.run([str(fresh_venv), str(b.path/"server.py"), "--workers", "0"], capture_output=True, text=True, cwd=cwd)
    assert bad.returncode == 2 and "at least 1" in bad.stderr


def test_server_py_defaults_come_from_bundle_json(home, tmp_path):
    "server.py is the same in every bundle: its defaults are read from bundle.json's `server` entry (and $PORT) when it starts."
    assert (home["bundle"].path/"server.py").read_text() == B.server_script()
    svc = tmp_path/"svc"
    shutil.copytree(home["bundle"].path, svc)
    manifest = json.loads((svc/"bundle.json").read_text())
    manifest["server"].update(workers=3, max_queue=17, log_level="info")
    (svc/"bundle.json").write_text(json.dumps(manifest))
    env = {k: v for k, v in os.environ.items() if k != "PORT"}
    def shown(**extra):
        p = subprocess.run([sys.executable, str(svc/"server.py"), "--help"], capture_output=True, text=True, cwd=tmp_path,
                           env={**env, **extra}, check=True)
        return _help_defaults(p.stdout)
    got = shown()
    assert (got["--workers"], got["--max-queue"], got["--log-level"], got["--port"]) == ("3", "17", "info", "8123")
    assert shown(PORT="8999")["--port"] == "8999"


def test_version_without_export_gets_exported(home, capsys):
    b = home["bundle"]
    assert any("exported it first" in n for n in b.notes) and b.manifest["notes"] == b.notes
    assert Registry().get("churn:v1").card.export.passed
    capsys.readouterr()
    again = B.bundle("churn:v1", home["dir"]/"bundles"/"again", check=False)  # exported now: nothing to do
    assert again.notes == [] and "exporting it first" not in capsys.readouterr().out


def test_failing_export_is_a_clear_error(home, tmp_path, monkeypatch):
    import aimass.exporting
    class FailedReport:
        checks = {"fp32": {"passed": False, "why": "fp32 max abs error 0.3 (limit 0.0001)"}}
    monkeypatch.setattr(aimass.exporting, "export", lambda ref, registry=None: FailedReport())
    with pytest.raises(AimassError, match="failed its checks.*max abs error 0.3"):
        B.bundle("churn:v2", tmp_path/"b")
    assert not (tmp_path/"b").exists() and list(tmp_path.iterdir()) == []


def test_existing_folder_needs_overwrite(home, tmp_path):
    dest = tmp_path/"svc"; dest.mkdir(); (dest/"mine.txt").write_text("keep")
    with pytest.raises(AimassError, match="overwrite=True"): B.bundle("churn:v1", dest, check=False)
    with pytest.raises(AimassError, match="not an aimass bundle"): B.bundle("churn:v1", dest, overwrite=True, check=False)
    assert [p.name for p in dest.iterdir()] == ["mine.txt"] and (dest/"mine.txt").read_text() == "keep"
    (tmp_path/"file").write_text("x")
    with pytest.raises(AimassError, match="is a file"): B.bundle("churn:v1", tmp_path/"file", check=False)
    with pytest.raises(AimassError, match="port"): B.bundle("churn:v1", tmp_path/"p", port=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "svc"]  # no temp folders left behind


def test_overwrite_replaces_an_earlier_bundle(home, tmp_path):
    dest = tmp_path/"svc"
    first = B.bundle("churn:v1", dest, check=False)
    (dest/"stray.txt").write_text("from the old bundle")
    second = B.bundle("churn:v1", dest, overwrite=True, port=9001, workers=2, check=False)
    assert second.path == first.path and not (dest/"stray.txt").exists()
    assert json.loads((dest/"bundle.json").read_text())["server"]["port"] == 9001
    assert sorted(p.name for p in tmp_path.iterdir()) == ["svc"]
    second.verify()


def test_alias_is_resolved_once(home, tmp_path):
    Registry().set_alias("churn", "prod", 1)
    b = B.bundle("churn@prod", tmp_path/"svc", check=False)
    assert b.ref == "churn:v1" and b.manifest["requested"] == "churn@prod"
    assert json.loads((b.path/"model"/"model.json").read_text())["version"] == 1


def test_requirements_are_pinned_and_lean(home):
    lines = (home["bundle"].path/"requirements.txt").read_text().split()
    assert lines and all("==" in l and l.split("==")[1] for l in lines)
    names = {l.split("==")[0].lower().replace("_", "-") for l in lines}
    assert {"onnxruntime", "litserve", "numpy", "pandas", "fastapi", "uvicorn", "pydantic"} <= names
    assert not {"torch", "lightning", "ipywidgets", "scikit-learn", "matplotlib", "nbdev", "aimass"} & names
    assert not any(n.startswith("jupyter") for n in names)


def test_contents_and_manifest(home):
    b = home["bundle"]
    files = set(b.files)
    assert {"server.py", "requirements.txt", "Dockerfile", ".dockerignore", "README.md", "example.json", "bundle.json",
            "model/model.json", "aimass/server_process.py", "aimass/inference.py", "aimass/data.py", "aimass/core.py"} <= files
    card = json.loads((b.path/"model"/"model.json").read_text())
    onnx_files = list(card["export"]["files"].values())
    assert len(onnx_files) == 1 and f"model/{onnx_files[0]}" in files
    assert not any(f.endswith((".safetensors", ".npz", ".ckpt")) or "__pycache__" in f for f in files)
    m = b.manifest
    assert (m["ref"], m["python"]) == ("churn:v1", ".".join(map(str, sys.version_info[:3])))
    assert set(m["files"]) == files - {"bundle.json"}
    docker = (b.path/"Dockerfile").read_text()
    assert f"FROM python:{sys.version_info.major}.{sys.version_info.minor}-slim" in docker and "HEALTHCHECK" in docker
    assert "EXPOSE 8123" in docker and "USER aimass" in docker
    assert "```bash\ncurl" in b.readme and "`city` | category" in b.readme
    assert "churn:v1" in repr(b) and "python server.py" in repr(b) and "<pre>" in b._repr_html_()


def test_verify_catches_changed_files(home, tmp_path):
    b = B.bundle("churn:v1", tmp_path/"svc", check=False)
    (b.path/"model"/"model.json").write_text("{}")
    (b.path/"requirements.txt").unlink()
    with pytest.raises(AimassError, match=r"model/model.json \(changed\).*requirements.txt \(missing\)"): B.open_bundle(b.path).verify()
