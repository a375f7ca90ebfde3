"""Train, version, export, benchmark and serve PyTorch models from a Jupyter cell.

The verbs are functions of this package: `aimass.train`, `aimass.export`, `aimass.bench`, `aimass.predict`,
`aimass.serve`, `aimass.loadtest`, `aimass.bundle`, `aimass.tune`, `aimass.compare`, `aimass.report`, `aimass.diff`, with the registry's `aimass.load`, `aimass.promote`,
`aimass.rollback` and friends. `%load_ext aimass` gives the same verbs as `%aimass VERB`; `aimass VERB` from a shell."""
__version__ = "0.1.0"

# Each name is imported from its layer on first use, so `import aimass` and `%load_ext aimass` stay fast (no torch).
# Layer modules are named for what they hold (`aimass.training`), never for a verb, so `aimass.train` is the function.
_API = {
    # verbs: also `%aimass VERB` and `aimass VERB`, with flags from their signatures (see aimass.commands)
    "train": "training", "export": "exporting", "bench": "benchmark", "predict": "inference",
    "serve": "launcher", "servers": "launcher", "stop": "launcher", "loadtest": "loadtesting", "bundle": "deployment",
    "diagnose": "observability", "Diagnosis": "observability",  # what went wrong on a server lately (its metrics: GET /metrics)
    "list_models": "registry", "promote": "registry", "rollback": "registry", "delete": "registry", "doctor": "registry",
    # search, compare and report: Optuna studies, a cross-validated leaderboard, evaluation reports, two versions side by side
    "tune": "tuning", "compare": "leaderboard", "report": "reporting", "diff": "reporting",
    # drift: new rows (a file, or the server's sampled traffic) against the training data
    "drift": "monitoring", "monitor": "monitoring", "DriftReport": "monitoring",
    # the registry and its records
    "load": "registry", "show": "registry", "set_alias": "registry", "Registry": "registry", "ModelCard": "registry",
    # data, and the objects the verbs return
    "load_data": "data", "load_images": "images", "open_image": "images", "ImageProcessing": "images",
    "load_texts": "texts", "TextTokenizer": "texts",
    "Run": "training", "register_run": "training", "ExportReport": "exporting", "BenchReport": "benchmark",
    "Predictions": "inference", "Server": "launcher", "ServerConfig": "launcher", "LoadTestReport": "loadtesting",
    "Bundle": "deployment", "TuneResult": "tuning", "Leaderboard": "leaderboard", "EvaluationReport": "reporting",
    "VersionDiff": "reporting",
    # gradient-boosted trees (LightGBM) as versions like any other: train("lightgbm", ...) fits one
    "fit_tree": "trees", "TreeModel": "trees",
    # image models: pixels in (PixelInput first), pretrained backbones with a new head
    "PixelInput": "models", "pixel_net": "models", "freeze": "models",
    # text models: int64 tokens in (TokenInput first), pretrained sequence classifiers with a new head
    "TokenInput": "models", "token_net": "models",
}
__all__ = list(_API)

def __getattr__(name):
    if name not in _API: raise AttributeError(f"module 'aimass' has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f"aimass.{_API[name]}"), name)
    globals()[name] = value  # found once, then an ordinary attribute
    return value

def __dir__(): return sorted({*globals(), *_API})

def load_ipython_extension(ipython):
    "`%load_ext aimass`: register the `%aimass` and `%%aimass` magics."
    from aimass.magics import load_ipython_extension as _load
    _load(ipython)
