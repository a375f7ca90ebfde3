"""tune: the search space's text form, the metric, the stored study (resume, names), pruning, the registered best trial,
and the verb through %aimass and the command line."""
import numpy as np
import pytest

import aimass
from aimass.core import AimassError
from aimass.tuning import Param, parse_space, search_space, resolve_metric, study_path, study_storage, tune


@pytest.fixture(scope="module")
def small():
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    return X[:500].astype("float32"), y[:500]


# quick tier: no training

@pytest.mark.parametrize("text,expected", [
    ("lr=1e-4..1e-1:log", {"lr": Param("float", 1e-4, 0.1, True)}),
    ("depth=1..3", {"depth": Param("int", 1, 3)}),
    ("hidden=[64,128,256],dropout=0..0.5", {"hidden": Param("choice", choices=[64, 128, 256]), "dropout": Param("float", 0, 0.5)}),
    ("optimizer=[adamw, sgd], batch_size=32", {"optimizer": Param("choice", choices=["adamw", "sgd"]), "batch_size": Param("fixed", choices=[32])}),
])
def test_space_parses(text, expected):
    assert parse_space(text) == expected


@pytest.mark.parametrize("text", ["lr", "lr 1e-4..1e-1", "lr=1e-1..1e-4", "lr=..1", "hidden=[64,128", "hidden=[]",
                                  "lr=a..b", "lr=1e-4..1e-1:cubic", "=3"])
def test_bad_space_shows_the_form(text):
    with pytest.raises(AimassError, match=r"NAME=LOW\.\.HIGH\[:log\].*like \"lr=1e-4"): parse_space(text)


def test_log_range_needs_positive_bounds():
    with pytest.raises(AimassError, match="above 0"): parse_space("weight_decay=0..1e-2:log")


def test_space_defaults_overrides_and_unknown_names():
    assert set(search_space("mlp")) == {"lr", "batch_size", "weight_decay", "width", "depth", "dropout"}
    assert set(search_space("linear")) == {"lr", "batch_size", "weight_decay"}
    assert "warmup" in search_space("hf:prajjwal1/bert-tiny")
    sp = search_space("mlp", "hidden=[64,128,256],lr=1e-3..1e-2", {"dropout": 0.2})
    assert "width" not in sp and "dropout" not in sp and sp["lr"] == Param("float", 1e-3, 1e-2)
    with pytest.raises(AimassError, match="searched are lr, batch_size, weight_decay, width, depth, dropout"):
        search_space("mlp", "momentum=0..1")


def test_metric_names_and_directions():
    assert resolve_metric() == ("val_loss", "minimize")
    assert resolve_metric("val_accuracy") == ("val_acc", "maximize")
    assert resolve_metric("val_mae", task="regression") == ("val_mae", "minimize")
    assert resolve_metric("val_acc", "minimize") == ("val_acc", "minimize")
    with pytest.raises(AimassError, match="classification: val_loss, val_acc, val_f1; regression: val_loss, val_mse"):
        resolve_metric("val_auc")
    with pytest.raises(AimassError, match="for regression: use one of val_loss, val_mse, val_mae, val_r2"):
        resolve_metric("val_acc", task="regression")


def test_bad_input_fails_before_any_trial(small):
    with pytest.raises(AimassError, match="no metric"): tune("mlp", small, metric="val_auc", name="bad", progress=False)
    with pytest.raises(AimassError, match="Cannot read the search space"): tune("mlp", small, space="lr:1e-3", name="bad", progress=False)
    with pytest.raises(AimassError, match="both given a value and searched"): tune("mlp", small, space="lr=1e-3..1e-2", lr=1e-3, progress=False)
    with pytest.raises(AimassError, match="trials must be"): tune("mlp", small, trials=0, progress=False)


def test_help_through_the_magic_and_the_cli():
    from aimass.commands import HelpRequested, run
    for prog in ("%aimass", "aimass"):
        with pytest.raises(HelpRequested) as h: run("tune --help", namespace={} if prog == "%aimass" else None, prog=prog)
        text = " ".join(h.value.text.split())
        assert "--space SPACE" in text and "--resume" in text and "--trials TRIALS trials to run" in text and "--no-prune" in text
    from aimass.commands import verb_parser
    ns = verb_parser("tune").parse_args(["mlp", "--trials", "3", "--space", "lr=1e-4..1e-1:log", "--resume", "--metric", "val_acc"])
    assert (ns.model, ns.trials, ns.space, ns.resume, ns.metric) == ("mlp", 3, "lr=1e-4..1e-1:log", True, "val_acc")


# slow tier: real studies on 500 rows of digits, 2-3 epochs a trial

@pytest.mark.slow
def test_study_registers_the_best_then_resumes(small):
    t = tune("mlp", small, trials=3, epochs=2, space="lr=1e-3..3e-2:log", metric="val_acc", name="t1", progress=False, prune=False)
    df = t.trials
    assert len(df) == 3 and {"number", "lr", "batch_size", "width", "depth", "dropout", "value", "state", "duration_s"} <= set(df.columns)
    assert (df.state == "COMPLETE").all() and t.best_value == df.value.max()
    card = t.version.card
    assert t.version.ref == "t1:v1" and card.hparams["lr"] == t.best_params["lr"] and card.hparams["batch_size"] == t.best_params["batch_size"]
    assert card.hparams["tune"]["study"] == "t1" and card.hparams["tune"]["trial"] == t.best_trial.number
    assert card.hparams["tune"]["value"] == t.best_value and study_path("t1").exists()
    assert "TuneResult(t1, completed: 3 complete" in repr(t) and "<img" in t._repr_html_()
    with pytest.raises(AimassError, match="pass --resume"): tune("mlp", small, trials=1, epochs=2, name="t1", progress=False)
    t2 = tune("mlp", small, trials=1, epochs=2, space="lr=1e-3..3e-2:log", metric="val_acc", name="t1", resume=True, progress=False, prune=False)
    assert list(t2.trials.number) == [0, 1, 2, 3] and list(t2.trials.value[:3]) == list(df.value)
    assert t2.importance() and t2.plot_importance() is not None


@pytest.mark.slow
def test_pruning_prunes_bad_trials(small):
    # two good trials first (the median), then hopeless ones (a learning rate 1e4 times smaller): pruned after epoch 1
    t = tune("mlp", small, trials=5, epochs=3, space="lr=[1e-2,1e-2,1e-6],batch_size=32,width=64,depth=1,dropout=0.0,weight_decay=1e-6",
             name="t2", progress=False, register=False, seed=3)
    df = t.trials
    assert "PRUNED" in set(df.state), df
    assert (df[df.state == "PRUNED"].lr == 1e-6).all() and (df[df.state == "PRUNED"].epochs < 3).all()


@pytest.mark.slow
def test_interrupted_trial_is_failed_and_resume_goes_on(small):
    import optuna
    t = tune("mlp", small, trials=1, epochs=1, name="t3", progress=False, register=False)
    st = optuna.load_study(study_name="t3", storage=study_storage("t3"))
    st.ask()  # a trial whose process was killed: left RUNNING
    t2 = tune("mlp", small, trials=1, epochs=1, name="t3", resume=True, progress=False)
    assert list(t2.trials.state) == ["COMPLETE", "FAIL", "COMPLETE"] and t2.version is not None


@pytest.mark.slow
def test_magic_stores_the_result(small):
    from aimass.commands import run
    X, y = small
    result, out = run("tune mlp --data d --trials 2 --epochs 1 --space lr=1e-3..1e-2:log --name t4 --no-progress -o t",
                      namespace={"d": (X[:300], y[:300])}, prog="%aimass")
    assert out == "t" and type(result).__name__ == "TuneResult" and len(result.trials) == 2 and result.ref == "t4:v1"
