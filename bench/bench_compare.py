"""Issue 15, item 7, third line: the leaderboard on penguins-like data (numeric and categorical columns, missing values):
cross-validated scores and times, and the registered tree's ONNX vs native (torch backend) latency.

Penguins-like: sklearn's wine table (178 rows, 13 numbers, 3 classes) with two categorical columns (an island that
follows the class with noise, a sex at random) and missing values in three numbers and in the island.
Run: `.venv/bin/python bench/bench_compare.py` (about a minute on 2 cores)."""
import os, sys, tempfile, time
import numpy as np, pandas as pd

def penguins_like(seed: int = 0) -> pd.DataFrame:
    from sklearn.datasets import load_wine
    w = load_wine(as_frame=True)
    df, rng = w.frame.copy(), np.random.default_rng(seed)
    df["target"] = np.array(["Adelie", "Chinstrap", "Gentoo"])[df.target]
    islands = np.array(["Torgersen", "Biscoe", "Dream"])
    df["island"] = np.where(rng.random(len(df)) < 0.7, islands[df.target.map({"Adelie": 0, "Chinstrap": 1, "Gentoo": 2})], rng.choice(islands, len(df)))
    df["sex"] = rng.choice(["male", "female"], len(df))
    for c in ("alcohol", "magnesium", "proline", "island"): df.loc[rng.choice(len(df), 12, replace=False), c] = None
    return df.rename(columns={"target": "species"})

def main(folds: int = 5, epochs: int = 20):
    os.environ.setdefault("AIMASS_HOME", tempfile.mkdtemp(prefix="aimass-bench-compare-"))
    import aimass
    df = penguins_like()
    print(f"penguins-like: {len(df)} rows, {df.shape[1]-1} columns ({df.isna().sum().sum()} missing values), 3 classes")
    t0 = time.perf_counter()
    board = aimass.compare(df, target="species", folds=folds, epochs=epochs, register="penguins", progress=False)
    print(f"compare: {folds} folds x {len(board.table)} models in {time.perf_counter()-t0:.1f} s")
    print(board.table.round(4).to_string(index=False))
    print(board)
    tree = aimass.fit_tree(df, "species", name="penguins-tree")
    aimass.export(tree.ref)
    rep = aimass.bench(tree.ref, backends=("torch", "onnx"), batch_sizes=(1, 64), repeats=100)
    print(rep.p50().round(4).to_string())

if __name__ == "__main__": main(*(int(a) for a in sys.argv[1:]))
