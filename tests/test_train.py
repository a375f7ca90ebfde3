"Training: resume, interrupts, NaN losses, global state, CSV data, init_from, several processes."
import os, signal, subprocess, sys, textwrap
import numpy as np, pandas as pd, pytest, torch
from torch import nn
import lightning as L
from conftest import PYTHON, ROOT
from aimass.core import AimassError
from aimass.registry import Registry, load
from aimass.training import train
from aimass.models import read_state_dict


class InterruptAt(L.Callback):
    "Sends this process a SIGINT (what Jupyter's Interrupt does) after a given training step."
    def __init__(self, step): self.step = step
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step: os.kill(os.getpid(), signal.SIGINT)


class Explodes(nn.Module):
    "A linear model whose outputs turn NaN after 60 training forwards."
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.lin, self.calls = nn.Linear(in_features, num_classes), 0
    def forward(self, x):
        self.calls += self.training
        out = self.lin(x.flatten(1))
        return out * float("nan") if self.training and self.calls > 60 else out


def weights(ref): return read_state_dict(Registry().get(ref).file("weights.safetensors"))


def assert_registered_weights_are(run, checkpoint):
    registered = weights(run.ref)
    assert {"net." + k for k in registered} == set(checkpoint["state_dict"])
    for k, v in registered.items(): torch.testing.assert_close(v, checkpoint["state_dict"]["net." + k], rtol=0, atol=0)


def test_interrupt_ends_cleanly_and_resume_matches_an_uninterrupted_run():
    straight = train("mlp", "digits", epochs=4, seed=3, name="straight", progress=False)
    steps = 40  # batches per epoch: 1257 training rows / 32
    cut = train("mlp", "digits", epochs=4, seed=3, name="cut", progress=False, callbacks=[InterruptAt(2*steps + 5)])
    assert cut.status == "interrupted"          # no SystemExit, the call returned
    assert len(cut.history) == 2 and (cut.run_dir/"checkpoints"/"last.ckpt").exists()
    resumed = train("mlp", "digits", epochs=4, seed=3, name="cut", progress=False, resume=True)
    assert resumed.status == "completed" and resumed.run_dir == cut.run_dir
    assert list(resumed.history.epoch) == [1, 2, 3, 4]
    a, b = weights(straight.ref), weights(resumed.ref)
    assert a.keys() == b.keys()
    for k in a: torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert resumed.test_metrics == pytest.approx(straight.test_metrics, abs=1e-6)


def test_resume_with_nothing_to_resume_is_an_error(tmp_path):
    with pytest.raises(AimassError, match="Nothing to resume"): train("linear", "iris", resume=True, name="fresh")
    with pytest.raises(AimassError, match="Nothing to resume"): train("linear", "iris", resume=str(tmp_path/"nope"), name="fresh")


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_finite_checkpoint(aimass_home):
    with pytest.raises(AimassError, match="NaN or infinite at epoch 2") as e:
        train(Explodes, "digits", epochs=5, name="explodes", progress=False)
    assert "last finite checkpoint" in str(e.value)
    last = next((aimass_home/"runs"/"explodes").glob("*/checkpoints/last.ckpt"))
    state = torch.load(last, weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())
    assert Registry().list().empty  # nothing half-trained was registered


def test_global_state_is_restored():
    torch.use_deterministic_algorithms(False)
    torch.manual_seed(1234); np.random.seed(7)
    torch_rng, np_rng = torch.get_rng_state(), np.random.get_state()[1].copy()
    env = os.environ.get("PL_GLOBAL_SEED")
    train("linear", "iris", epochs=1, deterministic=True, seed=5, progress=False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(torch.get_rng_state(), torch_rng) and np.array_equal(np.random.get_state()[1], np_rng)
    assert os.environ.get("PL_GLOBAL_SEED") == env


def test_csv_with_categories_and_missing_values_predicts_the_same_from_raw_rows(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    df = pd.DataFrame({"tenure": rng.integers(0, 60, n).astype(float), "plan": rng.choice(["basic", "pro", "max"], n),
                       "spend": rng.normal(50, 15, n)})
    df["churned"] = np.where((df.tenure < 12) & (df.plan == "basic") | (df.spend > 70), "yes", "no")
    df.loc[::9, "tenure"] = np.nan; df.loc[::13, "plan"] = None
    df.to_csv(tmp_path/"churn.csv", index=False)
    run = train("mlp", str(tmp_path/"churn.csv"), target="churned", epochs=15, name="churn", progress=False)
    assert run.test_metrics["accuracy"] > 0.8
    raw = pd.read_csv(tmp_path/"churn.csv").drop(columns=["churned"])
    loaded = load("churn")
    np.testing.assert_array_equal(loaded.outputs(raw), run.model.outputs(raw))
    rows = raw.head(5).astype(object).where(raw.head(5).notna(), None).to_dict("records")  # JSON-like rows, nulls included
    assert list(loaded.predict(rows)) == list(run.model.predict(raw.head(5)))
    with pytest.raises(AimassError, match="Missing column"): loaded.predict(raw.drop(columns=["plan"]))
    assert list(loaded.outputs([{"tenure": 3}])[0]) == list(loaded.outputs([{"tenure": 3, "plan": None, "spend": None}])[0])


def test_second_run_registers_v2_and_init_from_starts_from_weights():
    r1 = train("linear", "wine", epochs=1, name="wine", progress=False)
    r2 = train("linear", "wine", epochs=1, name="wine", progress=False, init_from="wine:v1", lr=0.0, scheduler="constant")
    assert (r1.version.version, r2.version.version) == (1, 2)
    a, b = weights("wine:v1"), weights("wine:v2")
    for k in a: assert torch.equal(a[k], b[k])  # lr=0: the weights it started from are the ones it kept
    with pytest.raises(AimassError, match="do not fit"): train("mlp", "wine", epochs=1, init_from="wine:v1", progress=False)


def test_bad_arguments():
    with pytest.raises(AimassError, match="at least 1"): train("mlp", "iris", epochs=0)
    with pytest.raises(AimassError, match="Unknown model template"): train("resnet", "iris")
    with pytest.raises(AimassError, match="Unknown optimizer"): train("mlp", "iris", optimizer="lion", epochs=1, progress=False)
    with pytest.raises(AimassError, match="Cannot set up training"): train("mlp", "iris", accelerator="tpu", epochs=1)


DDP_SCRIPT = textwrap.dedent("""
    from aimass.training import train
    run = train("mlp", "digits", epochs=2, accelerator="cpu", devices=2, strategy="ddp", progress=False, name="ddp")
    if run is not None: print("RESULT", run.ref, run.test_metrics["accuracy"])
""")


def test_two_process_ddp_on_cpu_from_a_script(tmp_path):
    script = tmp_path/"ddp_train.py"; script.write_text(DDP_SCRIPT)
    out = subprocess.run([PYTHON, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    result = [l for l in out.stdout.splitlines() if l.startswith("RESULT")]
    assert len(result) == 1 and result[0].split()[1] == "ddp:v1"  # only rank 0 registers
    assert Registry().get("ddp:v1").card.hparams["strategy"] == "DDPStrategy"


def test_two_process_ddp_from_a_notebook_kernel(tmp_path):
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in [
        "%load_ext aimass",
        "%aimass train mlp --data digits --epochs 2 --accelerator cpu --devices 2 --no-progress --name ddpnb -o run",
        "print(run.ref, run.version.card.hparams['strategy'])"]])
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert "ddpnb:v1" in text and "DDP" in text


@pytest.mark.parametrize("direct_steps", [True, False])
def test_several_batches_per_lightning_step_make_the_same_updates(monkeypatch, direct_steps):
    # On one device aimass.train hands Lightning chunks of batches and steps once per batch (TaskModule), calling
    # backward and the optimizer itself where Lightning's wrapper would add nothing (direct_steps), and validates
    # outside Lightning's loop; a user callback turns all that off. Both must end at the same weights, count the
    # same optimizer steps and report the same validation metrics.
    import lightning as L
    import aimass.models
    if not direct_steps: monkeypatch.setattr(aimass.models, "plain_lightning_step", lambda trainer, module: False)
    class CountSteps(L.Callback):
        def on_train_end(self, trainer, pl_module): self.steps = trainer.global_step
    counter = CountSteps()
    chunked = train("mlp", "digits", epochs=3, batch_size=16, name="chunked", progress=False)
    plain = train("mlp", "digits", epochs=3, batch_size=16, name="plain", progress=False, callbacks=[counter])
    a, b = (read_state_dict(r.version.path/"weights.safetensors") for r in (chunked, plain))
    assert a.keys() == b.keys()
    for k in a: np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, err_msg=k)
    assert list(chunked.history.columns) == list(plain.history.columns) == ["epoch", "train_loss", "val_loss", "val_acc", "val_f1"]
    np.testing.assert_allclose(chunked.history.to_numpy(), plain.history.to_numpy(), rtol=1e-5)
    from aimass.data import load_data, split
    expected = 3 * -(-len(split(load_data("digits"), seed=0).train.y) // 16)
    chunked_steps = torch.load(chunked.run_dir/"checkpoints"/"last.ckpt", weights_only=True)["global_step"]
    assert counter.steps == chunked_steps == expected


@pytest.mark.parametrize("precision", ["64-true", "bf16-true", "bf16-mixed"])
def test_other_precisions_validate_and_step_alike_on_both_paths(precision):
    # The single-device path validates outside Lightning's loop: inputs must still get the precision's dtype
    # (float64, bfloat16) and autocast, as Lightning's loop gives them.
    import lightning as L
    fast = train("mlp", "iris", epochs=2, precision=precision, name="fast", progress=False)
    slow = train("mlp", "iris", epochs=2, precision=precision, name="slow", progress=False, callbacks=[L.Callback()])
    np.testing.assert_allclose(fast.history.to_numpy(), slow.history.to_numpy(), rtol=1e-5)
    assert fast.test_metrics == slow.test_metrics


@pytest.mark.parametrize("fast_path", [True, False])
def test_last_checkpoint_is_the_last_epoch_and_best_is_the_lowest_validation_loss(fast_path):
    # Random labels: the model memorizes the training rows and the validation loss rises after its first epochs,
    # so the best epoch is not the last. last.ckpt must still hold the last epoch (where resume starts), best.ckpt
    # the lowest validation loss, and the registered weights must be the best ones.
    import lightning as L
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(400, 20)).astype(np.float32), rng.integers(0, 3, 400)
    callbacks = None if fast_path else [L.Callback()]  # any user callback takes Lightning's own loops
    run = train("mlp", (X, y), epochs=8, lr=1e-2, name="memorize", progress=False, callbacks=callbacks)
    best_epoch = int(run.history.val_loss.idxmin()) + 1
    assert best_epoch < 8
    ck = run.run_dir/"checkpoints"
    last, best = (torch.load(ck/f, weights_only=True) for f in ("last.ckpt", "best.ckpt"))
    assert last["epoch"] == 7 and best["epoch"] == best_epoch - 1
    assert last["global_step"] == 8 * best["global_step"] // best_epoch
    assert not (ck/"last.ckpt").is_symlink() and not (ck/"best.ckpt").is_symlink()
    assert_registered_weights_are(run, best)
    assert run.version.card.run["checkpoint"] == str(ck/"best.ckpt")


@pytest.mark.parametrize("fast_path", [True, False])
def test_early_stopping_ends_after_patience_epochs_without_improvement(fast_path):
    import lightning as L
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(400, 20)).astype(np.float32), rng.integers(0, 3, 400)
    run = train("mlp", (X, y), epochs=30, lr=1e-2, early_stopping=2, name="patience", progress=False,
                callbacks=None if fast_path else [L.Callback()])
    assert run.status == "early-stopped"
    best = int(run.history.val_loss.idxmin()) + 1
    assert len(run.history) == best + 2 < 30  # two epochs without a new low, then stop
    assert_registered_weights_are(run, torch.load(run.run_dir/"checkpoints"/"best.ckpt", weights_only=True))
