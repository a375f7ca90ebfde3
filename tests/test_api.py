"""The public API as a user meets it: real signatures and docstrings, verbs in dir(aimass), and %aimass/aimass flags
that come from the same signatures (so they cannot disagree)."""
import inspect, subprocess
import pytest
from conftest import PYTHON

import aimass
from aimass.commands import HelpRequested, VERBS, verb_flags, verb_function, verb_parser, run
from aimass.core import param_docs

MAIN = ["train", "export", "bench", "predict", "serve", "loadtest", "bundle", "load", "promote", "rollback",
        "list_models", "show", "delete", "servers", "stop", "load_data"]


def test_import_is_light_and_lists_the_verbs():
    code = ("import sys, aimass; print(sorted(m for m in ('torch', 'lightning', 'pandas', 'onnx', 'litserve') if m in sys.modules));"
            "print(' '.join(dir(aimass)))")
    heavy, names = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert heavy == "[]"
    assert set(MAIN) <= set(names.split()), set(MAIN) - set(names.split())
    assert not {"training", "launcher", "server_process"} & set(names.split())  # layers are modules, not the API


@pytest.mark.parametrize("name", MAIN)
def test_real_signatures_and_docstrings(name):
    fn = getattr(aimass, name)
    assert inspect.isfunction(fn), f"aimass.{name} is {type(fn)}"
    params = inspect.signature(fn).parameters
    assert not any(p.kind in (p.VAR_POSITIONAL,) for p in params.values())
    assert inspect.getdoc(fn), f"aimass.{name} has no docstring"


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_parameter_is_a_documented_flag_with_its_default(verb):
    fn = verb_function(verb)
    docs = param_docs(fn)
    flags = {f.name: f for f in verb_flags(fn, notebook=True)}
    sig = inspect.signature(fn).parameters
    for name, p in sig.items():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL): continue
        assert name in flags, f"{verb}: parameter {name} has no flag"
        assert docs.get(name) or name in ("ref", "name", "version", "format"), f"{verb}: parameter {name} has no description"
    try: verb_parser(verb, "%aimass", notebook=True).parse_args(["--help"])
    except HelpRequested as h: text = " ".join(h.text.split())
    for name, p in sig.items():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or flags[name].positional: continue
        assert f"--{name.replace('_', '-')}" in text
        if p.default not in (None, False, True, p.empty) and not flags[name].is_bool:
            shown = ",".join(map(str, p.default)) if isinstance(p.default, (tuple, list)) else str(p.default)
            assert f"(default:{shown})".replace(" ", "") in text.replace(" ", ""), f"{verb} --{name}: default {shown} not shown"


def test_train_help_agrees_with_the_signature():
    try: run("train --help")
    except HelpRequested as h: text = " ".join(h.text.split())
    assert inspect.getdoc(aimass.train).split("\n")[0] in text
    assert "--epochs EPOCHS passes over the training split (default: 10)" in text
    assert "--batch-size BATCH_SIZE rows per optimizer step (default: 32)" in text
    assert "mlp: sizes of the hidden layers (default: 256,128)" in text


@pytest.mark.parametrize("verb", list(VERBS))
def test_tab_completion_reads_the_flags_the_parser_has(verb):
    "Tab reads a verb's flags from its source (no import); they are the flags its parser takes."
    from aimass.commands import declared_options
    assert declared_options(verb) == [o for a in verb_parser(verb, "%aimass", notebook=True)._actions for o in a.option_strings]


def test_refs_read_as_refs():
    from aimass.core import Ref, parse_ref
    assert repr(parse_ref("digits:v1")) == "digits:v1" and repr(Ref("digits", alias="production")) == "digits@production"


def test_a_new_parameter_is_a_new_flag():
    def verb(ref: str,  # the model
             *, fresh: int = 3,  # a parameter added today
             ): "A verb."
    flags = {f.name: f for f in verb_flags(verb)}
    assert flags["fresh"].doc == "a parameter added today" and flags["fresh"].default == 3 and flags["ref"].positional


def test_server_options_have_one_set_of_defaults():
    from aimass.launcher import ServerConfig
    from dataclasses import fields
    serve_sig = inspect.signature(aimass.serve).parameters
    bundle_sig = inspect.signature(aimass.bundle).parameters
    for f in fields(ServerConfig):
        if f.name in ServerConfig.internal: continue
        assert serve_sig[f.name].default == f.default, f.name
        if f.name in bundle_sig and f.name != "port": assert bundle_sig[f.name].default == f.default, f.name
    assert param_docs(aimass.serve)["max_batch_size"] == param_docs(ServerConfig)["max_batch_size"]
