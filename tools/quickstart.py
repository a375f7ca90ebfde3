"""The main job, end to end, on the built-in digits data: train -> export -> bench -> serve -> query -> stop.

    .venv/bin/python tools/quickstart.py [--epochs 10] [--name digits-mlp]

Uses only aimass's public Python API; the notebook version of the same flow is nbs/index.ipynb.
Everything is stored under $AIMASS_HOME (default ~/.aimass).
"""
import argparse, json, sys

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10); ap.add_argument("--name", default="digits-mlp")
    ap.add_argument("--model", default="mlp", help="mlp, cnn or linear")
    a = ap.parse_args()
    import aimass, httpx
    from aimass.data import load_data

    print(f"== 1/6 train {a.model} on digits, {a.epochs} epochs")
    run = aimass.train(a.model, "digits", epochs=a.epochs, name=a.name)
    print(run); print(run.metrics_table().to_string())

    print(f"\n== 2/6 export {run.ref} to ONNX (fp32 + int8), with a parity check")
    rep = aimass.export(run.ref, quantize="int8")
    print(rep)

    print(f"\n== 3/6 benchmark eager PyTorch vs ONNX Runtime")
    bench = aimass.bench(run.ref, backends=("torch", "onnx", "onnx-int8"), batch_sizes=(1, 8, 64))
    print(bench)
    png = run.version.path/"bench"/"latency.png"
    if png.exists(): print(f"latency plot: {png}")

    print(f"\n== 4/6 serve {run.ref} on 127.0.0.1")
    server = aimass.serve(run.ref)
    try:
        print(server)
        print("\n== 5/6 query it over HTTP")
        rows = load_data("digits").X[:3].reshape(3, 64).tolist()
        r = httpx.post(f"{server.url}/predict", json={"instances": rows}, timeout=10)
        r.raise_for_status()
        for p in r.json()["predictions"]: print(" ", json.dumps({"label": p["label"], "p": round(max(p["probabilities"].values()), 3)}))
        print(aimass.loadtest(server, concurrency=16, requests=500, progress=False))
    finally:
        print("\n== 6/6 stop the server")
        server.stop()
        print(f"stopped: {'alive' if server.alive else 'not running'}")
    print(); print(aimass.list_models(a.name).to_string(index=False))

if __name__ == "__main__":
    sys.exit(main())
