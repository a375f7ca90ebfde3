"""Batch predict: aimass.predict against a hand-written pandas + ONNX Runtime loop, file to file and in memory.

Builds a seeded 18-column table (12 numeric and 6 text/categorical columns, some values missing in both, a 3-class
target), trains a small MLP on a sample of it with aimass.train (a few epochs), exports it with aimass.export, writes
a `--rows`-row Parquet file, then times, in interleaved rounds (medians):

- aimass.predict(ref, data=file.parquet, output=out.parquet)                (target >= 200,000 rows/s)
- aimass.predict(ref, data=DataFrame of `--mem-rows` rows) in memory       (target >= 300,000 rows/s)
- the hand-written loop: pyarrow reads the file in chunks -> the model's stored preprocessing (its Preprocessor)
  -> onnxruntime InferenceSession.run -> label and prob_<class> columns -> pyarrow ParquetWriter
                                                                             (target: aimass within 1.2x of it)
and, each in its own process, the peak RSS of predict file-to-file at `--rows` and `--big-rows` rows
                                                                             (target: within 1.2x of each other).

    .venv/bin/python bench/bench_predict.py [--rows 1000000] [--mem-rows 200000] [--big-rows 5000000] [--rounds 3]
    .venv/bin/python bench/bench_predict.py --rows 200000 --mem-rows 50000 --big-rows 1000000 --rounds 2   # a quick run

Everything is written to a temporary folder (and AIMASS_HOME) unless --home is given; a second run with the same --home
reuses its model and files. Exit status 1 when a target is missed.
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, textwrap, time
from pathlib import Path
import numpy as np

CATS = {"color": ["red", "green", "blue", "black", "white"], "city": [f"city{i:02d}" for i in range(20)],
        "plan": ["free", "basic", "pro"], "device": ["ios", "android", "web", "tv"],
        "segment": list("ABCDEFGH"), "channel": ["ads", "organic", "referral", "email", "social", "partner"]}


def make_table(n: int, seed: int = 0):
    "`n` rows: num0..num11 (floats, 3% missing), six categorical text columns (2% missing), an id and a 3-class target."
    import pandas as pd
    rng = np.random.default_rng(seed)
    cols = {"id": np.arange(n, dtype=np.int64)}
    num = rng.normal(size=(n, 12)).astype(np.float64)
    for j in range(12): cols[f"num{j}"] = num[:, j]
    for name, values in CATS.items(): cols[name] = np.asarray(values, dtype=object)[rng.integers(0, len(values), n)]
    df = pd.DataFrame(cols)
    score = num[:, 0] + 0.5 * num[:, 1] - num[:, 2] + (df.plan == "pro") - (df.device == "tv")
    df["label"] = np.where(score > 0.8, "high", np.where(score < -0.8, "low", "mid"))
    for j in range(12): df.loc[rng.random(n) < 0.03, f"num{j}"] = np.nan
    for name in CATS: df.loc[rng.random(n) < 0.02, name] = None
    return df


def write_parquet(path: Path, n: int, seed: int = 1, block: int = 500_000):
    "A Parquet file of `n` rows (no target), written `block` rows at a time so a 5M-row file needs little memory."
    import pyarrow as pa, pyarrow.parquet as pq
    w = None
    for i, start in enumerate(range(0, n, block)):
        df = make_table(min(block, n - start), seed + i).drop(columns="label")
        df["id"] += start
        t = pa.Table.from_pandas(df, preserve_index=False)
        if w is None: w = pq.ParquetWriter(path, t.schema)
        w.write_table(t, row_group_size=128 * 1024)
    w.close()


def baseline(model_dir: Path, src: Path, out: Path, chunk: int = 65536, threads: int | None = None):
    "The loop a user who knows pandas and ONNX Runtime writes: chunks of the file -> preprocessing -> ORT -> Parquet."
    import onnxruntime as ort, pyarrow as pa, pyarrow.parquet as pq
    from aimass.registry import ModelCard
    card = ModelCard.read(model_dir)
    pre, classes = card.preprocessing(), np.asarray(card.classes, dtype=object)
    so = ort.SessionOptions(); so.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
    sess = ort.InferenceSession(str(model_dir/card.export.files[card.onnx_variant()]), so, providers=["CPUExecutionProvider"])
    name, raw = sess.get_inputs()[0].name, card.export.inputs == "raw"
    feats = [c["name"] for c in pre.state["columns"]]
    writer = None
    with pq.ParquetFile(src) as pf:
        for batch in pf.iter_batches(batch_size=chunk, columns=["id", *feats]):
            df = batch.to_pandas()
            x = df[feats].to_numpy(np.float32) if raw else pre.transform(df[feats])
            p = sess.run(None, {name: x})[0]
            cols = {"id": batch.column("id"), "prediction": pa.array(classes[p.argmax(1)], pa.string())}
            cols.update({f"prob_{c}": pa.array(p[:, i]) for i, c in enumerate(card.classes)})
            t = pa.table(cols)
            if writer is None: writer = pq.ParquetWriter(out, t.schema)
            writer.write_table(t)
    writer.close()


RSS_CHILD = textwrap.dedent("""
    import re, sys, time, aimass
    t = time.perf_counter()
    p = aimass.predict(sys.argv[1], data=sys.argv[2], output=sys.argv[3], keep=["id"], progress=False, overwrite=True)
    hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())  # this process's own peak (ru_maxrss starts at its parent's)
    print(p.rows, time.perf_counter() - t, int(hwm.group(1)) / 1024)
""")


def peak_rss(ref: str, src: Path, out: Path) -> tuple[int, float, float]:
    "`(rows, seconds, peak RSS in MiB)` of predict file-to-file in a fresh process."
    r = subprocess.run([sys.executable, "-c", RSS_CHILD, ref, str(src), str(out)], capture_output=True, text=True, env=os.environ,
                       cwd=out.parent)  # not the repository: `import aimass` finds the one this process runs (PYTHONPATH, site-packages)
    if r.returncode: raise RuntimeError(r.stderr[-3000:])
    rows, secs, rss = r.stdout.split()[-3:]
    return int(rows), float(secs), float(rss)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the Parquet file scored file to file")
    ap.add_argument("--mem-rows", type=int, default=200_000, help="rows of the in-memory DataFrame")
    ap.add_argument("--big-rows", type=int, default=5_000_000, help="rows of the second file for the peak-RSS check (0: skip it)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-rows", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--home", help="working folder and AIMASS_HOME (default: a temporary folder)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    tmp = None
    if args.home: work = Path(args.home)
    else: tmp = tempfile.TemporaryDirectory(prefix="aimass-bench-predict-"); work = Path(tmp.name)
    os.environ["AIMASS_HOME"] = str(work/"home")
    import aimass, pandas as pd
    from aimass.registry import Registry

    t0 = time.perf_counter()
    try: mv = Registry().get("bench-predict")  # --home from an earlier run: the same model and files
    except Exception:
        aimass.train("mlp", make_table(args.train_rows, 0).drop(columns="id"), target="label", epochs=args.epochs,
                     name="bench-predict", progress=False)
        aimass.export("bench-predict")
        mv = Registry().get("bench-predict")
    print(f"{mv.ref} ready in {time.perf_counter() - t0:.1f} s (graph inputs: {mv.card.export.inputs}); aimass from {Path(aimass.__file__).parent}")
    src, t0 = work/f"rows-{args.rows}.parquet", time.perf_counter()
    if not src.exists(): write_parquet(src, args.rows)
    mem = make_table(args.mem_rows, 7).drop(columns="label")
    print(f"{args.rows:,} rows x 19 columns (an id and 18 features) ready in {time.perf_counter() - t0:.1f} s ({src.stat().st_size / 2**20:.0f} MiB)")

    runs = {"predict file->file": lambda: aimass.predict(mv.ref, data=src, output=work/"out.parquet", keep=["id"],
                                                         overwrite=True, progress=False),
            "predict in memory": lambda: aimass.predict(mv.ref, data=mem, progress=False),
            "hand-written ORT loop": lambda: baseline(mv.path, src, work/"base.parquet")}
    rows = {"predict file->file": args.rows, "predict in memory": args.mem_rows, "hand-written ORT loop": args.rows}
    for f in runs.values(): f()  # warm up: imports, first sessions
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, f in runs.items():
            t = time.perf_counter(); f(); times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: rows[k] / med[k] for k in runs}
    ours, base = pd.read_parquet(work/"out.parquet"), pd.read_parquet(work/"base.parquet")
    assert ours.id.tolist() == base.id.tolist() and ours.prediction.tolist() == base.prediction.tolist(), "the two files differ"
    np.testing.assert_allclose(ours.filter(like="prob_").to_numpy(), base.filter(like="prob_").to_numpy(), atol=1e-5)

    print(f"\n{'':24}{'median s':>10}{'rows/s':>12}   (rounds: {args.rounds}, seconds: " +
          "; ".join(f"{k}: {', '.join(f'{t:.2f}' for t in v)}" for k, v in times.items()) + ")")
    for k in runs: print(f"{k:24}{med[k]:10.3f}{rate[k]:12,.0f}")
    ratio = med["predict file->file"] / med["hand-written ORT loop"]
    checks = {"file->file >= 200,000 rows/s": rate["predict file->file"] >= 200_000,
              "in memory >= 300,000 rows/s": rate["predict in memory"] >= 300_000,
              "file->file / hand-written <= 1.2": ratio <= 1.2}
    print(f"predict file->file / hand-written loop: {ratio:.2f}x (target <= 1.2)")
    summary = {"rows": args.rows, "mem_rows": args.mem_rows, "seconds": times, "median_s": med, "rows_per_s": rate,
               "file_over_handwritten": ratio}
    if args.big_rows:
        big = work/f"rows-{args.big_rows}.parquet"
        if not big.exists():
            t0 = time.perf_counter(); write_parquet(big, args.big_rows); print(f"\nwrote {args.big_rows:,} rows in {time.perf_counter() - t0:.1f} s")
        small = peak_rss(mv.ref, src, work/"rss-small.parquet")
        large = peak_rss(mv.ref, big, work/"rss-big.parquet")
        rss_ratio = large[2] / small[2]
        for n, s, r in (small, large): print(f"peak RSS, predict file->file, {n:>10,} rows: {r:8.0f} MiB ({n / s:,.0f} rows/s)")
        print(f"peak RSS {args.big_rows:,} / {args.rows:,} rows: {rss_ratio:.2f}x (target <= 1.2)")
        checks[f"peak RSS {args.big_rows:,} / {args.rows:,} <= 1.2"] = rss_ratio <= 1.2
        summary["peak_rss_mib"] = {str(small[0]): small[2], str(large[0]): large[2]}
    print("targets: " + ", ".join(f"{k} {'OK' if v else 'MISSED'}" for k, v in checks.items()))
    summary["checks"] = checks
    if args.json: Path(args.json).write_text(json.dumps(summary, indent=2))
    if tmp: tmp.cleanup()
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
