"""A churn-like table for the drift tests: seeded draws of one distribution, and the same shifted on purpose."""
import numpy as np
import pandas as pd


def churn(n, seed=0, older=0.0, plans=(0.5, 0.3, 0.2), missing_income=0.0):
    """`n` customers: age, income, plan, and `left` (the target). `older` adds years to every age, `plans` sets the
    plans' shares, `missing_income` blanks that share of incomes."""
    from aimass.data import Dataset
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"age": (rng.normal(40, 10, n) + older).round(), "income": rng.lognormal(10, 0.5, n).round(2),
                      "plan": rng.choice(["basic", "plus", "pro"], n, p=list(plans))})
    y = ((X.age > 40) ^ (X.plan == "pro")).to_numpy(np.int64)
    if missing_income: X.loc[rng.random(n) < missing_income, "income"] = np.nan
    return Dataset(X, y, "classification", ["stay", "leave"], "churn", "left")


def churn_version(name="churn", n=3000, epochs=2):
    "A small mlp trained on `churn(n)` (tests/factory.make_version), with the training statistics aimass.train keeps."
    from aimass.data import split
    from aimass.inference import Runner
    from aimass.monitoring import reference_files
    from factory import make_version
    ds = churn(n)
    mv = make_version("mlp", data=ds, name=name, epochs=epochs)
    sp = split(ds, seed=0)  # make_version's split
    out_v = Runner(mv.path, "torch").outputs(sp.val.X)
    (mv.path/"reference.json").write_text(reference_files(sp.train.X, mv.card.preprocessing(), "classification", ds.classes, out_v)["reference.json"])
    return mv
