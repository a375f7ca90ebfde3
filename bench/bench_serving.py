"""Serving benchmark: aimass (LitServe + ONNX Runtime) against a hand-written FastAPI + uvicorn + ONNX Runtime app.

All serve the same cnn digits model with the same contract ({"instances": [...]} -> {"predictions": [...]}, one
`{label, probabilities}` per row), one row per request, at the same concurrency, in interleaved rounds; medians of
requests/s and p99 latency. Baselines (each its own process, binding 127.0.0.1 only):
- `fastapi-ort-async` / `fastapi-ort-sync`: about 20 lines a user who knows ONNX Runtime would write (ORT_APP below):
  `onnxruntime.InferenceSession` on the version's ONNX file, the stored preprocessing, `async def` or `def` endpoint.
  This is the baseline the targets are judged against (the faster of the two kinds measured).
- `fastapi-torch`: the weaker peer, eager PyTorch behind FastAPI (`async def`).
Load comes from wrk (an independent load generator, `apt-get install wrk`; a Lua script posts the bodies) and/or from
`aimass.loadtest`. Targets: aimass's best configuration >= 1.3x the ORT app's req/s with p99 <= 1.2x its p99; time
from `serve()` to healthy <= 2 s (median of --starts starts).

Full run: `.venv/bin/python bench/bench_serving.py`; a quick one: `--seconds 3 --rounds 2 --starts 3`."""
import argparse, json, os, re, shutil, subprocess, sys, tempfile, textwrap, time
from pathlib import Path

ORT_APP = textwrap.dedent('''
    import sys, numpy as np, onnxruntime as ort, uvicorn
    from fastapi import FastAPI, HTTPException
    from pydantic import BaseModel
    from aimass.registry import Registry
    from aimass.inference import raw_array
    mv = Registry().get(sys.argv[1]); card = mv.card; pre = card.preprocessing()
    prepare = (lambda rows: raw_array(pre, rows)) if card.export.inputs == "raw" else pre.transform  # the graph does the scaling, or not
    so = ort.SessionOptions(); so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(mv.path/card.export.files[card.onnx_variant()]), so, providers=["CPUExecutionProvider"])
    name, classes = sess.get_inputs()[0].name, card.classes
    app = FastAPI()
    class Body(BaseModel):
        instances: list
    @app.get("/health")
    def health(): return "ok"
    @app.post("/predict")
    def predict(body: Body):  # ASYNC_OR_SYNC
        try: x = prepare(body.instances)
        except Exception as e: raise HTTPException(400, str(e))
        p = sess.run(None, {name: x})[0].astype(float)
        return {"predictions": [{"label": classes[k], "probabilities": dict(zip(classes, r))} for k, r in zip(p.argmax(1).tolist(), p.tolist())]}
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
''')

TORCH_APP = textwrap.dedent('''
    import sys, torch
    torch.set_num_threads(1)
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
    @app.post("/predict")
    def predict(body: Body):  # ASYNC_OR_SYNC
        try: x = lm.preprocessor.transform(body.instances)
        except AimassError as e: raise HTTPException(400, str(e))
        with torch.inference_mode(): p = lm.predictor(torch.from_numpy(x)).numpy().astype(float)
        return {"predictions": [{"label": classes[k], "probabilities": dict(zip(classes, r))} for k, r in zip(p.argmax(1).tolist(), p.tolist())]}
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
''')

BASELINES = {"fastapi-ort-async": (ORT_APP, "async"), "fastapi-ort-sync": (ORT_APP, "sync"), "fastapi-torch": (TORCH_APP, "async")}

WRK_SCRIPT = '''
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {%s}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
'''


def make_model(name="digits-cnn", epochs=3):
    "Train the cnn template on digits (aimass.train registers it with its held-out rows), then export it to ONNX."
    from aimass.training import train
    from aimass.exporting import export
    train("cnn", "digits", epochs=epochs, name=name, progress=False)
    export(name)
    return name


def app_source(src: str, kind: str) -> str:
    "`sync`: a plain `def` endpoint (FastAPI runs it in its thread pool); `async`: `async def`, inference on the event loop."
    src = src.replace("# ASYNC_OR_SYNC", f"# {kind} endpoint")
    return src.replace("    def predict(body: Body):", "    async def predict(body: Body):") if kind == "async" else src


def start_baseline(ref, workdir, name):
    from aimass.launcher import free_port
    import httpx
    src, kind = BASELINES[name]
    app = Path(workdir)/f"{name}.py"; app.write_text(app_source(src, kind))
    port, log_path = free_port(), Path(workdir)/f"{name}.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(app), ref, str(port)], stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=env)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None: raise RuntimeError(log_path.read_text())
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200: return proc, url
        except httpx.HTTPError: pass
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not start")


def stop_baseline(proc):
    import signal
    try: os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError: pass
    proc.wait()


def wrk_script(rows, path, n=64) -> str:
    "A Lua script for wrk that posts one row per request, cycling through `n` of `rows`."
    bodies = ",".join(f"[==[{json.dumps({'instances': [r]}, separators=(',', ':'))}]==]" for r in rows[:n])
    Path(path).write_text(WRK_SCRIPT % bodies)
    return str(path)


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}

def run_wrk(url, script, concurrency, seconds, threads=1) -> dict:
    "wrk's requests/s, p50/p99 (ms) and non-2xx count for one run on `url`/predict."
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "--timeout", "10s", "-s", script,
                          url + "/predict"], capture_output=True, text=True, check=True).stdout
    lat = {q: float(v) * _UNIT[u] for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)}
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return dict(rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), p50_ms=lat["50"], p99_ms=lat["99"],
                errors=(int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0))


def run_loadtest(target, rows, concurrency, seconds) -> dict:
    from aimass.loadtesting import loadtest
    r = loadtest(target, concurrency=concurrency, duration=seconds, requests=None, payload=rows, progress=False)
    return dict(rps=r.rps, p50_ms=r.p50, p99_ms=r.p99, errors=sum(r.errors.values()))


def time_to_healthy(ref, cfg, n) -> list:
    "Seconds from calling serve() to its return (GET /health answered 200), `n` fresh starts."
    from aimass.launcher import serve
    times = []
    for _ in range(n):
        t0 = time.perf_counter(); srv = serve(ref, backend="onnx", new=True, **cfg); times.append(time.perf_counter() - t0)
        srv.stop()
    return times


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each measured run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    ap.add_argument("--drivers", default="wrk,loadtest", help="load generators: wrk, loadtest (aimass.loadtest)")
    ap.add_argument("--baselines", default="fastapi-ort-async,fastapi-ort-sync,fastapi-torch", help=f"from {', '.join(BASELINES)}")
    ap.add_argument("--configs", default='[{}, {"max_batch_size": 1}]',
                    help="JSON list of serve() keyword sets to try for aimass ({} is what serve(ref) does)")
    ap.add_argument("--starts", type=int, default=5, help="fresh starts timed for time-to-healthy (0: skip)")
    ap.add_argument("--before", help="also serve with the aimass package under this folder (a copy of an older checkout's "
                    "package, e.g. /tmp/old, holding old/aimass) as `aimass-before`, with --before-config, for same-minute before/after figures")
    ap.add_argument("--before-config", default='{"batch_timeout": 0.001}', help="serve() keywords for --before")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    drivers = args.drivers.split(",")
    if "wrk" in drivers and not shutil.which("wrk"): sys.exit("wrk is not installed: apt-get install -y wrk, or --drivers loadtest")
    home = tempfile.mkdtemp(prefix="aimass-bench-serving-")
    os.environ["AIMASS_HOME"] = home
    from aimass.launcher import serve
    from aimass.loadtesting import loadtest
    import numpy as np
    ref = make_model()
    rows = load_rows(ref)
    script = wrk_script(rows, Path(home)/"post.lua")
    configs = json.loads(args.configs)
    starts = time_to_healthy(ref, configs[0], args.starts) if args.starts else []
    if args.before:
        configs.append(json.loads(args.before_config))
        with older_aimass(args.before): starts_before = time_to_healthy(ref, configs[-1], args.starts) if args.starts else []
    targets, stoppers = {}, []
    try:
        for name in args.baselines.split(","):
            proc, url = start_baseline(ref, home, name)
            stoppers.append(lambda p=proc: stop_baseline(p)); targets[name] = url
        for i, cfg in enumerate(configs):
            before = args.before and i == len(configs) - 1
            with older_aimass(args.before if before else None): srv = serve(ref, backend="onnx", new=True, **cfg)
            stoppers.append(srv.stop); targets[f"aimass-before-{i}" if before else f"aimass-{i}"] = srv
        want = [p["label"] for p in _post(targets[next(iter(targets))], rows[:64])]
        for name, t in targets.items():
            got = [p["label"] for p in _post(getattr(t, "url", t), rows[:64])]
            assert got == want, f"{name} disagrees with {next(iter(targets))}"
            loadtest(t, concurrency=args.concurrency, requests=1000, payload=rows, progress=False)  # warm up
        reps = {(d, name): [] for d in drivers for name in targets}
        for _ in range(args.rounds):  # interleaved rounds: load from other processes hits every target alike
            for d in drivers:
                for name, t in targets.items():
                    url = getattr(t, "url", t)
                    reps[d, name].append(run_wrk(url, script, args.concurrency, args.seconds) if d == "wrk"
                                         else run_loadtest(t, rows, args.concurrency, args.seconds))
    finally:
        for stop in stoppers: stop()
    report(reps, drivers, targets, configs, starts, args)
    if args.before and starts_before:
        print(f"time to healthy with --before ({configs[-1]}): median {np.median(starts_before):.2f} s ({', '.join(f'{s:.2f}' for s in starts_before)})")


def older_aimass(path):
    "While in this block, servers started run the aimass package under `path` (their PYTHONPATH); None: no change."
    import contextlib
    @contextlib.contextmanager
    def env():
        old = os.environ.get("PYTHONPATH")
        if path: os.environ["PYTHONPATH"] = str(path)
        try: yield
        finally:
            if path:
                if old is None: os.environ.pop("PYTHONPATH", None)
                else: os.environ["PYTHONPATH"] = old
    return env()


def report(reps, drivers, targets, configs, starts, args):
    import numpy as np
    med = lambda rs, k: float(np.median([r[k] for r in rs]))
    res = {f"{d}/{n}": dict(rps=med(rs, "rps"), p50_ms=med(rs, "p50_ms"), p99_ms=med(rs, "p99_ms"),
                            errors=sum(r["errors"] for r in rs), runs=rs) for (d, n), rs in reps.items()}
    label = lambda n: f"{n} {configs[int(n.split('-')[-1])]}" if n.startswith("aimass") else n
    for d in drivers:
        print(f"\n== load from {d}: concurrency {args.concurrency}, {args.rounds} interleaved rounds x {args.seconds:g} s, medians")
        for n in targets:
            r = res[f"{d}/{n}"]
            print(f"{label(n):50s} {r['rps']:8.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}")
        ort = [n for n in targets if n.startswith("fastapi-ort")]
        best_a = max((n for n in targets if n.startswith("aimass-") and not n.startswith("aimass-before")), key=lambda n: res[f"{d}/{n}"]["rps"])
        a = res[f"{d}/{best_a}"]
        for b in [n for n in targets if n.startswith(("fastapi", "aimass-before"))]:
            r = res[f"{d}/{b}"]
            print(f"{best_a} / {b}: {a['rps'] / r['rps']:.2f}x req/s, p99 {a['p99_ms'] / r['p99_ms']:.2f}x ({a['p99_ms']:.1f} vs {r['p99_ms']:.1f} ms)")
        if ort:
            b = max(ort, key=lambda n: res[f"{d}/{n}"]["rps"]); r = res[f"{d}/{b}"]
            ok = a["rps"] >= 1.3 * r["rps"] and a["p99_ms"] <= 1.2 * r["p99_ms"]
            print(f"TARGET vs {b} (the faster ORT app): req/s {a['rps'] / r['rps']:.2f}x (>= 1.30x), "
                  f"p99 {a['p99_ms'] / r['p99_ms']:.2f}x (<= 1.20x): {'met' if ok else 'NOT met'}")
    if starts:
        m = float(np.median(starts))
        print(f"\nTARGET time from serve() to healthy ({configs[0]}): median {m:.2f} s of {len(starts)} "
              f"({', '.join(f'{s:.2f}' for s in starts)}) (<= 2 s): {'met' if m <= 2 else 'NOT met'}")
    print(f"({os.cpu_count()} CPUs)")
    if args.json: Path(args.json).write_text(json.dumps({"results": res, "configs": configs, "starts": starts, "args": vars(args)}, indent=2))


def load_rows(ref, n=256):
    from aimass.loadtesting import default_rows
    return default_rows({"ref": ref, "schema": None}, n)


def _post(url, rows):
    import httpx
    return httpx.post(url + "/predict", json={"instances": rows}, timeout=30).json()["predictions"]


if __name__ == "__main__":
    main()
