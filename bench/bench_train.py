"""aimass.train vs a hand-written PyTorch loop: same model, data, epochs, batch size and optimizer, one process.

Both sides load digits, split it, scale it, train an MLP 64-256-128-10 with AdamW and a cosine schedule for
10 epochs at batch 32, evaluate on the validation split after each epoch and score the test split.
aimass.train also writes checkpoints, keeps the best, and registers the version; its progress bar is on.
Runs alternate (baseline, aimass, baseline, ...) and the ratio of medians is printed.

    .venv/bin/python bench/bench_train.py [--repeats 5] [--epochs 10]
"""
import argparse, os, statistics, sys, tempfile, time
import numpy as np
import torch
from torch import nn

def raw_loop(epochs, batch_size, seed=0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    torch.manual_seed(seed)
    d = load_digits()
    X, y = d.images.astype(np.float32)[:, None], d.target.astype(np.int64)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=0.15, random_state=seed, stratify=y)
    tr, va = train_test_split(rest, test_size=0.15/0.85, random_state=seed, stratify=y[rest])
    mean, std = X[tr].mean(), X[tr].std()
    t = lambda i: (torch.from_numpy((X[i] - mean) / std), torch.from_numpy(y[i]))
    (xtr, ytr), (xva, yva), (xte, yte) = t(tr), t(va), t(test)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 128), nn.ReLU(),
                        nn.Dropout(0.1), nn.Linear(128, 10))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        for b in torch.randperm(len(ytr), generator=g).split(batch_size):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xtr[b]), ytr[b])
            loss.backward(); opt.step()
        sched.step()
        net.eval()
        with torch.no_grad(): val_acc = (net(xva).argmax(-1) == yva).float().mean().item()
    with torch.no_grad(): return (net(xte).argmax(-1) == yte).float().mean().item()

def aimass_run(epochs, batch_size, progress):
    from aimass.train import train
    run = train("mlp", "digits", epochs=epochs, batch_size=batch_size, name="bench-mlp", progress=progress)
    return run.test_metrics["accuracy"]

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5); ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave the default)")
    ap.add_argument("--progress", default="bar", help="bar (terminal progress), dashboard (widget updates), or none")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    os.environ["AIMASS_HOME"] = tempfile.mkdtemp(prefix="aimass-bench-")
    import aimass.train  # imports (torch, lightning) are not part of either timing
    progress = False if a.progress == "none" else a.progress
    aimass_run(1, a.batch_size, False); raw_loop(1, a.batch_size)  # warm-up: first-call costs on both sides
    base, ours, accs = [], [], []
    for i in range(a.repeats):
        t = time.perf_counter(); acc_b = raw_loop(a.epochs, a.batch_size); base.append(time.perf_counter() - t)
        t = time.perf_counter(); acc_a = aimass_run(a.epochs, a.batch_size, progress); ours.append(time.perf_counter() - t)
        accs.append((acc_b, acc_a))
        print(f"repeat {i+1}/{a.repeats}: raw loop {base[-1]:.2f}s (acc {acc_b:.3f}), aimass.train {ours[-1]:.2f}s (acc {acc_a:.3f})", file=sys.stderr)
    mb, ma = statistics.median(base), statistics.median(ours)
    print(f"digits, mlp 64-256-128-10, {a.epochs} epochs, batch {a.batch_size}, progress={a.progress}, torch threads={torch.get_num_threads()}")
    print(f"raw PyTorch loop: median {mb:.3f}s   aimass.train: median {ma:.3f}s")
    print(f"ratio aimass.train / raw loop: {ma/mb:.3f}  (target <= 1.15)")

if __name__ == "__main__":
    main()
