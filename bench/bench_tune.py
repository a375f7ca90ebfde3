"""aimass.tune vs the same configurations trained by hand, and pruning on vs off, in one process.

(a) `tune` runs N trials of the digits MLP (its default space, pruning off); then the same N parameter sets (read from
    the study) are trained by hand with `aimass.train(..., register=False, progress=False)` in a loop. The ratio of
    wall times is tune's overhead (the study's SQLite storage, sampling, the per-epoch callback, registering the best);
    target at most 1.1x.
(b) The same trials budget with pruning on (median pruner) vs off (the run of (a)), same sampler seed: the wall time
    cut (target at least 30%) and both best scores (val_loss, lower is better).
A warm-up train call and a one-trial study run first, so that neither side pays first-call imports (optuna's included).

    .venv/bin/python bench/bench_tune.py [--trials 20] [--epochs 5] [--repeats 1]
"""
import argparse, os, statistics, sys, tempfile, time


def main(trials: int, epochs: int, repeats: int = 1):
    os.environ["AIMASS_HOME"] = tempfile.mkdtemp(prefix="bench-tune-")
    import aimass
    from aimass.tuning import _train_kwargs
    aimass.train("mlp", "digits", epochs=1, register=False, progress=False)  # warm-up: imports, first-call costs
    aimass.tune("mlp", "digits", trials=1, epochs=1, name="warm-up", register=False, progress=False)  # optuna's imports, TPE's

    def tuned(prune, name):
        t0 = time.perf_counter()
        r = aimass.tune("mlp", "digits", trials=trials, epochs=epochs, prune=prune, name=name, progress=False)
        return time.perf_counter() - t0, r

    def by_hand(configs):
        t0 = time.perf_counter()
        for kw in configs: aimass.train("mlp", "digits", epochs=epochs, seed=0, register=False, progress=False, **kw)
        return time.perf_counter() - t0

    # rounds interleave the three sides (the order turns each round), so a busy machine slows each alike; medians are kept
    off_s, hand_s, on_s = [], [], []
    for r in range(repeats):
        sides = ["off", "hand", "on"][r % 3:] + ["off", "hand", "on"][:r % 3]
        for side in sides:
            if side == "off": t, off = tuned(False, f"off-{r}"); off_s.append(t)
            elif side == "on": t, on = tuned(True, f"on-{r}"); on_s.append(t)
            else: hand_s.append(by_hand([_train_kwargs(t.params, "mlp") for t in off.study.trials]))  # round 0 runs "off" first
    t_tune, t_hand, t_prune = statistics.median(off_s), statistics.median(hand_s), statistics.median(on_s)
    configs = off.study.trials
    pruned = int((on.trials.state == "PRUNED").sum())
    print(f"digits MLP, {trials} trials x {epochs} epochs, median of {repeats} interleaved round(s)")
    print(f"(a) tune (no pruning) {t_tune:7.2f} s | same {len(configs)} configs by hand {t_hand:7.2f} s | "
          f"ratio {t_tune / t_hand:.3f}x (target <= 1.1x)")
    print(f"(b) pruning on {t_prune:7.2f} s ({pruned} of {trials} pruned) | off {t_tune:7.2f} s | "
          f"wall time cut {100 * (1 - t_prune / t_tune):.0f}% (target >= 30%)")
    print(f"    best val_loss: pruning on {on.best_value:.4f} (trial {on.best_trial.number}) | "
          f"off {off.best_value:.4f} (trial {off.best_trial.number})")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the three sides, interleaved; medians are printed")
    a = ap.parse_args()
    main(a.trials, a.epochs, a.repeats)
