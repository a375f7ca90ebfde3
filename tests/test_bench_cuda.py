"""CUDA backends of `bench` (torch-cuda, torch-cuda-bf16, torch-cuda-fp16, torch-compile-cuda). On the CPU: the skipped
entries and their reason, the default list, timing that waits for the device, the device backend's code under CPU
autocast, the card's record. Tests marked `gpu` run them on a GPU (skipped, with the reason, where torch sees none;
run them with `pytest -m gpu tests/test_bench_cuda.py`)."""
import time
import numpy as np, pytest, torch

import aimass.benchmark as bm
from aimass.commands import run
from aimass.registry import BenchInfo, Registry
from factory import make_version

NO_GPU = "needs a CUDA GPU: torch.cuda.is_available() is False here"
FAST = dict(batch_sizes=(1,), warmup=1, repeats=3, rounds=1)


@pytest.fixture
def no_gpu(monkeypatch):
    "As on a machine where torch sees no GPU (here, and on a GPU machine too)."
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cuda_backends_without_a_gpu_are_skipped_with_the_reason(no_gpu):
    mv = make_version("linear")
    rep = bm.bench(mv.ref, backends=("torch", *bm.CUDA_BACKENDS), **FAST)
    assert rep.skipped == {b: NO_GPU for b in bm.CUDA_BACKENDS}
    assert set(rep.table.backend) == {"torch"} and rep.gpu is None and rep.best_gpu["batch_1"] is None
    assert f"skipped torch-cuda: {NO_GPU}" in repr(rep) and "peak memory is the GPU's" not in repr(rep)
    card = Registry().get(mv.ref).card.bench  # the record in the card keeps the reasons
    assert card.skipped == rep.skipped and card.best_backend == "torch" and "gpu" not in card.machine


def test_only_cuda_backends_without_a_gpu_is_a_report_not_an_error(no_gpu):
    "Was a ZeroDivisionError, raised as 'A backend failed while being timed', when every backend asked for was skipped."
    mv = make_version("linear")
    before = bm.bench(mv.ref, backends=("torch",), **FAST).summary()
    rep = bm.bench(mv.ref, backends=("torch-cuda-fp16",), **FAST)
    assert rep.table.empty and rep.skipped == {"torch-cuda-fp16": NO_GPU} and rep.best == {"batch_1": None, "overall": None}
    assert "skipped torch-cuda-fp16" in repr(rep) and "<table" in rep._repr_html_()
    card = Registry().get(mv.ref).card.bench  # nothing ran: the last benchmark is kept, not replaced by an empty one
    assert card.best_backend == "torch" and card.p50_ms == before.p50_ms


def test_every_backend_skipped_is_a_report(monkeypatch):
    "Was `AimassError: A backend failed while being timed at batch 1: ZeroDivisionError` when no backend could be built."
    def broken_compile(*a, **k): raise RuntimeError("no C++ compiler found")
    monkeypatch.setattr(torch, "compile", broken_compile)
    rep = bm.bench(make_version("linear").ref, backends=("torch-compile",), **FAST)
    assert rep.table.empty and "no C++ compiler" in rep.skipped["torch-compile"]


def test_magic_flag_takes_the_cuda_names(no_gpu):
    mv = make_version("linear")
    rep, out = run(["bench", mv.ref, "--backends", "torch,torch-compile-cuda", "--batch-sizes", "1", "--warmup", "1",
                    "--repeats", "3", "--no-save"], namespace={})
    assert set(rep.table.backend) == {"torch"} and rep.skipped == {"torch-compile-cuda": NO_GPU}


def test_unknown_backend_names_the_cuda_ones_too():
    with pytest.raises(bm.AimassError, match="Unknown backend 'cuda'.*torch-cuda-bf16"): bm.bench("x", backends=("cuda",))


def test_defaults_are_the_cpu_backends_without_a_gpu(no_gpu, monkeypatch):
    assert bm.default_backends() == bm.BACKENDS == ("torch", "onnx", "onnx-int8", "torch-compile")
    asked = []
    real = bm._build_backends
    monkeypatch.setattr(bm, "_build_backends", lambda names, *a: asked.append(names) or real(["torch"], *a))
    bm.bench(make_version("linear").ref, save=False, **FAST)  # no backends given: the defaults
    assert asked == [list(bm.BACKENDS)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bm.default_backends() == bm.BACKENDS + bm.CUDA_BACKENDS


def test_timing_waits_for_the_device_before_each_clock_read(monkeypatch):
    "A device that only queues work when called: without `sync` before the clock is read, each call would time as 0 ms."
    class Device:
        clock = queued = 0
        def __call__(self, x): self.queued += 2_000_000  # 2 ms of work queued, not done
        def sync(self): self.clock, self.queued = self.clock + self.queued, 0
    dev = Device()
    monkeypatch.setattr(time, "perf_counter_ns", lambda: dev.clock)
    assert bm.time_calls(dev, None, warmup=3, repeats=4).tolist() == [2.0] * 4  # the warm-up's work is not timed
    assert {k: v.tolist() for k, v in bm.time_interleaved({"gpu": dev}, None, repeats=4, rounds=2).items()} == {"gpu": [2.0] * 4}


@pytest.mark.parametrize("autocast", [None, "bfloat16"])
def test_device_backend_runs_a_copy_under_autocast(autocast):
    "The CUDA backends' code, on the CPU: float32 outputs, close to eager torch under bf16 autocast, the loaded model untouched."
    lm = Registry().load(make_version("mlp").ref)
    x, y, _ = bm._bench_inputs(lm)
    before = {k: v.clone() for k, v in lm.predictor.state_dict().items()}
    out, eager = bm._device_backend(lm, "cpu", autocast)(x), bm._torch_backend(lm)(x)
    assert out.dtype == np.float32 and out.shape == eager.shape
    if autocast is None: np.testing.assert_array_equal(out, eager)
    else:
        np.testing.assert_allclose(out, eager, atol=0.1)
        assert bm._metric(bm._device_backend(lm, "cpu", autocast), lm, x, y, 64) == pytest.approx(bm._metric(bm._torch_backend(lm), lm, x, y, 64), abs=0.02)
    after = lm.predictor.state_dict()
    assert all(after[k].dtype == v.dtype and after[k].device == v.device and torch.equal(after[k], v) for k, v in before.items())


def test_card_record_keeps_the_cuda_rows():
    import pandas as pd
    rows = [dict(backend=b, batch_size=bs, p50_ms=p, p90_ms=p, p99_ms=p, rows_per_s=bs / p * 1e3, peak_mem_mb=1.0, metric=0.9)
            for b, p in (("torch", 1.0), ("onnx", 0.5), ("torch-cuda", 0.2), ("torch-cuda-fp16", 0.1)) for bs in (1, 8)]
    rep = bm.BenchReport("m:v1", pd.DataFrame(rows), 1, "accuracy", eligible=["torch", "onnx"], gpu="NVIDIA H200")
    info = BenchInfo.from_dict(rep.summary().to_dict())
    assert info.best_backend == "onnx" and rep.best_gpu == {"batch_1": "torch-cuda-fp16", "overall": "torch-cuda-fp16"}
    assert info.p50_ms["torch-cuda-fp16"] == {"1": 0.1, "8": 0.1} and info.speedup_vs_torch["torch-cuda-fp16"] == 10.0
    assert info.machine["gpu"] == "NVIDIA H200" and not info.prefers_torch
    assert "on the GPU (NVIDIA H200): torch-cuda-fp16 at batch 1 (10.00x)" in repr(rep)


# --- on a GPU -------------------------------------------------------------------------------------------------------

def _check_cuda_rows(rep, lm, names, cudnn_before, fp32_tol=1e-9):
    t = rep.table.set_index(["backend", "batch_size"]).sort_index()
    assert not (set(names) & set(rep.skipped)), rep.skipped
    assert set(rep.table.backend) == {"torch", *names}
    assert (t.p50_ms > 0).all() and (t.p50_ms <= t.p90_ms).all() and (t.p90_ms <= t.p99_ms).all() and (t.rows_per_s > 0).all()
    acc = rep.table.groupby("backend").metric.first()
    for n in names:
        assert (rep.table[rep.table.backend == n].peak_mem_mb >= bm._weights_mb(lm)).all(), rep.table  # its fp32 weights on the GPU, at least
        assert acc[n] == pytest.approx(acc["torch"], abs=0.02 if n in bm._AUTOCAST else fp32_tol), (n, acc.to_dict())
    assert rep.gpu == torch.cuda.get_device_name() and rep.best["batch_1"] == "torch"  # measured on the GPU, not picked
    assert rep.best_gpu["batch_1"] in names and rep.setup_s.keys() >= set(names)
    assert torch.backends.cudnn.benchmark == cudnn_before  # turned on for the benchmark only


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_eager_cuda_backends_fp32_bf16_fp16(model):
    "fp32 on the GPU scores as on the CPU: exactly for the mlp; the cnn within one of its 270 held-out rows, since cuDNN's float32 convolutions use TF32 by default."
    mv = make_version(model)
    names, cudnn = ("torch-cuda", "torch-cuda-bf16", "torch-cuda-fp16"), torch.backends.cudnn.benchmark
    rep = bm.bench(mv.ref, backends=("torch", *names), batch_sizes=(1, 8, 64), warmup=3, repeats=20, rounds=2)
    lm = Registry().load(mv.ref)
    _check_cuda_rows(rep, lm, names, cudnn, 1e-9 if model == "mlp" else 1 / len(bm._bench_inputs(lm)[1]) + 1e-9)
    card = Registry().get(mv.ref).card.bench
    assert card.machine["gpu"] == torch.cuda.get_device_name() and set(card.p50_ms) == {"torch", *names}
    assert bm.default_backends() == bm.BACKENDS + bm.CUDA_BACKENDS


@pytest.mark.gpu
@pytest.mark.slow
def test_compiled_cuda_backend():
    "torch.compile on the GPU (TorchInductor, Triton): compiled in the warm-up, then as exact as eager in float32."
    mv, cudnn = make_version("mlp"), torch.backends.cudnn.benchmark
    rep = bm.bench(mv.ref, backends=("torch", "torch-compile-cuda"), batch_sizes=(1, 8), warmup=3, repeats=20, rounds=2, save=False)
    _check_cuda_rows(rep, Registry().load(mv.ref), ("torch-compile-cuda",), cudnn)


@pytest.mark.gpu
def test_synchronised_timing_covers_the_gpu_work():
    "Timed with the sync, each call lasts at least as long as the GPU's own clock (CUDA events) says its kernels ran."
    a, events = torch.randn(4096, 4096, device="cuda"), []
    def work(x):
        events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
        events[-1][0].record()
        for _ in range(8): a @ a  # queued: returns long before the GPU is done
        events[-1][1].record()
    work.sync = torch.cuda.synchronize
    timed = bm.time_calls(work, None, warmup=2, repeats=5)
    gpu_ms = [s.elapsed_time(e) for s, e in events[-5:]]
    assert all(t >= g * 0.99 > 0 for t, g in zip(timed, gpu_ms)), (timed, gpu_ms)
