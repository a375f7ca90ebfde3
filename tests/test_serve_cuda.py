"""Serving on a GPU: `serve(ref, device="cuda")` runs the torch backend there with dynamic batching. Here, on the CPU:
the one-line errors (function, magic, CLI) and that nothing starts without a GPU, and that device="cpu" serves like the
default. The `gpu` tests (skipped, with the reason, where torch sees no GPU) serve on CUDA: outputs equal the CPU torch
server's, bf16, /info, the leader never loading CUDA, a load test, and an image model."""
import base64, os, subprocess
from pathlib import Path
import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
torch = pytest.importorskip("torch")

from aimass.core import AimassError
from aimass.data import load_data, split
from aimass import launcher as S
from conftest import PYTHON, ROOT
from factory import make_version, shared_home

NO_GPU = not torch.cuda.is_available()
only_without_gpu = pytest.mark.skipif(not NO_GPU, reason="checks the error for a machine without a GPU")


@shared_home(scope="module")
def home(folder):
    "A digits cnn (torch weights only), and the raw test rows to send it."
    make_version("cnn", name="digits-cnn", epochs=2)
    return {"rows": split(load_data("digits"), seed=0).test.X[:64].reshape(64, -1).tolist()}


def _children() -> set:
    import psutil
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _predict(srv, rows) -> np.ndarray:
    "The servers' class probabilities for `rows`, as an array."
    r = httpx.post(srv.url + "/predict", json={"instances": rows}, headers=srv.headers, timeout=60)
    assert r.status_code == 200, r.text
    return np.array([[p["probabilities"][c] for c in sorted(p["probabilities"])] for p in r.json()["predictions"]])


# --- on the CPU: errors before anything starts ------------------------------------------------------------------

@only_without_gpu
def test_cuda_without_a_gpu_is_one_line_and_starts_nothing(home):
    port, before = S.free_port(), _children()
    with pytest.raises(AimassError) as e: S.serve("digits-cnn", device="cuda", port=port)
    msg = str(e.value)
    assert "\n" not in msg and "needs a CUDA GPU" in msg and "device='cpu'" in msg
    assert _children() == before and S.servers().empty and not S.port_in_use(port, "127.0.0.1")
    assert not list((home["dir"]/"servers").glob("*.json"))


def test_onnx_on_a_gpu_is_refused_saying_why(home):
    with pytest.raises(AimassError, match="backend='onnx' cannot run on device='cuda:0'.*CPU build.*backend='torch'"):
        S.serve("digits-cnn", backend="onnx", device="cuda:0")


@pytest.mark.parametrize("options, says", [(dict(device="gpu"), "device must be 'cpu', 'cuda' or 'cuda:N'"),
                                           (dict(device="cuda:x"), "device must be"),
                                           (dict(precision="bf16-mixed"), "precision='bf16-mixed' is for a GPU"),
                                           (dict(device="cuda", precision="fp8"), "precision must be")])
def test_bad_device_or_precision_is_one_line(home, options, says):
    with pytest.raises(AimassError, match=says) as e: S.serve("digits-cnn", **options)
    assert "\n" not in str(e.value)


@only_without_gpu
def test_magic_turns_it_into_a_usage_error(home, ip):
    from IPython.core.error import UsageError
    with pytest.raises(UsageError, match="needs a CUDA GPU"): ip.run_line_magic("aimass", "serve digits-cnn --device cuda")
    with pytest.raises(UsageError, match="cannot run on device='cuda'"): ip.run_line_magic("aimass", "serve digits-cnn --device cuda --backend onnx")


@only_without_gpu
@pytest.mark.slow  # a new process that imports the stack
def test_cli_exits_2_with_one_line(home):
    r = subprocess.run([str(ROOT/".venv"/"bin"/"aimass"), "serve", "digits-cnn", "--device", "cuda"], capture_output=True,
                       text=True, env=os.environ.copy(), timeout=300)
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1 and "needs a CUDA GPU" in r.stderr


@pytest.mark.slow  # a new process that imports the server's stack
def test_server_process_refuses_onnx_on_a_gpu_in_one_line(tmp_path):
    "A config serve would not write (a bundle's server.py --device cuda: bundles run ONNX) stops the server in one line."
    cfg = S.ServerConfig(device="cuda", port=S.free_port(), models=[S.ServedModel(name="m", model_dir=str(tmp_path), backend="onnx")])
    cfg.write(tmp_path/"config.json")
    r = subprocess.run([PYTHON, "-m", "aimass.server_process", str(tmp_path/"config.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        "aimass server: device='cuda' runs the torch backend only, not onnx (/predict): ONNX Runtime here is its CPU build.")
    assert "Traceback" not in r.stderr


def test_device_cpu_explicitly_serves_like_the_default(home):
    with S.serve("digits-cnn", backend="torch") as srv:
        assert S.serve("digits-cnn", backend="torch", device="cpu") is srv  # the same settings: the same server
        info = srv.info()
        assert (info["device"], "precision" in info, " on " in repr(srv)) == ("cpu", False, False)
        assert "with torch on cpu at" in srv.log_path.read_text()
        assert _predict(srv, home["rows"][:4]).shape == (4, 10)


# --- on a GPU ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cpu_server(home):
    with S.serve("digits-cnn", backend="torch", new=True) as srv: yield srv


@pytest.fixture(scope="module")
def cuda_server(home):
    with S.serve("digits-cnn", device="cuda", new=True) as srv: yield srv


def _maps(pid: int) -> str:
    try: return Path(f"/proc/{pid}/maps").read_text()
    except OSError: return ""


@pytest.mark.gpu
def test_cuda_server_answers_like_the_cpu_one(home, cpu_server, cuda_server):
    assert _predict(cuda_server, home["rows"]).shape == (64, 10)
    np.testing.assert_allclose(_predict(cuda_server, home["rows"]), _predict(cpu_server, home["rows"]), atol=1e-4)
    info = cuda_server.info()
    assert (info["device"], info["precision"], info["backend"]) == ("cuda", "32-true", "torch")
    assert "torch on cuda" in repr(cuda_server) and "with torch on cuda (32-true)" in cuda_server.log_path.read_text()


@pytest.mark.gpu
def test_only_the_inference_workers_start_cuda(cuda_server):
    import psutil
    assert "libcuda" not in _maps(cuda_server.pid)  # the leader forks its workers: it must never start CUDA
    procs = psutil.Process(cuda_server.pid).children(recursive=True)
    assert sum("libcuda" in _maps(p.pid) for p in procs) == cuda_server.config.workers


@pytest.mark.gpu
def test_dynamic_batches_on_the_gpu_under_load(home, cuda_server):
    from aimass.loadtesting import loadtest
    rep = loadtest(cuda_server, concurrency=32, requests=600, rows_per_request=4, payload=home["rows"], progress=False)
    assert rep.ok == rep.requests == 600
    print(rep)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_on_the_gpu(home, cpu_server, precision):
    with S.serve("digits-cnn", device="cuda:0", precision=precision, new=True) as srv:
        got, want = _predict(srv, home["rows"]), _predict(cpu_server, home["rows"])
        assert srv.info()["precision"] == precision
    np.testing.assert_allclose(got, want, atol=0.05)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95


@pytest.mark.gpu
def test_auto_picks_torch_for_an_exported_model_and_a_missing_gpu_index_is_refused(home):
    from aimass.exporting import export
    export("digits-cnn")
    n = torch.cuda.device_count()
    with pytest.raises(AimassError, match=f"there is no GPU {n}"): S.serve("digits-cnn", device=f"cuda:{n}")
    with S.serve("digits-cnn", device="cuda", new=True) as srv:
        assert srv.backend == "torch" and srv.info()["backend"] == "torch"


@pytest.mark.gpu
@pytest.mark.slow
def test_an_image_model_on_the_gpu(home):
    from factory import make_tiny_hf_vision, write_image_folder
    from aimass.training import train
    images = write_image_folder(home["dir"]/"digits-images", n_per_class=12)
    hf = make_tiny_hf_vision(home["dir"]/"tiny-resnet", "resnet")
    run = train(f"hf:{hf}", images, epochs=1, batch_size=8, progress=False, name="tiny-resnet")
    files = sorted(Path(images).rglob("*.png"))[:8]
    rows = [{"image": {"b64": base64.b64encode(f.read_bytes()).decode()}} for f in files]
    with S.serve(run.version.ref, backend="torch", new=True) as cpu, S.serve(run.version.ref, device="cuda", new=True) as gpu:
        np.testing.assert_allclose(_predict(gpu, rows), _predict(cpu, rows), atol=1e-4)
        raw = httpx.post(gpu.url + "/predict", content=files[0].read_bytes(), headers={"Content-Type": "image/png"}, timeout=60)
        assert raw.status_code == 200 and raw.json()["predictions"][0]["top_k"]
        assert gpu.info()["device"] == "cuda"
