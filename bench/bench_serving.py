"""Serving benchmark: aimass (LitServe + ONNX Runtime) against a plain FastAPI + uvicorn app running eager PyTorch.

Both serve the same cnn digits model with the same contract ({"instances": [...]} -> {"predictions": [...]}), are
loaded by the same client (aimass.loadtest, one row per request) at the same concurrency, in interleaved rounds, and
report requests/s and p99 latency. The baseline comes in two kinds: an `async def` endpoint (inference on the
event loop: the faster one for a tiny model) and a plain `def` endpoint (FastAPI's thread pool). Run: `.venv/bin/python bench/bench_serving.py [--concurrency 16] [--seconds 4] [--rounds 3]`.
Everything lives in a temporary AIMASS_HOME; both servers bind 127.0.0.1 only."""
import argparse, json, os, subprocess, sys, tempfile, textwrap, time
from pathlib import Path

BASELINE_APP = textwrap.dedent('''
    import sys, torch
    torch.set_num_threads(1)
    import numpy as np
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel
    from aimass.registry import Registry
    from aimass.core import AimassError
    import uvicorn
    lm = Registry().load(sys.argv[1])
    classes = lm.classes
    app = FastAPI()
    class Body(BaseModel):
        instances: list
    @app.get("/health")
    def health(): return "ok"
    @app.get("/info")
    def info(): return {"ref": lm.ref, "schema": lm.preprocessor.schema}
    @app.post("/predict")
    def predict(body: Body):  # ASYNC_OR_SYNC
        try: x = lm.preprocessor.transform(body.instances)
        except AimassError as e: raise HTTPException(400, str(e))
        with torch.inference_mode(): p = lm.predictor(torch.from_numpy(x)).numpy().astype(float)
        return {"predictions": [{"label": classes[k], "probabilities": dict(zip(classes, r))} for k, r in zip(p.argmax(1).tolist(), p.tolist())]}
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
''')


def make_model(name="digits-cnn", epochs=3):
    "Train the cnn template on digits (aimass.train registers it with its held-out rows), then export it to ONNX."
    from aimass.training import train
    from aimass.exporting import export
    train("cnn", "digits", epochs=epochs, name=name, progress=False)
    export(name)
    return name


def baseline_source(kind: str) -> str:
    "`sync`: a plain `def` endpoint (FastAPI runs it in its thread pool); `async`: `async def`, inference on the event loop."
    src = BASELINE_APP.replace("# ASYNC_OR_SYNC", f"# {kind} endpoint")
    return src.replace("    def predict(body: Body):", "    async def predict(body: Body):") if kind == "async" else src


def start_baseline(ref, workdir, kind="async"):
    from aimass.launcher import free_port
    import httpx
    app = Path(workdir)/f"baseline_{kind}.py"; app.write_text(baseline_source(kind))
    port = free_port()
    log = open(Path(workdir)/f"baseline_{kind}.log", "wb")
    proc = subprocess.Popen([sys.executable, str(app), ref, str(port)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None: raise RuntimeError((Path(workdir)/f"baseline_{kind}.log").read_text())
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200: return proc, url
        except httpx.HTTPError: pass
        time.sleep(0.1)
    raise RuntimeError("baseline did not start")


def stop_baseline(proc):
    import signal
    os.killpg(proc.pid, signal.SIGKILL); proc.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--baselines", default="async,sync", help="FastAPI endpoint kinds to compare with (async, sync)")
    ap.add_argument("--configs", default='[{"max_batch_size": 1}, {"max_batch_size": 8, "batch_timeout": 0.001}]',
                    help="JSON list of serve() keyword sets to try for aimass")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="aimass-bench-")
    os.environ["AIMASS_HOME"] = home
    from aimass.launcher import serve
    from aimass.loadtesting import loadtest
    import numpy as np
    ref = make_model()
    rows = load_rows(ref)
    run = lambda target: loadtest(target, concurrency=args.concurrency, duration=args.seconds, requests=None, payload=rows, progress=False)
    targets, stoppers = {}, []
    try:
        for kind in args.baselines.split(","):
            proc, url = start_baseline(ref, home, kind)
            stoppers.append(lambda p=proc: stop_baseline(p)); targets[f"fastapi-{kind}"] = url
        for i, cfg in enumerate(json.loads(args.configs)):
            t0 = time.perf_counter(); srv = serve(ref, backend="onnx", **cfg); start_s = time.perf_counter() - t0
            stoppers.append(srv.stop); targets[f"aimass-{i}"] = srv
            print(f"aimass config {i} {cfg}: healthy after {start_s:.2f} s", flush=True)
        want = [p["label"] for p in _post(targets[next(k for k in targets if k.startswith("fastapi"))], rows[:64])]
        for name, t in targets.items():
            got = [p["label"] for p in _post(getattr(t, "url", t), rows[:64])]
            assert got == want, f"{name} disagrees with the baseline"
            loadtest(t, concurrency=args.concurrency, requests=500, payload=rows, progress=False)  # warm up
        reps = {name: [] for name in targets}
        for _ in range(args.rounds):  # interleaved rounds: load from other processes hits every target alike
            for name, t in targets.items(): reps[name].append(run(t))
    finally:
        for stop in stoppers: stop()
    res = {name: dict(rps=float(np.median([r.rps for r in rs])), p99_ms=float(np.median([r.p99 for r in rs])),
                      p50_ms=float(np.median([r.p50 for r in rs])), errors=sum(sum(r.errors.values()) for r in rs)) for name, rs in reps.items()}
    configs = json.loads(args.configs)
    for name, r in res.items():
        label = f"{name} {configs[int(name.split('-')[1])]}" if name.startswith("aimass") else name
        print(f"{label:55s} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}")
    best_a = max((n for n in res if n.startswith("aimass")), key=lambda n: res[n]["rps"])
    for b in (n for n in res if n.startswith("fastapi")):
        print(f"ratio {best_a} / {b}: {res[best_a]['rps'] / res[b]['rps']:.2f}x requests/s; p99 {res[best_a]['p99_ms']:.1f} vs {res[b]['p99_ms']:.1f} ms")
    print(f"(concurrency {args.concurrency}, {args.rounds} interleaved rounds x {args.seconds:g} s, medians; {os.cpu_count()} CPUs)")
    if args.json: Path(args.json).write_text(json.dumps({"results": res, "configs": configs, "args": vars(args)}, indent=2))


def load_rows(ref, n=256):
    from aimass.loadtesting import default_rows
    return default_rows({"ref": ref, "schema": None}, n)


def _post(url, rows):
    import httpx
    return httpx.post(url + "/predict", json={"instances": rows}, timeout=30).json()["predictions"]


if __name__ == "__main__":
    main()
