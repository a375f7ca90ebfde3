"""Fine-tuning text models (issue 14): hf: and plain folders, head resizing, offline reload, freeze, LoRA merged at
save time, multi-label, regression, the truncated count, per-class metrics, misclassified texts, and resume."""
import json, os, subprocess, sys, warnings
from pathlib import Path
import numpy as np
import pytest
import torch
from factory import make_tiny_hf_text, text_frame

import aimass
from aimass.core import AimassError


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    "A tiny BERT with a 5-label head and its WordPiece tokenizer, saved as a Hugging Face folder."
    return make_tiny_hf_text(tmp_path_factory.mktemp("models")/"bert", num_labels=5)


@pytest.fixture(scope="module")
def frame():
    return text_frame(60)


def fit(model, df, **kw):
    kw = {"text": "text", "target": "label", "epochs": 1, "batch_size": 8, "lr": 5e-3, "progress": False, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return aimass.train(model, df, **kw)


@pytest.mark.slow
def test_hf_folder_resized_head_and_offline_reload(bert, frame, tmp_path, monkeypatch):
    run = fit(f"hf:{bert}", frame, epochs=2, warmup=0.2)
    mv = run.version
    assert run.status == "completed" and mv.card.task == "classification" and mv.card.classes == ["faces", "medicine", "plants"]
    cfg = json.loads((mv.path/"config.json").read_text())
    assert len(cfg["id2label"]) == 3 and run.model.net.backbone.model.classifier.out_features == 3  # the 5-label head became 3
    assert cfg["id2label"] == {"0": "faces", "1": "medicine", "2": "plants"}
    assert {"tokenizer.json", "tokenizer_config.json", "weights.safetensors", "heldout.npz"} <= {p.name for p in mv.path.iterdir()}
    assert mv.card.preprocessor["kind"] == "text" and mv.card.spec["tokens"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert list(run.per_class.columns) == ["precision", "recall", "f1", "support"] and run.per_class["support"].sum() == mv.card.data["rows"]["test"]
    # offline, with the model folder gone: the version rebuilds from its stored config and gives the Run's outputs
    texts = frame.text[:12].tolist()
    expected = run.model.outputs(texts)
    moved = tmp_path/"gone"; bert.rename(moved)
    try:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        np.testing.assert_allclose(aimass.load(run.ref).outputs(texts), expected, atol=1e-5)
    finally: moved.rename(bert)
    with np.load(mv.path/"heldout.npz") as d: assert d["x"].dtype.kind == "U" and len(d["x"]) == len(d["y"])  # held-out texts stay texts


@pytest.mark.slow
def test_plain_folder_misclassified_texts_and_html(bert, frame):
    run = fit(str(bert), frame)  # a folder with config.json, no hf: prefix
    mis = run.misclassified
    assert list(mis.columns) == ["text", "true", "predicted", "probability"]
    assert (mis.true != mis.predicted).all() and mis.probability.is_monotonic_decreasing
    html = run._repr_html_()
    assert "misclassified validation texts" in html and "per class" in html


@pytest.mark.slow
def test_freeze_trains_only_the_head(bert, frame):
    from safetensors.torch import load_file
    from aimass.models import resolve_text_model
    before = resolve_text_model(str(bert), ["faces", "medicine", "plants"])[0].state_dict()
    run = fit(f"hf:{bert}", frame, freeze=True, epochs=2)
    after = load_file(str(run.version.path/"weights.safetensors"))
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(".classifier." in k for k in changed), changed


@pytest.mark.slow
def test_lora_trains_and_saves_merged_weights(bert, frame):
    run = fit(f"hf:{bert}", frame, lora="r=4,alpha=8", epochs=2)
    sd_keys = set(json.loads((run.version.path/"model.json").read_text())["spec"]["tokens"]["inputs"])
    assert sd_keys == {"input_ids", "attention_mask", "token_type_ids"}
    from safetensors.torch import load_file
    from aimass.models import resolve_text_model
    after = load_file(str(run.version.path/"weights.safetensors"))
    plain = resolve_text_model(str(bert), ["faces", "medicine", "plants"])[0].state_dict()
    assert set(after) == set(plain)  # merged: the keys of a plain model, no lora_A/lora_B
    assert any(not torch.equal(after[k], plain[k]) for k in after if "attention.self.query.weight" in k)  # the adapters moved the weights
    assert run.version.card.spec["lora"]["r"] == 4
    texts = run.model.outputs(frame.text[:5].tolist())
    # loading needs no peft: a fresh process where importing peft fails
    code = ("import sys, json, numpy as np; sys.modules['peft'] = None; import aimass; "
            f"print(json.dumps(aimass.load({run.ref!r}).outputs({frame.text[:5].tolist()!r}).tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    np.testing.assert_allclose(np.array(json.loads(out.stdout.strip().splitlines()[-1])), texts, atol=1e-5)


@pytest.mark.slow
def test_multilabel(bert, frame):
    run = fit(f"hf:{bert}", frame, target="tags", multi_label=True)
    c = run.version.card
    assert c.task == "multilabel" and sorted(c.classes) == ["faces", "long", "medicine", "plants"]
    assert json.loads((run.version.path/"config.json").read_text())["problem_type"] == "multi_label_classification"
    assert set(run.test_metrics) == {"accuracy", "f1", "f1_micro"} and len(run.per_class) == 4
    probs = run.model.outputs(frame.text[:4].tolist())
    assert probs.shape == (4, 4) and ((probs > 0) & (probs < 1)).all()  # sigmoid per label, not a softmax
    assert all(isinstance(p, list) for p in run.model.predict(frame.text[:4].tolist()))


@pytest.mark.slow
def test_regression_and_truncated_count(bert, frame):
    run = fit(f"hf:{bert}", frame, target="score", max_length=8)
    assert run.version.card.task == "regression" and set(run.test_metrics) == {"mse", "mae", "r2"}
    cfg = json.loads((run.version.path/"config.json").read_text())
    assert (cfg["problem_type"], len(cfg["id2label"])) == ("regression", 1)
    assert run.model.outputs(frame.text[:3].tolist()).shape == (3,)
    from aimass.texts import TextTokenizer
    lengths = [len(e.ids) for e in TextTokenizer.from_folder(bert).tokenizer.encode_batch(frame.text.tolist())]
    assert run.truncated == sum(n > 8 for n in lengths) > 0  # every split counted
    assert run.version.card.data["truncated"] == run.truncated and run.per_class is None


@pytest.mark.slow
def test_resume_a_text_run(bert, frame):
    first = fit(f"hf:{bert}", frame, name="tickets", epochs=1, warmup=0.3)
    again = fit(f"hf:{bert}", frame, name="tickets", epochs=2, resume=True, warmup=0.3)
    assert len(again.history) == 2 and again.run_dir == first.run_dir and again.version.version == 2


def test_text_errors(bert, frame):
    with pytest.raises(AimassError, match="pretrained Hugging Face model"): fit("mlp", frame)
    with pytest.raises(AimassError, match="r=N,alpha=N"): fit(f"hf:{bert}", frame, lora="rank=4")
    with pytest.raises(AimassError, match="leave out freeze"): fit(f"hf:{bert}", frame, lora="r=2", freeze=True)


def test_warmup_then_decay_per_step():
    from aimass.models import _warmup_decay
    f = [_warmup_decay(s, 10, 2, "cosine") for s in range(10)]
    assert f[0] < f[1] < f[2] == 1.0 and all(a >= b for a, b in zip(f[2:], f[3:])) and f[-1] < 0.05
    assert _warmup_decay(5, 10, 0, "constant") == 1.0


def test_text_model_errors_name_the_fix(bert, frame, tmp_path, monkeypatch):
    import shutil
    bare = tmp_path/"no-tokenizer"; bare.mkdir()
    for f in ("config.json", "model.safetensors"): shutil.copy(bert/f, bare/f)  # a user's model folder without its tokenizer
    with pytest.raises(AimassError, match="No tokenizer in"): fit(f"hf:{bare}", frame)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AimassError, match="pass its local folder"): fit("hf:nobody-here/no-such-model", frame)


@pytest.mark.slow
def test_bf16_mixed_text_training_stores_float32_weights(bert, frame):
    run = fit(f"hf:{bert}", frame, precision="bf16-mixed", lora="r=2,alpha=4")
    from aimass.models import read_state_dict
    assert {v.dtype for v in read_state_dict(run.version.path/"weights.safetensors").values() if v.is_floating_point()} == {torch.float32}
    np.testing.assert_allclose(aimass.load(run.ref).outputs(frame.text[:6].tolist()), run.model.outputs(frame.text[:6].tolist()), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("lora", [None, "r=8,alpha=16"])
def test_cuda_bf16_text_training(bert, frame, lora):
    run = fit(f"hf:{bert}", frame, epochs=2, accelerator="gpu", devices=1, precision="bf16-mixed", lora=lora,
              gradient_checkpointing=True, warmup=0.1)
    assert run.status == "completed" and np.isfinite(run.history["train_loss"]).all()
    texts = frame.text[:6].tolist()  # trained on the GPU, registered, reloaded and run on the CPU
    np.testing.assert_allclose(aimass.load(run.ref).outputs(texts), run.model.outputs(texts), atol=1e-4)


def test_gradient_checkpointing_on_the_cpu_quietly(bert, frame):
    "gradient_checkpointing=True recomputes the encoder's layers in the backward pass, through transformers' current API, with no cache warnings."
    from aimass.models import _hf_backbone, gradient_checkpointing
    net, _, _ = _hf_backbone(f"hf:{bert}", ["faces", "medicine", "plants"], kind="text")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gradient_checkpointing(net)
    assert net.model.is_gradient_checkpointing and net.model.config.use_cache in (None, False)
    assert not [w for w in caught if "gradient_checkpointing_enable" in str(w.message)], [str(w.message) for w in caught]
    run = fit(f"hf:{bert}", frame, gradient_checkpointing=True)
    assert run.status == "completed" and np.isfinite(run.history["train_loss"]).all()
