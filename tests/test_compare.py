"""compare: k-fold leaderboard of table templates and LightGBM on a real table with a categorical column and missing
values; register keeps the best; bad metric names list the valid ones; the magic and the CLI parse it."""
import numpy as np, pandas as pd, pytest
import aimass
from aimass.core import AimassError


def penguins_like(n=120, seed=0) -> pd.DataFrame:
    "iris rows with a categorical column (island) and missing values in a number and in the category."
    from sklearn.datasets import load_iris
    df = load_iris(as_frame=True).frame.sample(n, random_state=seed).reset_index(drop=True)
    df.columns = ["sepal_l", "sepal_w", "petal_l", "petal_w", "species"]
    rng = np.random.default_rng(seed)
    df["island"] = np.where(df.species == 0, "Torgersen", rng.choice(["Biscoe", "Dream"], n))
    df.loc[rng.choice(n, 10, replace=False), "sepal_w"] = np.nan
    df.loc[rng.choice(n, 8, replace=False), "island"] = None
    df["species"] = np.array(["Adelie", "Chinstrap", "Gentoo"])[df.species]
    return df


@pytest.mark.slow
def test_three_fold_leaderboard_registers_the_best():
    board = aimass.compare(penguins_like(), target="species", models="linear,lightgbm", folds=3, epochs=8,
                           register="penguins", progress=False)
    t = board.table
    assert set(t.model) == {"linear", "lightgbm"} and len(board.scores) == 6
    assert t.accuracy_mean.between(0.4, 1).all() and t.accuracy_std.between(0, 0.3).all() and t.accuracy_mean.max() > 0.85
    assert (t.fit_s > 0).all() and (t.predict_us_per_row > 0).all()
    assert board.version.ref == "penguins:v1" and aimass.load("penguins").card.model in (board.best, "lightgbm")
    html = board._repr_html_()
    assert "data:image/png;base64" in html and board.best in repr(board)


def test_bad_metric_lists_valid_ones():
    with pytest.raises(AimassError, match="use one of accuracy, f1"):
        aimass.compare(penguins_like(), target="species", metric="auc", progress=False)
    with pytest.raises(AimassError, match="use one of r2, mse, mae"):
        aimass.compare("diabetes", metric="accuracy", progress=False)
    with pytest.raises(AimassError, match="not cnn"): aimass.compare("iris", models="cnn")


def test_cli_and_magic_parse():
    from aimass.commands import verb_parser
    ns = verb_parser("compare").parse_args(["--data", "p.csv", "--target", "species", "--folds", "3", "--metric", "f1",
                                            "--register", "best", "--no-progress"])
    assert (ns.data, ns.target, ns.folds, ns.metric, ns.register, ns.progress) == ("p.csv", "species", 3, "f1", "best", False)
    assert "compare" in aimass.commands.VERBS if hasattr(aimass, "commands") else True
    from aimass.commands import VERBS
    assert VERBS["compare"] == "compare"


def test_magic_runs_a_tree_only_board(ip):
    board = ip.run_line_magic("aimass", "compare --data iris --models lightgbm --folds 2 --no-progress -o board")
    assert ip.user_ns["board"] is board and board.best == "lightgbm" and board.table.accuracy_mean[0] > 0.8
