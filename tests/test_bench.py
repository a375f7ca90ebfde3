"Benchmarks: table shape and columns, results in the card, thread settings restored, skipped backends."
import json
import pytest
import torch

from aimass.core import AimassError, atomic_write_json
from aimass.registry import Registry
import aimass.benchmark as bm
from factory import make_version

COLUMNS = ["backend", "batch_size", "p50_ms", "p90_ms", "p99_ms", "throughput", "peak_mem_mb", "metric"]


def test_bench_exports_first_and_stores_results():
    mv = make_version("linear")
    threads_before = torch.get_num_threads()
    rep = bm.bench(mv.ref, backends=("torch", "onnx", "onnx-int8"), batch_sizes=(1, 4), warmup=2, repeats=5)
    assert torch.get_num_threads() == threads_before
    assert list(rep.table.columns) == COLUMNS and len(rep.table) == 6
    assert set(rep.table.backend) == {"torch", "onnx", "onnx-int8"} and set(rep.table.batch_size) == {1, 4}
    t = rep.table
    assert (t.p50_ms > 0).all() and (t.p50_ms <= t.p90_ms).all() and (t.p90_ms <= t.p99_ms).all() and (t.throughput > 0).all()
    acc = t.groupby("backend").metric.first()
    assert abs(acc["onnx"] - acc["torch"]) < 1e-9 and acc["torch"] - acc["onnx-int8"] <= 0.01
    card = Registry().get(mv.ref).card
    assert "int8" in card.export.files  # bench exported first, with the int8 variant it needed
    b = card.bench
    assert b.best_backend == rep.best["batch_1"] and b.best_backend in {"torch", "onnx", "onnx-int8"}
    assert set(b.p50_ms) == {"torch", "onnx", "onnx-int8"} and set(b.p50_ms["onnx"]) == {"1", "4"}
    assert b.threads == 1 and b.speedup_vs_torch["torch"] == 1.0
    results = json.loads((mv.path/"bench/results.json").read_text())
    assert len(results["rows"]) == 6 and (mv.path/"bench/latency.png").read_bytes()[:4] == b"\x89PNG"
    assert "Benchmark of" in repr(rep) and "<img" in rep._repr_html_()
    assert rep.p50().shape == (2, 3)


@pytest.mark.slow
def test_compile_failure_is_skipped_not_a_crash(monkeypatch):
    mv = make_version("linear")
    def broken_compile(*a, **k): raise RuntimeError("no C++ compiler found")
    monkeypatch.setattr(torch, "compile", broken_compile)
    rep = bm.bench(mv.ref, backends=("torch", "torch-compile"), batch_sizes=(1,), warmup=1, repeats=3)
    assert set(rep.table.backend) == {"torch"}
    assert "no C++ compiler" in rep.skipped["torch-compile"]
    b = Registry().get(mv.ref).card.bench
    assert b.best_backend == "torch" and "torch-compile" in b.skipped
    assert Registry().get(mv.ref).card.export is None  # no ONNX backend asked: nothing exported


@pytest.mark.slow
def test_failing_int8_is_not_picked():
    mv = make_version("linear")
    rep = bm.bench(mv.ref, backends=("onnx-int8",), batch_sizes=(1,), warmup=1, repeats=3, save=False)
    assert rep.best["batch_1"] == "onnx-int8" and rep.eligible == ["onnx-int8"]
    card = Registry().get(mv.ref).card
    card.export.checks["int8"] = False  # as if int8 had lost more than a point of accuracy
    atomic_write_json(mv.path/"model.json", card.to_dict())
    rep = bm.bench(mv.ref, backends=("torch", "onnx-int8"), batch_sizes=(1,), warmup=1, repeats=3)
    assert rep.eligible == ["torch"] and rep.best["batch_1"] == "torch"
    assert Registry().get(mv.ref).card.bench.best_backend == "torch"


def test_bad_arguments():
    mv = make_version("linear")
    with pytest.raises(AimassError, match="Unknown backend"): bm.bench(mv.ref, backends=("tensorrt",))
    with pytest.raises(AimassError, match="batch_sizes"): bm.bench(mv.ref, batch_sizes=(0,))
    with pytest.raises(AimassError, match="No model named"): bm.bench("nope")
