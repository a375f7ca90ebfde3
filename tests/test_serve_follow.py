"""Endpoints that follow an alias (promote and roll back under load, 0 failed requests) and several models on one server."""
import os, threading, time
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow  # each test runs servers for several seconds, some under load

from aimass.core import AimassError
from aimass.registry import Registry
from aimass import launcher as S
from aimass.loadtesting import loadtest
from factory import shared_home, wait_for


@shared_home(scope="module")
def home(folder):
    "digits v1 and v2 (different seeds, both exported), v3 (not exported), and a tabular model with a categorical column."
    from aimass.training import train
    from aimass.exporting import export
    for seed in (0, 1):
        train("mlp", "digits", epochs=1, seed=seed, name="digits", progress=False)
        export(f"digits:v{seed + 1}")
    train("mlp", "digits", epochs=1, seed=2, name="digits", progress=False)  # v3: no ONNX export
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"bill": rng.normal(45, 5, 200).round(1), "island": rng.choice(["Biscoe", "Dream"], 200)})
    df["heavy"] = np.where((df.bill > 45) ^ (df.island == "Dream"), "yes", "no")
    df.loc[::9, "bill"] = np.nan
    train("mlp", df, target="heavy", epochs=2, name="pengs", progress=False)
    export("pengs")


def _rows(n=64):
    from aimass.data import load_data
    return load_data("digits").X[:n].reshape(n, -1).tolist()


def _probs(preds):
    return np.array([[p["probabilities"][c] for c in sorted(p["probabilities"], key=int)] for p in preds])


@pytest.mark.serial
def test_promote_and_rollback_under_load_drop_nothing(home, ip):
    reg = Registry()
    reg.set_alias("digits", "production", 1)
    expected = {v: reg.load(f"digits:v{v}").outputs(np.array(_rows(), np.float32).reshape(-1, 1, 8, 8)) for v in (1, 2)}
    assert not np.allclose(expected[1], expected[2], atol=1e-3), "the two versions must differ for this test to mean anything"
    srv = S.serve("digits@production", follow_interval=0.2)
    try:
        info = srv.info()
        assert (info["version"], info["follows"], info["serving"]) == (1, "digits@production", ["digits:v1"])
        np.testing.assert_allclose(_probs(srv.predict(_rows())), expected[1], atol=1e-5)
        out = {}
        load = threading.Thread(target=lambda: out.update(r=loadtest(srv, concurrency=8, duration=9, requests=None, progress=False)))
        load.start()
        time.sleep(2)
        ip.run_line_magic("aimass", "promote digits v2 --alias production")  # the magic, as a user would
        wait_for(lambda: srv.info()["serving"] == ["digits:v2"])
        assert srv.info()["version"] == 2
        np.testing.assert_allclose(_probs(srv.predict(_rows())), expected[2], atol=1e-5)
        time.sleep(2)
        ip.run_line_magic("aimass", "rollback digits")
        wait_for(lambda: srv.info()["serving"] == ["digits:v1"])
        assert srv.info()["version"] == 1 and srv.serving() == {"digits": "digits:v1"}
        np.testing.assert_allclose(_probs(srv.predict(_rows())), expected[1], atol=1e-5)
        load.join(60)
        rep = out["r"]
        print(rep)
        assert rep.errors == {}, rep.errors
        assert rep.ok > 200
        assert set(rep.served_by) == {"digits:v1", "digits:v2"}
        order = np.argsort(rep.started)
        seq = rep.versions[order]
        tenth = len(seq) // 10
        assert set(seq[:tenth]) == {"digits:v1"} and set(seq[-tenth:]) == {"digits:v1"}  # v1, then v2, then v1 again
        history = reg.alias_history("digits")
        history = history[history.alias == "production"]
        assert history.to_version.tolist()[-3:] == [1, 2, 1] and history.action.tolist()[-1] == "rollback"
        assert srv.stats()["errors"] == 0
    finally:
        srv.stop()


def test_a_version_that_cannot_load_is_not_switched_to(home):
    reg = Registry()
    reg.set_alias("digits", "staging", 1)
    srv = S.serve("digits@staging", backend="onnx", follow_interval=0.2)
    try:
        reg.set_alias("digits", "staging", 3)  # v3 has no ONNX export: the server must keep serving v1 and say why
        wait_for(lambda: srv.info()["follow_error"] is not None)
        info = srv.info()
        assert info["version"] == 1 and "no ONNX export" in info["follow_error"]
        assert len(srv.predict(_rows(2))) == 2
        from aimass.exporting import export
        export("digits:v3")  # fixed: the server picks it up without being told
        wait_for(lambda: srv.info()["serving"] == ["digits:v3"])
        assert srv.info()["follow_error"] is None
        assert "digits:v3" in srv.logs(200)
    finally:
        srv.stop()


def test_pinned_refs_do_not_follow(home):
    reg = Registry()
    reg.set_alias("digits", "pinned", 1)
    srv = S.serve("digits@pinned", follow=False, follow_interval=0.1)
    try:
        reg.set_alias("digits", "pinned", 2)
        time.sleep(1.0)
        info = srv.info()
        assert info["version"] == 1 and "follows" not in info
    finally:
        srv.stop()
    with pytest.raises(AimassError, match="fixed version"): S.serve("digits:v1", follow=True)


def test_several_models_on_one_server(home):
    reg = Registry()
    reg.set_alias("digits", "production", 2)
    srv = S.serve(["digits@production", "pengs"])
    try:
        assert set(srv.models) == {"digits", "pengs"}
        with pytest.raises(AimassError, match="pass model="): srv.predict(_rows(1))
        digits = srv.predict(_rows(), model="digits")
        np.testing.assert_allclose(_probs(digits), reg.load("digits:v2").outputs(np.array(_rows(), np.float32).reshape(-1, 1, 8, 8)), atol=1e-5)
        rows = [{"bill": 50.0, "island": "Dream"}, {"bill": None, "island": "Biscoe"}, {"bill": 41.0, "island": None}]
        pengs = srv.predict(rows, model="pengs")
        assert [p["label"] for p in pengs] == list(reg.load("pengs").predict(pd.DataFrame(rows)))
        # each model has its own path, info and counters; the paths follow TF Serving / KServe v1
        r = httpx.post(srv.url + "/v1/models/pengs:predict", json={"instances": rows})
        assert r.status_code == 200 and r.headers["x-model-version"] == "pengs:v1"
        assert httpx.get(srv.url + "/v1/models/digits/info").json()["ref"] == "digits:v2"  # its details; /v1/models/digits is readiness
        assert set(httpx.get(srv.url + "/info").json()["models"]) == {"digits", "pengs"}
        assert httpx.post(srv.url + "/predict", json={"instances": rows}).status_code == 404
        bad = httpx.post(srv.url + "/v1/models/pengs:predict", json={"instances": [{"bill": "long", "island": "Dream"}]})
        assert bad.status_code == 400 and "bill" in bad.json()["detail"]
        rep = loadtest(srv, model="pengs", requests=200, concurrency=4, progress=False)
        assert rep.errors == {} and rep.served_by == {"pengs:v1": 200}
        wait_for(lambda: srv.stats()["by_path"].get("/v1/models/pengs:predict", 0) >= 202)  # counters are saved every 0.25 s
        assert srv.stats()["by_path"]["/v1/models/digits:predict"] >= 1
        # the digits model follows its alias on a shared server too
        reg.set_alias("digits", "production", 1)
        wait_for(lambda: srv.serving()["digits"] == "digits:v1")
        assert srv.serving()["pengs"] == "pengs:v1"
    finally:
        srv.stop()


def test_several_models_need_distinct_names(home):
    with pytest.raises(AimassError, match="name them"): S.serve(["digits:v1", "digits:v2"])
    srv = S.serve({"digits": "digits:v1", "digits-canary": "digits:v2"})
    try:
        assert srv.predict(_rows(1), model="digits-canary")[0]["label"] in [str(i) for i in range(10)]
        assert S.stop("digits-canary") == [srv.name]
    finally:
        if srv.alive: srv.stop()
