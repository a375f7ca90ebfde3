"Training: resume, interrupts, NaN losses, global state, CSV data, init_from, several processes, the loop's choice."
import json, math, os, re, signal, subprocess, sys, textwrap, warnings
import numpy as np, pandas as pd, pytest, torch
from torch import nn
import lightning as L
from conftest import PYTHON, ROOT
from aimass.core import AimassError
from aimass.registry import Registry, load
from aimass import training
from aimass.training import LoopChoice, train
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


class OwnModule(L.LightningModule):
    "A LightningModule of the user's: Lightning's loops run its steps."
    def __init__(self, in_features, num_classes):
        super().__init__(); self.lin = nn.Linear(in_features, num_classes)
    def forward(self, x): return self.lin(x)
    def training_step(self, batch, batch_idx): return nn.functional.cross_entropy(self(batch[0]), batch[1])
    def configure_optimizers(self): return torch.optim.SGD(self.parameters(), lr=0.1)


def weights(ref): return read_state_dict(Registry().get(ref).file("weights.safetensors"))


def assert_registered_weights_are(run, checkpoint):
    registered = weights(run.ref)
    assert {"net." + k for k in registered} == set(checkpoint["state_dict"])
    for k, v in registered.items(): torch.testing.assert_close(v, checkpoint["state_dict"]["net." + k], rtol=0, atol=0)


@pytest.mark.slow
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


def penguins(n=150, seed=0) -> pd.DataFrame:
    "A small table with a numeric, a categorical and a class column, like penguins.csv."
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"bill": rng.normal(40, 5, n), "flipper": rng.normal(200, 10, n), "island": rng.choice(["a", "b", "c"], n)})
    df["species"] = np.where(df.bill + 0.1*df.flipper > 60, "gentoo", "adelie")
    return df


def test_resume_takes_the_runs_model_data_and_settings(tmp_path):
    # `%aimass train --name X --resume --epochs 4` passes only these: the run's model, data, target and settings are
    # read back from its run.json (it used to build the default mlp on digits and die in a size-mismatch traceback).
    csv = tmp_path/"penguins.csv"; penguins().to_csv(csv, index=False)
    first = train("linear", str(csv), target="species", epochs=2, batch_size=16, lr=0.05, seed=4, name="pengs", progress=False)
    more = train(name="pengs", resume=True, epochs=4, progress=False)
    assert (more.ref, more.run_dir, more.status, list(more.history.epoch)) == ("pengs:v2", first.run_dir, "completed", [1, 2, 3, 4])
    a, b = first.version.card, more.version.card
    assert b.spec == a.spec == {"template": "linear", "kwargs": {}} and b.data == a.data and b.target.name == "species"
    assert {k: b.hparams[k] for k in ("batch_size", "lr", "seed", "epochs")} == {"batch_size": 16, "lr": 0.05, "seed": 4, "epochs": 4}
    # training longer: the cosine schedule decays over the new total (restored as it was, it would climb back up)
    ck = torch.load(more.run_dir/"checkpoints"/"last.ckpt", weights_only=True)
    sch, lr = ck["lr_schedulers"][0], ck["optimizer_states"][0]["param_groups"][0]["lr"]
    assert sch["T_max"] == 4 and lr == pytest.approx(0.05*(1 + math.cos(math.pi*sch["last_epoch"]/4))/2)
    assert json.loads((first.run_dir/"run.json").read_text())["epochs"] == 4


def test_resume_refuses_settings_that_contradict_the_run_in_one_line(tmp_path):
    csv = tmp_path/"penguins.csv"; penguins().to_csv(csv, index=False)
    train("linear", str(csv), target="species", epochs=2, batch_size=16, name="pengs", progress=False)
    with pytest.raises(AimassError) as e:
        train("cnn", str(csv), target="species", name="pengs", resume=True, batch_size=64, epochs=4, hidden=8)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("Cannot resume run pengs/")
    assert "model=cnn (the run's: linear); hidden=8 (the run's: None); batch_size=64 (the run's: 16)" in msg
    for args, says in [({}, "has trained 2 epochs already (epochs=2)"), ({"epochs": 2}, "pass epochs above 2")]:
        with pytest.raises(AimassError, match=re.escape(says)): train(name="pengs", resume=True, **args)
    penguins(seed=1).to_csv(csv, index=False)  # the file changed since
    with pytest.raises(AimassError, match=r"data 'penguins.csv' with fingerprint \w+ \(the run's: \w+\)"):
        train(name="pengs", resume=True, epochs=4)
    assert list(Registry().list().version) == ["v1"]  # nothing was trained


def test_resume_of_data_given_in_memory_needs_the_same_data():
    df = penguins()
    train("linear", df, target="species", epochs=1, name="mem", progress=False)
    with pytest.raises(AimassError, match="trained on a DataFrame given in memory.*pass the same data again"):
        train(name="mem", resume=True, epochs=2)
    with pytest.raises(AimassError, match="fingerprint"): train(data=df.assign(bill=df.bill + 1), name="mem", resume=True, epochs=2)
    run = train(data=df, name="mem", resume=True, epochs=2, progress=False)  # the target comes from the run
    assert list(run.history.epoch) == [1, 2] and run.version.card.target.name == "species"


def test_resuming_a_run_without_run_json_with_other_settings_fails_in_one_line():
    # runs of an earlier aimass have no run.json: the arguments are taken as given, and a model that does not fit
    # the checkpoint is one line, not Lightning's size-mismatch traceback
    first = train("linear", "iris", epochs=1, name="old", progress=False)
    (first.run_dir/"run.json").unlink(missing_ok=True)
    with pytest.raises(AimassError, match=r"^The checkpoint .*last.ckpt does not fit this model \(.*\): resume with the model") as e:
        train("mlp", "digits", name="old", resume=True, epochs=2)
    assert "\n" not in str(e.value)


class RecordProgress:
    "A progress display that records what training tells it."
    def start(self, epochs, steps_per_epoch, first_epoch=0, history=None):
        self.started, self.epochs = (epochs, first_epoch, [r["epoch"] for r in history or []]), []
    def step(self): pass
    def poll(self): pass
    def epoch(self, row): self.epochs.append(row["epoch"])
    def close(self, status): self.status = status


def test_a_resumed_runs_display_gets_the_history_before_it(monkeypatch):
    train("linear", "iris", epochs=2, name="shown", progress=False)
    shown = RecordProgress()
    monkeypatch.setattr(training, "_progress", lambda progress, devices: shown)
    train("linear", "iris", epochs=4, name="shown", resume=True)
    assert (shown.started, shown.epochs, shown.status) == ((4, 2, [1, 2]), [3, 4], "completed")


def test_default_name_of_a_file_is_its_stem_and_a_classification_card_has_no_target_scale(tmp_path):
    csv = tmp_path/"penguins.csv"; penguins().to_csv(csv, index=False)
    run = train("linear", str(csv), target="species", epochs=1, progress=False)
    assert run.ref == "penguins-linear:v1"  # not penguins.csv-linear
    assert json.loads((run.version.path/"model.json").read_text())["target"] == {"name": "species"}
    assert list(load("penguins-linear").predict(penguins().head(3))) == list(run.model.predict(penguins().head(3)))
    reg = train("linear", "diabetes", epochs=1, progress=False)
    target = json.loads((reg.version.path/"model.json").read_text())["target"]
    assert target["name"] == "progression" and target["std"] > 1 and target["mean"] > 1  # regression: the scale the network predicts in


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


@pytest.mark.slow
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
    # plan had missing values in training, so a row may leave it out; spend had none, so it must be sent (null is imputed)
    assert list(loaded.outputs([{"tenure": 3, "spend": None}])[0]) == list(loaded.outputs([{"tenure": 3, "plan": None, "spend": None}])[0])
    with pytest.raises(AimassError, match=r"missing column\(s\) 'spend'"): loaded.predict([{"tenure": 3}])


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


@pytest.mark.slow
def test_two_process_ddp_on_cpu_from_a_script(tmp_path):
    script = tmp_path/"ddp_train.py"; script.write_text(DDP_SCRIPT)
    out = subprocess.run([PYTHON, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr[-3000:]
    result = [l for l in out.stdout.splitlines() if l.startswith("RESULT")]
    assert len(result) == 1 and result[0].split()[1] == "ddp:v1"  # only rank 0 registers
    hparams = Registry().get("ddp:v1").card.hparams
    assert hparams["strategy"] == "DDPStrategy"
    assert hparams["loop"]["batches_per_step"] == 1 and hparams["loop"]["reasons"] == ["2 processes (DDPStrategy) run Lightning's loops in step"]


@pytest.mark.slow
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


class CountSteps(L.Callback):
    "Epoch- and fit-level hooks only: training keeps the fast path."
    def __init__(self): self.epochs, self.steps, self.seen = 0, None, []
    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs += 1
        self.seen.append({k: float(trainer.callback_metrics[k]) for k in ("val_loss", "val_acc", "val_f1")})
    def on_train_end(self, trainer, pl_module): self.steps = trainer.global_step


class CountBackward(CountSteps):
    "Also watches every backward pass: chunks stay, but each step goes through Lightning's wrapper."
    def __init__(self): super().__init__(); self.backwards = 0
    def on_after_backward(self, trainer, pl_module): self.backwards += 1


class CountBatches(L.Callback):
    "Per-batch hooks: Lightning's loop must call them once per optimizer step."
    def __init__(self): self.starts, self.ends, self.sizes = 0, 0, set()
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx): self.starts += 1
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx): self.ends += 1; self.sizes.add(len(batch[1]))


def digits_rows():
    from aimass.data import load_data, split
    return len(split(load_data("digits"), seed=0).train.y)


def digits_steps(epochs, batch_size=32): return epochs * -(-digits_rows() // batch_size)


def last_step(run): return torch.load(run.run_dir/"checkpoints"/"last.ckpt", weights_only=True)["global_step"]


def aimass_notes(caught): return [str(w.message) for w in caught if str(w.message).startswith("aimass:")]


@pytest.mark.slow
@pytest.mark.parametrize("direct_steps", [True, False])
def test_several_batches_per_lightning_step_make_the_same_updates(direct_steps):
    # On one device aimass.train hands Lightning chunks of batches and steps once per batch (TaskModule), calling
    # backward and the optimizer itself where Lightning's wrapper would add nothing (direct_steps: a callback that
    # watches gradients keeps Lightning's wrapper), and validates outside Lightning's loop; batches_per_step=1 takes
    # Lightning's own loops. Both must end at the same weights, count the same optimizer steps and report the same
    # validation metrics.
    counter = CountSteps() if direct_steps else CountBackward()
    chunked = train("mlp", "digits", epochs=3, batch_size=16, name="chunked", progress=False, callbacks=[counter])
    plain = train("mlp", "digits", epochs=3, batch_size=16, name="plain", progress=False, batches_per_step=1)
    assert (chunked.loop.batches_per_step, chunked.loop.validation, chunked.loop.direct_steps) == (64, "one pass", direct_steps)
    assert (plain.loop.batches_per_step, plain.loop.validation, plain.loop.checkpoints) == (1, "lightning", "in place")
    a, b = (read_state_dict(r.version.path/"weights.safetensors") for r in (chunked, plain))
    assert a.keys() == b.keys()
    for k in a: np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, err_msg=k)
    assert list(chunked.history.columns) == list(plain.history.columns) == ["epoch", "train_loss", "val_loss", "val_acc", "val_f1"]
    np.testing.assert_allclose(chunked.history.to_numpy(), plain.history.to_numpy(), rtol=1e-5)
    expected = digits_steps(3, 16)
    assert counter.steps == last_step(chunked) == last_step(plain) == expected
    assert counter.epochs == 3
    if not direct_steps: assert counter.backwards == expected


@pytest.mark.slow
def test_an_epoch_level_callback_keeps_the_fast_path_and_is_called_every_epoch():
    # Any callback used to switch the whole fast path off, silently. One with epoch- and fit-level hooks only (and
    # Lightning's EarlyStopping) needs none of Lightning's per-batch or validation-loop hooks: it keeps the fast
    # path, no note is shown, and it sees every epoch's validation metrics.
    from lightning.pytorch.callbacks import EarlyStopping
    counter = CountSteps()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train("mlp", "digits", epochs=4, name="epochs", progress=False,
                    callbacks=[counter, EarlyStopping("val_loss", patience=10)])
    assert run.loop.fast and run.loop.reasons == [] and not aimass_notes(caught)
    assert counter.epochs == 4 and counter.steps == digits_steps(4)
    for k in ("val_loss", "val_acc", "val_f1"):
        np.testing.assert_allclose([row[k] for row in counter.seen], run.history[k], rtol=1e-6)
    assert run.version.card.hparams["loop"] == run.loop.to_dict()
    assert "loop: fast path" in repr(run)


@pytest.mark.slow
def test_a_per_batch_callback_is_called_once_per_optimizer_step_and_the_run_says_why():
    counter = CountBatches()
    with pytest.warns(UserWarning, match="CountBatches overrides on_train_batch_start, on_train_batch_end, so Lightning's loop runs one batch"):
        run = train("mlp", "digits", epochs=2, name="batches", progress=False, callbacks=[counter])
    assert counter.starts == counter.ends == last_step(run) == digits_steps(2)
    assert counter.sizes == {32, digits_rows() % 32}  # single batches (the epoch's last one shorter), never chunks
    assert (run.loop.batches_per_step, run.loop.validation, run.loop.checkpoints) == (1, "one pass", "background")
    assert run.loop.reasons == ["CountBatches overrides on_train_batch_start, on_train_batch_end"]
    card = Registry().get(run.ref).card
    assert card.hparams["loop"]["reasons"] == run.loop.reasons and card.hparams["batches_per_step"] == "auto"
    assert "CountBatches overrides on_train_batch_start" in repr(run) and "CountBatches overrides" in run._repr_html_()
    # a number of batches per step is a choice: chunks, which the callback sees, and no note
    counter = CountBatches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train("mlp", "digits", epochs=2, name="batches", progress=False, callbacks=[counter], batches_per_step=8)
    assert not aimass_notes(caught) and run.loop.batches_per_step == 8 and run.loop.direct_steps
    assert counter.ends == 2 * -(-digits_steps(1) // 8) and last_step(run) == digits_steps(2)
    assert run.loop.reasons == ["CountBatches overrides on_train_batch_start, on_train_batch_end: it sees chunks of 8 batches"]


def test_a_validation_loop_callback_gets_lightnings_validation_loop():
    class WatchValidation(L.Callback):
        calls = 0
        def on_validation_epoch_end(self, trainer, pl_module): self.calls += 1
    watch = WatchValidation()
    with pytest.warns(UserWarning, match="WatchValidation overrides on_validation_epoch_end, so validation runs in Lightning's loop"):
        run = train("mlp", "digits", epochs=3, name="watched", progress=False, callbacks=[watch])
    assert watch.calls == 3
    assert (run.loop.batches_per_step, run.loop.validation, run.loop.direct_steps) == (64, "lightning", True)


def test_batches_per_step_1_forces_lightnings_own_loops():
    class Inspect(L.Callback):
        "Epoch-level: what the loop looked like from inside."
        def on_train_epoch_end(self, trainer, pl_module):
            self.seen = (pl_module.automatic_optimization, trainer.num_training_batches, sum(trainer.num_val_batches),
                         type(trainer.strategy.checkpoint_io).__name__)
    fast, plain = Inspect(), Inspect()
    train("mlp", "digits", epochs=1, name="fast", progress=False, callbacks=[fast])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = train("mlp", "digits", epochs=1, name="plain", progress=False, callbacks=[plain], batches_per_step=1)
    assert fast.seen == (False, -(-digits_steps(1) // 64), 0, "BackgroundCheckpointIO")
    assert plain.seen[0] is True and plain.seen[1] == digits_steps(1) and plain.seen[2] > 0 and plain.seen[3] == "TorchCheckpointIO"
    assert run.loop == LoopChoice(1, "lightning", "in place", False, ["batches_per_step=1: Lightning's own loops"], 1)
    assert not aimass_notes(caught)


def test_bad_batches_per_step():
    with pytest.raises(AimassError, match="'auto' or a whole number"): train("mlp", "iris", batches_per_step=0)
    with pytest.raises(AimassError, match="'auto' or a whole number"): train("mlp", "iris", batches_per_step="fast")
    with pytest.raises(AimassError, match="needs aimass's task wrapper on one device"):
        train(OwnModule, "iris", batches_per_step=4, progress=False)
    run = train(OwnModule, "iris", epochs=2, progress=False)  # auto: Lightning's loops run its steps
    assert run.loop.batches_per_step == 1 and run.loop.validation == "lightning" and run.loop.checkpoints == "background"


@pytest.mark.parametrize("precision", ["64-true", "bf16-true", "bf16-mixed"])
def test_other_precisions_validate_and_step_alike_on_both_paths(precision):
    # The single-device path validates outside Lightning's loop: inputs must still get the precision's dtype
    # (float64, bfloat16) and autocast, as Lightning's loop gives them.
    fast = train("mlp", "iris", epochs=2, precision=precision, name="fast", progress=False)
    slow = train("mlp", "iris", epochs=2, precision=precision, name="slow", progress=False, batches_per_step=1)
    assert fast.loop.validation == "one pass" and slow.loop.validation == "lightning"
    np.testing.assert_allclose(fast.history.to_numpy(), slow.history.to_numpy(), rtol=1e-5)
    assert fast.test_metrics == slow.test_metrics


@pytest.mark.parametrize("fast_path", [True, False])
def test_last_checkpoint_is_the_last_epoch_and_best_is_the_lowest_validation_loss(fast_path):
    # Random labels: the model memorizes the training rows and the validation loss rises after its first epochs,
    # so the best epoch is not the last. last.ckpt must still hold the last epoch (where resume starts), best.ckpt
    # the lowest validation loss, and the registered weights must be the best ones.
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(400, 20)).astype(np.float32), rng.integers(0, 3, 400)
    run = train("mlp", (X, y), epochs=8, lr=1e-2, name="memorize", progress=False, batches_per_step="auto" if fast_path else 1)
    assert run.loop.fast == fast_path
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
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(400, 20)).astype(np.float32), rng.integers(0, 3, 400)
    run = train("mlp", (X, y), epochs=30, lr=1e-2, early_stopping=2, name="patience", progress=False,
                batches_per_step="auto" if fast_path else 1)
    assert run.loop.fast == fast_path
    assert run.status == "early-stopped"
    best = int(run.history.val_loss.idxmin()) + 1
    assert len(run.history) == best + 2 < 30  # two epochs without a new low, then stop
    assert_registered_weights_are(run, torch.load(run.run_dir/"checkpoints"/"best.ckpt", weights_only=True))


def _iris_with_missing_targets(tmp_path, n_missing=3):
    from sklearn.datasets import load_iris
    df = load_iris(as_frame=True).frame.rename(columns={"target": "species"})
    df.loc[:n_missing - 1, "species"] = np.nan
    df.to_csv(path := tmp_path/"iris.csv", index=False)
    return path


def test_missing_targets_are_dropped_and_counted_or_refused_by_the_flag(tmp_path):
    path = _iris_with_missing_targets(tmp_path)
    with pytest.raises(AimassError, match=r"^3 of 150 rows have no target \('species'\): fill or remove them, or pass missing_target='drop'"):
        train("linear", path, target="species", missing_target="error", epochs=1, progress=False)
    with pytest.warns(UserWarning, match="Left out 3 of 150 rows"):
        run = train("linear", path, target="species", epochs=1, progress=False)
    s = run.data_summary
    assert (s.rows, s.dropped, s.kinds, sum(s.splits.values())) == (147, 3, {"number": 4}, 147)
    assert run.version.card.data["summary"]["dropped"] == 3 and "3 left out: no target" in repr(s)


def test_the_run_and_card_say_which_epochs_weights_were_kept_and_scored():
    run = train("mlp", "iris", epochs=4, lr=0.05, progress=False)
    best = int(run.history.val_loss.idxmin()) + 1
    assert (run.epoch, run.weights) == (best, "best val_loss")
    assert (run.version.card.run["epoch"], run.version.card.run["weights"]) == (best, "best val_loss")
    assert f"weights of epoch {best} (best val_loss)" in repr(run)
    # the reported test metrics are those weights': the registered model scores the same on the test split
    from aimass.data import load_data, score, split
    test = split(load_data("iris"), 0.15, 0.15, 0).test
    assert score("classification", load(run.ref).outputs(test.X), test.y) == pytest.approx(run.test_metrics)


@pytest.mark.slow
def test_register_false_registers_nothing_until_asked_also_from_another_process():
    run = train("linear", "iris", epochs=1, register=False, progress=False, name="later")
    assert run.version is None and run.model.predict([[5.1, 3.5, 1.4, 0.2]]).shape == (1,)
    with pytest.raises(AimassError, match="No model named 'later'"): Registry().get("later")
    code = f"from aimass.training import register_run; print(register_run({str(run.run_dir)!r}).ref)"
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=os.environ, check=True).stdout
    assert out.strip() == "later:v1" and Registry().get("later").card.run["dir"] == str(run.run_dir)
    with pytest.raises(AimassError, match="registered already, as later:v1"): run.register()


def test_no_register_and_missing_target_are_flags():
    from aimass.commands import verb_parser
    ns = verb_parser("train").parse_args(["mlp", "--no-register", "--missing-target", "error"])
    assert (ns.register, ns.missing_target) == (False, "error")


def _saves(monkeypatch):
    "Spy on the background checkpoint writer (the real one writes): (file name, epoch) of each checkpoint, in order."
    saved, real = [], training.BackgroundCheckpointIO.save_checkpoint
    def save(self, checkpoint, path, storage_options=None):
        saved.append((os.path.basename(path), checkpoint["epoch"]))
        return real(self, checkpoint, path, storage_options)
    monkeypatch.setattr(training.BackgroundCheckpointIO, "save_checkpoint", save)
    return saved


def assert_same(a, b, where=""):
    "Nested checkpoint contents equal: tensors exactly, the rest by value."
    if isinstance(a, torch.Tensor): torch.testing.assert_close(a, b, rtol=0, atol=0, msg=where)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a: assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)): assert_same(x, y, f"{where}/{i}")
    else: assert a == b, where


def test_a_short_run_writes_its_checkpoints_at_the_end_and_they_are_the_every_epoch_ones(monkeypatch):
    # A run shorter than _CHECKPOINT_EVERY_S keeps its epochs in memory and writes best.ckpt and last.ckpt once, at the
    # end: the same files, byte for byte in what they hold, as writing after every epoch.
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(400, 20)).astype(np.float32), rng.integers(0, 3, 400)
    saved = _saves(monkeypatch)
    monkeypatch.setattr(training, "_CHECKPOINT_EVERY_S", 1e9)  # however slow the machine, no write is due before the end
    short = train("mlp", (X, y), epochs=8, lr=1e-2, name="short", progress=False)
    best_epoch = int(short.history.val_loss.idxmin()) + 1
    assert best_epoch < 8 and short.epoch == best_epoch
    assert saved == [("best.ckpt", best_epoch - 1), ("last.ckpt", 7)]
    saved.clear()
    monkeypatch.setattr(training, "_CHECKPOINT_EVERY_S", 0.0)  # as before: every epoch
    every = train("mlp", (X, y), epochs=8, lr=1e-2, name="every", progress=False)
    assert saved == [("last.ckpt", e) for e in range(8)]
    for f in ("last.ckpt", "best.ckpt"):
        a, b = (torch.load(r.run_dir/"checkpoints"/f, weights_only=True) for r in (short, every))
        assert_same(a, b, f)  # weights, optimizer, loops, callbacks' states
    torch.testing.assert_close(weights(short.ref), weights(every.ref), rtol=0, atol=0)
    assert short.test_metrics == every.test_metrics and short.epoch == every.epoch


def test_stop_writes_the_epochs_kept_in_memory(monkeypatch):
    # Stop in the third epoch of a short run: last.ckpt is the second epoch's, so resume starts there.
    class StopInThirdEpoch(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:  # the Stop button sets AimassCallback's flag
                next(c for c in trainer.callbacks if isinstance(c, training.AimassCallback)).stop.set()
    saved = _saves(monkeypatch)
    monkeypatch.setattr(training, "_CHECKPOINT_EVERY_S", 1e9)  # nothing written before the Stop
    run = train("mlp", "iris", epochs=6, name="stopped", progress=False, callbacks=[StopInThirdEpoch()])
    assert run.status == "stopped" and len(run.history) == 2
    assert saved == [("last.ckpt", 1)] and torch.load(run.run_dir/"checkpoints"/"last.ckpt", weights_only=True)["epoch"] == 1
