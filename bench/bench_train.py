"""aimass.train vs a hand-written PyTorch loop: same model, data, epochs, batch size and optimizer, one process.

Every side loads digits, split it, scale it, train an MLP 64-256-128-10 with AdamW and a cosine schedule for
10 epochs at batch 32, evaluate on the validation split after each epoch and score the test split.
aimass.train also validates each epoch with torchmetrics, writes a checkpoint each epoch, keeps the best, scores
the test split and registers the version; its progress bar is on.
Two baselines: the loop most people write (a DataLoader over a TensorDataset, shuffle=True) and a tight loop
that slices shuffled index tensors (the floor). Runs are interleaved and the ratios of medians are printed against
issue 17's targets (aimass.train at most 1.0x the DataLoader loop and 1.15x the tight loop), in wall time and, as a
check on a busy machine, in process CPU time.
aimass.train steps with PyTorch's fused AdamW kernel on the CPU (transformers' Trainer does too, by default); both
baselines use `torch.optim.AdamW`'s default, a loop of tensor operations per parameter, as most code does. A third
run, the tight loop with `fused=True`, shows what is left on equal kernels (no target).
`--callback epoch` passes aimass.train a Lightning callback with an epoch-level hook (which keeps the fast path),
`--callback batch` one with a per-batch hook (which takes one batch per Lightning step).

    .venv/bin/python bench/bench_train.py [--repeats 5] [--epochs 10] [--callback none|epoch|batch]
"""
import argparse, os, statistics, sys, tempfile, time
import numpy as np
import torch
from torch import nn

def raw_loop(epochs, batch_size, seed=0, dataloader=False, fused=False):
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
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, **({"fused": True} if fused else {}))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    g = torch.Generator().manual_seed(seed)
    # The loop most people write uses a DataLoader over a TensorDataset; the tight one slices shuffled index tensors.
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xtr, ytr), batch_size=batch_size, shuffle=True, generator=g)
    batches = (lambda: loader) if dataloader else (lambda: ((xtr[b], ytr[b]) for b in torch.randperm(len(ytr), generator=g).split(batch_size)))
    for epoch in range(epochs):
        net.train()
        for xb, yb in batches():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xb), yb)
            loss.backward(); opt.step()
        sched.step()
        net.eval()
        with torch.no_grad(): val_acc = (net(xva).argmax(-1) == yva).float().mean().item()
    with torch.no_grad(): return (net(xte).argmax(-1) == yte).float().mean().item()

def _callbacks(kind):
    "A user's callback of the given kind, as aimass.train takes them."
    import lightning as L
    class EpochLoss(L.Callback):  # an epoch-level hook, like most logging and early stopping
        def on_train_epoch_end(self, trainer, pl_module): self.last = float(trainer.callback_metrics["val_loss"])
    class BatchCount(L.Callback):  # a per-batch hook
        calls = 0
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx): self.calls += 1
    return {"none": None, "epoch": [EpochLoss()], "batch": [BatchCount()]}[kind]

def aimass_run(epochs, batch_size, progress, callback="none"):
    import warnings
    from aimass.training import train
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the note a per-batch callback brings, once a repeat
        run = train("mlp", "digits", epochs=epochs, batch_size=batch_size, name="bench-mlp", progress=progress,
                    callbacks=_callbacks(callback))
    return run.test_metrics["accuracy"]

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5); ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave the default)")
    ap.add_argument("--progress", default="bar", help="bar (terminal progress), dashboard (widget updates), or none")
    ap.add_argument("--callback", default="none", choices=["none", "epoch", "batch"], help="a callback passed to aimass.train")
    a = ap.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    os.environ["AIMASS_HOME"] = tempfile.mkdtemp(prefix="aimass-bench-")
    import aimass.training  # imports (torch, lightning) are not part of either timing
    progress = False if a.progress == "none" else a.progress
    aimass_run(1, a.batch_size, False); raw_loop(1, a.batch_size); raw_loop(1, a.batch_size, dataloader=True)  # warm-up
    times = {"dataloader loop": [], "tight loop": [], "tight loop, fused AdamW": [], "aimass.train": []}
    cpu = {k: [] for k in times}  # process CPU time: steadier than wall time when neighbours load the machine
    runs = {"dataloader loop": lambda: raw_loop(a.epochs, a.batch_size, dataloader=True),
            "tight loop": lambda: raw_loop(a.epochs, a.batch_size),
            "tight loop, fused AdamW": lambda: raw_loop(a.epochs, a.batch_size, fused=True),
            "aimass.train": lambda: aimass_run(a.epochs, a.batch_size, progress, a.callback)}
    for i in range(a.repeats):  # interleaved, so load from other processes hits every side alike
        line = []
        for k, f in runs.items():
            t, c = time.perf_counter(), time.process_time(); acc = f()
            times[k].append(time.perf_counter() - t); cpu[k].append(time.process_time() - c)
            line.append(f"{k} {times[k][-1]:.2f}s (acc {acc:.3f})")
        print(f"repeat {i+1}/{a.repeats}: " + ", ".join(line), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"digits, mlp 64-256-128-10, {a.epochs} epochs, batch {a.batch_size}, progress={a.progress}, callback={a.callback}, "
          f"torch threads={torch.get_num_threads()}")
    print("medians: " + ", ".join(f"{k} {v:.3f}s" for k, v in med.items()))
    for base, target in (("dataloader loop", 1.0), ("tight loop", 1.15)):  # issue 17's targets
        r = med["aimass.train"]/med[base]
        print(f"ratio aimass.train / {base + ':':16s} {r:.3f}  (target <= {target:.2f}: {'met' if r <= target else 'NOT met'})")
    r = med["aimass.train"]/med["tight loop, fused AdamW"]
    print(f"ratio aimass.train / tight loop, fused AdamW: {r:.3f}  (the same optimizer kernel on both sides; no target)")
    cmed = {k: statistics.median(v) for k, v in cpu.items()}
    print("CPU time medians: " + ", ".join(f"{k} {v:.3f}s" for k, v in cmed.items()) +
          f"; ratios {cmed['aimass.train']/cmed['dataloader loop']:.3f} (DataLoader), {cmed['aimass.train']/cmed['tight loop']:.3f} (tight)")
    # This machine's neighbours come and go; ratios within one repeat (seconds apart) show how much that moved.
    paired = sorted(a/b for a, b in zip(times["aimass.train"], times["dataloader loop"]))
    print(f"per-repeat ratios to the DataLoader loop: median {statistics.median(paired):.3f}, range {paired[0]:.3f} to {paired[-1]:.3f}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

if __name__ == "__main__":
    main()
