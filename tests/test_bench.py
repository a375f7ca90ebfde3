"Benchmarks: table shape and columns, results in the card, thread settings restored, skipped backends."
import json, time
import numpy as np, pandas as pd, pytest
from tqdm.auto import tqdm
import torch

from aimass.core import AimassError, atomic_write_json
from aimass.registry import Registry
import aimass.benchmark as bm
from factory import make_version

COLUMNS = ["backend", "batch_size", "p50_ms", "p90_ms", "p99_ms", "rows_per_s", "peak_mem_mb", "metric", "calls"]


def test_bench_exports_first_and_stores_results():
    mv = make_version("linear")
    threads_before = torch.get_num_threads()
    rep = bm.bench(mv.ref, backends=("torch", "onnx", "onnx-int8"), batch_sizes=(1, 4), warmup=2, repeats=5)
    assert torch.get_num_threads() == threads_before
    assert list(rep.table.columns) == COLUMNS and len(rep.table) == 6 and (rep.table.calls == 5).all()
    assert set(rep.table.backend) == {"torch", "onnx", "onnx-int8"} and set(rep.table.batch_size) == {1, 4}
    t = rep.table
    assert (t.p50_ms > 0).all() and (t.p50_ms <= t.p90_ms).all() and (t.p90_ms <= t.p99_ms).all() and (t.rows_per_s > 0).all()
    assert (t[t.backend == "torch"].peak_mem_mb > 0).all() and (t.peak_mem_mb >= 0).all()  # torch: at least its weights
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


def test_default_timing_fits_a_time_budget_for_slow_models(monkeypatch):
    "A MiniLM at 128 tokens takes about 2 s a call at batch 64: 20 warm-up and 200 timed calls per backend made the default bench of a text model run for half an hour."
    calls = []
    def slow(x): calls.append(len(x)); time.sleep(0.05 * len(x)); return np.zeros((len(x), 2), np.float32)
    monkeypatch.setattr(bm, "make_backend", lambda name, lm, threads: slow)
    x = np.zeros((8, 3), np.float32)
    fn, _, _ = bm._prepare("onnx", None, x, [1, 8], None, 1, True)  # the default warm-up: about a second per batch size
    assert 2 <= calls.count(1) <= 21 and 2 <= calls.count(8) <= 4, calls  # 0.05 s calls: up to 20; 0.4 s calls: 3
    assert fn.call_s[8] >= 0.4
    calls.clear()
    rows = bm._time_backends({"onnx": fn}, x, [1, 8], None, 10, True, {"onnx": 0.0}, {}, tqdm(disable=True), max_time=1.0)
    assert 15 <= rows[0]["calls"] <= 20 and rows[1]["calls"] == 10, rows  # 1 s / 0.05 s; 1 s / 0.4 s, raised to the least of 10
    assert calls.count(8) == 10 + 2 * 2, calls  # in 2 blocks of 5, each after 2 warm-up calls (10 blocks: 30 calls)
    rows = bm._time_backends({"onnx": fn}, x, [1], 7, 3, True, {"onnx": 0.0}, {}, tqdm(disable=True))
    assert rows[0]["calls"] == 7  # repeats given: exactly that many
    with pytest.raises(AimassError, match="max_time"): bm._checked(["torch"], [1], 1, None, max_time=0)


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


def test_peak_memory_sees_what_a_call_holds_while_it_runs(monkeypatch):
    "A backend that needs 32 MB during each call (freed before it returns) shows at least that: the peak, not what is left."
    mv = make_version("linear")
    real = bm.make_backend
    def hungry(name, lm, threads=1):
        run = real(name, lm, threads)
        def call(x):
            scratch = np.ones(4 * 2**20)  # 32 MB of float64, touched
            return run(x) + 0 * scratch[0]
        return call
    monkeypatch.setattr(bm, "make_backend", hungry)
    rep = bm.bench(mv.ref, backends=("torch",), batch_sizes=(1,), warmup=2, repeats=3, save=False)  # (no export needed)
    assert (rep.table.peak_mem_mb >= 30).all(), rep.table  # was 0: RSS sampled after the warm-up, the 32 MB long gone


def _report():
    "A report by hand: one p99 well above its p50, throughputs from tens to hundreds of thousands of rows/s."
    rows = [{"backend": b, "batch_size": bs, "p50_ms": p, "p90_ms": 1.5 * p, "p99_ms": 3 * p, "rows_per_s": bs / p * 1e3,
             "peak_mem_mb": mb, "metric": 0.97} for b, mb, ps in (("torch", 0.21, (0.031, 0.2)), ("onnx", 0.74, (0.0096, 0.13)))
            for bs, p in zip((1, 64), ps)]
    return bm.BenchReport("digits-mlp:v1", pd.DataFrame(rows), 1, "accuracy", eligible=["torch", "onnx"])


def test_the_table_shows_units_and_plain_numbers():
    text = repr(_report())
    assert "throughput (rows/s)" in text and "p50 (ms)" in text and "peak memory (MB)" in text
    assert "e+" not in text and "e-" not in text  # no scientific notation
    assert "104,000" in text and "492,000" in text and "0.0096" in text  # thousands separated; small latencies in full
    assert "throughput (rows/s)" in _report()._repr_html_() and "| 32,300 |" in _report()._repr_markdown_()


def test_the_plot_shows_the_tail_and_keeps_the_legend_off_the_data():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    fig = _report().plot(); FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    bars = ax.containers
    assert len(bars) == 2  # p50 with a bar up to p99, per backend
    tops = sorted(float(y) for b in bars for seg in b.lines[2][0].get_segments() for y in [seg[1][1]])
    assert tops == sorted(3 * p for p in (0.031, 0.2, 0.0096, 0.13))
    assert ax.get_legend().get_window_extent().x0 >= ax.get_window_extent().x1  # beside the axes, not over the lines


def test_bad_arguments():
    mv = make_version("linear")
    with pytest.raises(AimassError, match="Unknown backend"): bm.bench(mv.ref, backends=("tensorrt",))
    with pytest.raises(AimassError, match="^batch_sizes must be at least 1, not 0.$"): bm.bench(mv.ref, batch_sizes=(0,))
    with pytest.raises(AimassError, match="^threads must be at least 1, not 0.$"): bm.bench(mv.ref, threads=0)
    with pytest.raises(AimassError, match="No model named"): bm.bench("nope")
