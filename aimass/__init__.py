__version__ = "0.1.0"

# Everything heavy (torch, lightning, onnx, litserve) is imported on first use, so `%load_ext aimass` stays fast.
import importlib as _importlib

_VERBS = {"train": "aimass.train", "export": "aimass.export", "bench": "aimass.bench", "predict": "aimass.predict",
          "serve": "aimass.serve", "loadtest": "aimass.loadtest", "bundle": "aimass.bundle"}
_FUNCS = {"load": "aimass.registry", "list_models": "aimass.registry", "show": "aimass.registry",
          "delete": "aimass.registry", "set_alias": "aimass.registry", "rollback": "aimass.registry", "promote": "aimass.registry",
          "Registry": "aimass.registry", "load_data": "aimass.data", "servers": "aimass.serve", "stop": "aimass.serve"}

def __getattr__(name):
    if name in _VERBS: return _importlib.import_module(_VERBS[name])  # a callable module: aimass.train(...)
    if name in _FUNCS: return getattr(_importlib.import_module(_FUNCS[name]), name)
    raise AttributeError(f"module 'aimass' has no attribute {name!r}")

def load_ipython_extension(ipython):
    "`%load_ext aimass`: register the `%aimass` and `%%aimass` magics."
    from aimass.magics import load_ipython_extension as _load
    _load(ipython)
