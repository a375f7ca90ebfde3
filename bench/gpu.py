"""The GPU proof (issue 16), measured in one run on a machine with an NVIDIA GPU; tools/gpu_check.sh calls it there.

Parts, each timed and each kept apart (one that fails is recorded with its error; the others still run):

- `env`: the GPU, its driver and CUDA, and the versions of torch, Lightning, transformers, LitServe, ONNX Runtime.
- `train`: the digits cnn, 10 epochs, same seed: on the CPU (32-true), then on the GPU in 32-true, bf16-mixed and
  16-mixed; test accuracy against the CPU run (within 3 points) and seconds per epoch. Then a ResNet-18-size
  transformers model (random weights, bench/bench_images.py's) fine-tuned on 224x224 JPEG files in bf16-mixed.
- `kernel`: `%aimass train ... --accelerator gpu --devices 1` in a real Jupyter kernel (nbclient), as a user runs it.
- `serve`: each model behind `aimass.serve(ref, device="cuda")` (eager PyTorch on the GPU, dynamic batching), the
  same in bf16-mixed, and the same server on the CPU (`backend="torch"`), loaded by `aimass.loadtest` at the same
  concurrency: requests/s and p50/p99.
- `bench`: `aimass.bench` with the CPU backends and the CUDA ones (eager fp32, bf16, fp16, torch.compile), timed
  with CUDA synchronisation.

    python bench/gpu.py [--out DIR] [--parts env,train,kernel,serve,bench] [--quick] [--device cpu]

Writes DIR/gpu_results.json (everything) and DIR/gpu_summary.md (the tables for the docs and the closing note).
`--device cpu` runs the same parts on the CPU (no fp16, no CUDA backends) to check this script where there is no
GPU; its figures mean nothing for the issue. Everything lives in a temporary AIMASS_HOME; servers bind 127.0.0.1.
"""
import argparse, json, os, sys, tempfile, time, traceback
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_images' model and images
CPU_ACCURACY_TOLERANCE = 0.03


def log(*a): print(*a, flush=True)


def run_part(name, fn, results, *args):
    "Run one part; its result, or its error and traceback, goes to `results[name]`."
    t0 = time.perf_counter()
    log(f"\n=== {name} ===")
    try: results[name] = {"ok": True, **fn(*args)}
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt): raise
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        log(results[name]["traceback"])
    results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"--- {name}: {'ok' if results[name]['ok'] else 'FAILED'} in {results[name]['seconds']} s")


def part_env(a) -> dict:
    import platform, torch, lightning, transformers, onnxruntime
    from importlib.metadata import version
    d = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
         "torch": torch.__version__, "cuda": torch.version.cuda, "lightning": lightning.__version__,
         "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__, "litserve": version("litserve"),
         "cpus": os.cpu_count(), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        d.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                 bf16=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version())
    log(json.dumps(d, indent=1))
    return d


def epoch_clock():
    "A Lightning callback that keeps each training epoch's seconds (epoch-level hooks: aimass keeps its fast loop)."
    import lightning as L
    class EpochClock(L.Callback):
        def __init__(self): self.seconds = []
        def on_train_epoch_start(self, *_): self._t0 = time.perf_counter()
        def on_train_epoch_end(self, *_): self.seconds.append(time.perf_counter() - self._t0)
    return EpochClock()


def _train(**kw):
    from aimass.training import train
    clock = epoch_clock()
    run = train(progress=False, callbacks=[clock], **kw)
    return run, clock.seconds


def _train_row(run_and_seconds, device, precision) -> dict:
    import statistics
    run, secs = run_and_seconds
    per_epoch = statistics.median(secs[1:]) if len(secs) > 1 else run.duration_s  # the first epoch pays for start-up
    row = {"model": run.version.card.model, "device": device, "precision": precision, "status": run.status,
           "accuracy": round(run.test_metrics.get("accuracy", float("nan")), 4), "epochs": len(run.history),
           "s_per_epoch": round(per_epoch, 3), "total_s": round(run.duration_s, 1), "ref": run.ref}
    log(row)
    return row


def part_train(a, st) -> dict:
    import numpy as np
    from aimass.registry import load
    epochs = 3 if a.quick else 10
    acc = "gpu" if a.device == "cuda" else "cpu"
    rows = [_train_row(_train(model="cnn", data="digits", epochs=epochs, seed=0, accelerator="cpu", name="cnn-cpu"), "cpu", "32-true")]
    cpu_acc = rows[0]["accuracy"]
    for precision in ["32-true", "bf16-mixed"] + (["16-mixed"] if a.device == "cuda" else []):
        run, secs = _train(model="cnn", data="digits", epochs=epochs, seed=0, accelerator=acc, devices=1, precision=precision,
                           name=f"cnn-{precision}")
        row = _train_row((run, secs), a.device, precision)
        x = np.load(run.version.path/"heldout.npz")["x"][:32]  # trained there, registered, reloaded on the CPU
        row["reloaded_on_cpu_max_abs"] = float(np.abs(load(run.ref).outputs(x) - run.model.outputs(x)).max())
        row["within_cpu_tolerance"] = abs(row["accuracy"] - cpu_acc) <= CPU_ACCURACY_TOLERANCE
        rows.append(row)
    st["cnn"] = f"cnn-32-true"
    import bench_images as bi
    work = Path(tempfile.mkdtemp(prefix="aimass-gpu-images-"))
    images = bi.write_images(work/"photos", n_per_class=8 if a.quick else 40)
    backbone = bi.make_backbone(work/"resnet18")
    run, secs = _train(model=f"hf:{backbone}", data=str(images), epochs=2 if a.quick else 4, batch_size=32, accelerator=acc,
                       devices=1, precision="bf16-mixed", name="resnet18")
    rows.append(_train_row((run, secs), a.device, "bf16-mixed"))
    st["resnet"], st["images"] = run.ref, images
    return {"rows": rows, "cpu_accuracy": cpu_acc,
            "all_within_tolerance": all(r.get("within_cpu_tolerance", True) for r in rows)}


NOTEBOOK = [
    "import os, aimass\n%load_ext aimass",
    "%aimass train cnn --data digits --epochs 3 --accelerator {acc} --devices 1 --precision bf16-mixed --name kernel-cnn --no-progress -o run",
    "print(run.status, run.version.card.hparams['precision'], run.version.card.hparams['devices'], run.test_metrics)",
]


def part_kernel(a) -> dict:
    import nbformat
    from nbclient import NotebookClient
    acc = "gpu" if a.device == "cuda" else "cpu"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.format(acc=acc)) for c in NOTEBOOK])
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    log(text)
    return {"output": text.strip(), "completed": text.startswith("completed")}


def _load(srv, concurrency, seconds) -> dict:
    from aimass.loadtesting import loadtest
    loadtest(srv, concurrency=concurrency, requests=None, duration=2, progress=False)  # warm-up: cuDNN picks its kernels
    r = loadtest(srv, concurrency=concurrency, requests=None, duration=seconds, progress=False)
    return {k: v for k, v in r.summary().items() if k in ("requests", "ok", "errors", "rps", "p50_ms", "p99_ms")}


def part_serve(a, st) -> dict:
    from aimass.launcher import serve
    rows = []
    for ref, conc, batch in ((st.get("cnn", "cnn-32-true"), 32, 32), (st.get("resnet", "resnet18"), 16, 16)):
        servers = [("cpu", {"backend": "torch"})]
        if a.device == "cuda": servers += [("cuda", {"device": "cuda"}), ("cuda bf16", {"device": "cuda", "precision": "bf16-mixed"})]
        for label, opts in servers:
            with serve(ref, new=True, max_batch_size=batch, **opts) as srv:
                row = {"ref": ref, "server": label, "concurrency": conc, "max_batch_size": batch, **_load(srv, conc, 5 if a.quick else 15)}
            log(row); rows.append(row)
    return {"rows": rows}


def part_bench(a, st) -> dict:
    "Each model on the CPU backends (small batches: the GPU machine's time is short) and on the CUDA ones."
    from aimass.benchmark import bench
    cuda = ("torch-cuda", "torch-cuda-bf16", "torch-cuda-fp16") if a.device == "cuda" else ()
    reps = 10 if a.quick else 30
    out = {}
    for ref, cpu_sizes, sizes in ((st.get("cnn", "cnn-32-true"), (1, 32, 256), (1, 32, 256)), (st.get("resnet", "resnet18"), (1,), (1, 16, 64))):
        runs = [("cpu", ("torch", "onnx"), cpu_sizes)]
        if cuda: runs += [("cuda", cuda, sizes), ("compile", ("torch-compile-cuda",), sizes[1:2])]  # compiling takes a while per shape
        for label, backends, bs in runs:
            rep = bench(ref, backends=backends, batch_sizes=bs, repeats=reps, warmup=5, save=False)
            log(rep.table.to_string())
            out[f"{ref} {label}"] = {"table": rep.table.to_dict("records"), "skipped": rep.skipped, "setup_s": rep.setup_s}
    return out


def summary_md(results: dict) -> str:
    "The tables the docs and the closing note quote."
    import pandas as pd
    md = [f"# aimass on {results.get('env', {}).get('gpu', 'no GPU')} ({results.get('env', {}).get('date', '')})", ""]
    if results.get("env", {}).get("ok"):
        e = results["env"]
        md += [f"torch {e['torch']} (CUDA {e['cuda']}), Lightning {e['lightning']}, transformers {e['transformers']}, "
               f"LitServe {e['litserve']}, {e['cpus']} CPUs", ""]
    for name, key in (("Training", "train"), ("Serving", "serve")):
        if results.get(key, {}).get("rows"):
            md += [f"## {name}", "", pd.DataFrame(results[key]["rows"]).to_markdown(index=False), ""]
    if results.get("kernel", {}).get("ok"):
        md += ["## %aimass train in a real kernel (nbclient)", "", "    " + results["kernel"]["output"], ""]
    for ref, b in (results.get("bench") or {}).items():
        if isinstance(b, dict) and "table" in b:
            md += [f"## bench {ref}", "", pd.DataFrame(b["table"]).round(3).to_markdown(index=False), "",
                   *(f"- skipped {k}: {v}" for k, v in b["skipped"].items()), ""]
    for name, r in results.items():
        if isinstance(r, dict) and r.get("ok") is False: md += [f"## {name} FAILED", "", "```", r["error"], "```", ""]
    md += ["Seconds per part: " + ", ".join(f"{k} {r.get('seconds', '-')}" for k, r in results.items())]
    return "\n".join(md)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    p.add_argument("--parts", default="env,train,kernel,serve,bench")
    p.add_argument("--quick", action="store_true", help="fewer epochs, images and seconds: a smoke run")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--budget", type=float, default=None, help="seconds: parts that would start after it are skipped")
    a = p.parse_args(argv)
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("AIMASS_HOME", tempfile.mkdtemp(prefix="aimass-gpu-home-"))
    parts, results, st, t0 = a.parts.split(","), {}, {}, time.perf_counter()
    steps = {"env": (part_env, a), "train": (part_train, a, st), "kernel": (part_kernel, a), "serve": (part_serve, a, st), "bench": (part_bench, a, st)}
    for name in parts:
        if a.budget and time.perf_counter() - t0 > a.budget:
            results[name] = {"ok": False, "error": f"skipped: the {a.budget:.0f} s budget was spent"}; continue
        run_part(name, steps[name][0], results, *steps[name][1:])
        (out/"gpu_results.json").write_text(json.dumps(results, indent=1, default=str))  # kept as it goes: a timeout loses one part
        (out/"gpu_summary.md").write_text(summary_md(results))
    log(f"\n{summary_md(results)}\n(total {time.perf_counter() - t0:.0f} s; results in {out})")
    return 0 if all(r.get("ok") for r in results.values()) else 1


if __name__ == "__main__": sys.exit(main())
