"""Peak memory of a full pass over image files through a DataLoader with workers: 2,000 vs 20,000 images.

The issue's target: memory does not grow with the number of images (peak at 20,000 within 1.2x of peak at 2,000).
Small PNGs (32x32, 10 class folders) are written to a temporary folder; each size is measured in a fresh process
that runs `load_images` (the scan, headers only), then one full pass of `DataLoader(ImageFiles(...), num_workers=W)`,
while a thread samples the memory of the process and all its children every 20 ms. Two sums are reported: RSS (what
the issue asks for; shared pages, such as torch's libraries, count once per process) and PSS (shared pages divided
among the processes that share them: the memory the tree really holds). `--list` uses a plain Python list of paths
in the Dataset instead of ImageFiles' numpy buffer, to show the copy-on-write growth that buffer avoids.

    .venv/bin/python bench/bench_image_memory.py [--sizes 2000 20000] [--workers 2] [--batch 64] [--list]
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np


def write_pngs(root: Path, n: int, classes: int = 10, size: int = 32):
    "`n` small noisy PNGs in `classes` class folders (reused when already written)."
    from PIL import Image
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (classes, size, size, 3), dtype=np.uint8)
    for k in range(classes): (root/f"c{k}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        f = root/f"c{i % classes}"/f"{i:06d}.png"
        if not f.exists():
            noise = rng.integers(0, 32, (size, size, 3), dtype=np.uint8)
            Image.fromarray(base[i % classes] // 2 + noise).save(f, compress_level=1)
    return root


def tree_memory() -> tuple:
    "`(RSS, PSS)` summed over this process and its children, in bytes."
    import psutil
    me = psutil.Process()
    rss = pss = 0
    for p in [me, *me.children(recursive=True)]:
        try:
            m = p.memory_full_info()
            rss, pss = rss + m.rss, pss + getattr(m, "pss", m.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied): pass
    return rss, pss


class PlainList:
    "The usual Dataset: a Python list of path strings (each worker's reads touch their refcounts: copy-on-write)."
    def __init__(self, paths, y, processing): self.paths, self.y, self.p = list(map(str, paths)), list(y), processing
    def __len__(self): return len(self.paths)
    def __getitem__(self, i):
        import torch
        from aimass.images import open_image
        return torch.from_numpy(np.array(self.p.prepare(open_image(self.paths[i])))), torch.tensor(self.y[i])


def measure(folder: str, workers: int, batch: int, plain: bool) -> dict:
    "One full pass over `folder`, in this process: peak memory of the process tree while it runs."
    import threading
    import torch
    from torch.utils.data import DataLoader
    from aimass.images import ImageFiles, ImageProcessing, load_images
    peak, stop = [0, 0], threading.Event()
    def sample():
        while not stop.is_set():
            rss, pss = tree_memory()
            peak[0], peak[1] = max(peak[0], rss), max(peak[1], pss)
            time.sleep(0.02)
    t = threading.Thread(target=sample, daemon=True); t.start()
    start = time.perf_counter()
    ds = load_images(folder)
    scanned = time.perf_counter() - start
    p = ImageProcessing.default(32)
    data = PlainList(ds.X, ds.y, p) if plain else ImageFiles(ds.X, ds.y, p, train=True)
    seen = 0
    for xb, yb in DataLoader(data, batch_size=batch, shuffle=True, num_workers=workers):
        seen += len(yb)
    stop.set(); t.join()
    return {"images": len(ds), "seen": seen, "scan_s": round(scanned, 2), "total_s": round(time.perf_counter() - start, 2),
            "peak_rss_mb": round(peak[0] / 2**20, 1), "peak_pss_mb": round(peak[1] / 2**20, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--list", action="store_true", help="a plain list of paths instead of ImageFiles (the baseline)")
    ap.add_argument("--folder", help="write the images here (kept) instead of a temporary folder")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this folder in this process
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.workers, a.batch, a.list))); return
    tmp = None if a.folder else tempfile.TemporaryDirectory()
    base = Path(a.folder or tmp.name)
    results = []
    for n in a.sizes:
        t = time.perf_counter()
        folder = write_pngs(base/f"n{n}", n)
        print(f"wrote {n:,} PNGs in {time.perf_counter() - t:.1f} s", flush=True)
        cmd = [sys.executable, __file__, "--one", str(folder), "--workers", str(a.workers), "--batch", str(a.batch)] + (["--list"] if a.list else [])
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{r['images']:>7,} images: peak RSS (process tree) {r['peak_rss_mb']:8.1f} MB, PSS {r['peak_pss_mb']:8.1f} MB; "
              f"scan {r['scan_s']} s, full pass {r['total_s']} s", flush=True)
    if len(results) >= 2:
        lo, hi = results[0], results[-1]
        rss, pss = hi["peak_rss_mb"] / lo["peak_rss_mb"], hi["peak_pss_mb"] / lo["peak_pss_mb"]
        print(f"ratio {hi['images']:,} / {lo['images']:,}: RSS {rss:.3f}x, PSS {pss:.3f}x (target: within 1.2x) -> "
              f"{'OK' if rss <= 1.2 else 'OVER'}")
    if tmp: tmp.cleanup()


if __name__ == "__main__":
    main()
