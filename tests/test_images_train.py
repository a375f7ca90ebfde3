"Training on image folders: pretrained Hugging Face models (a tiny ResNet and ViT built on the spot), freezing, the registry's copy, resume."
import json, os
import numpy as np, pandas as pd, pytest, torch
from factory import make_tiny_hf_vision, shared_home, write_image_folder
from aimass.core import AimassError
from aimass.registry import Registry, load
from aimass.training import train
from aimass.models import read_state_dict


@shared_home(scope="module")
def home(folder):
    "One image folder (3 classes x 12 digits at 32x32) and tiny HF checkpoints, shared by the module's tests."
    return {"images": write_image_folder(folder/"digits", n_per_class=12),
            "resnet": make_tiny_hf_vision(folder/"tiny-resnet", "resnet"), "vit": make_tiny_hf_vision(folder/"tiny-vit", "vit")}


@pytest.mark.slow
def test_hf_resnet_from_a_folder_new_head_registry_files_and_reload(home):
    r = train(f"hf:{home['resnet']}", home["images"], epochs=1, batch_size=8, progress=False, name="res")
    card = r.version.card
    test_files = sorted(os.listdir(r.version.path))
    assert {"weights.safetensors", "config.json", "preprocessor_config.json", "heldout.npz"} <= set(test_files)
    cfg = json.loads((r.version.path/"config.json").read_text())
    assert cfg["id2label"] == {"0": "0", "1": "1", "2": "2"} and card.classes == ["0", "1", "2"]
    assert card.preprocessor["kind"] == "image" and card.input_shape == [32, 32, 3]
    assert "pixels" in card.spec and card.spec["pretrained"]["library"] == "transformers"
    assert {"accuracy", "f1"} <= set(r.test_metrics) and "top3_accuracy" not in r.test_metrics  # 3 classes: no top-3
    # the reloaded version (offline, from the stored config) gives the Run's outputs on the same files
    files = list(np.load(r.version.path/"heldout.npz")["x"])
    os.environ["HF_HUB_OFFLINE"] = "1"
    try: lm = load("res")
    finally: del os.environ["HF_HUB_OFFLINE"]
    np.testing.assert_allclose(lm.outputs(files), r.model.outputs(files), atol=1e-5)
    split = json.loads((r.run_dir/"split.json").read_text())
    assert sum(len(split[k]) for k in ("train", "val", "test")) == 36 and card.data["split"].endswith("split.json")


def test_a_folder_path_given_plainly_and_vit(home):
    r = train(str(home["vit"]), home["images"], epochs=1, batch_size=8, progress=False, name="vit")
    assert r.version.card.spec["pretrained"]["config"]["model_type"] == "vit"
    assert r.loop.fast  # decoded by workers, still chunked steps and one-pass validation


def test_freeze_trains_only_the_head(home):
    from aimass.models import head_of, model_from_spec
    r = train(f"hf:{home['resnet']}", home["images"], epochs=1, batch_size=8, progress=False, freeze=True, lr=0.05, name="frozen")
    after = read_state_dict(r.version.path/"weights.safetensors")
    start = read_state_dict(home["resnet"]/"model.safetensors")
    backbone = {k: v for k, v in after.items() if k.startswith("backbone.model.resnet.")}
    assert backbone and all(torch.equal(v, start[k[len("backbone.model."):]]) for k, v in backbone.items())  # BN statistics too
    head = after["backbone.model.classifier.1.weight"]
    assert head.shape == (3, 16)


@pytest.mark.slow
def test_unfreeze_after_trains_everything_later(home):
    r = train(f"hf:{home['resnet']}", home["images"], epochs=2, batch_size=8, progress=False, unfreeze_after=1, lr=0.05, name="thaw")
    last = torch.load(r.run_dir/"checkpoints"/"last.ckpt", weights_only=True)["state_dict"]  # epoch 2's (the best may be epoch 1's)
    start = read_state_dict(home["resnet"]/"model.safetensors")
    k = "resnet.embedder.embedder.convolution.weight"
    assert not torch.equal(last[f"net.backbone.model.{k}"], start[k])
    assert r.version.card.hparams["freeze"] is True and r.loop.fast


def test_offline_hub_id_is_one_line(monkeypatch, home):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AimassError, match="pass its local folder") as e:
        train("hf:nobody-here/no-such-vision-model", home["images"], epochs=1, progress=False)
    assert "\n" not in str(e.value)


def test_timm_needs_timm(home):
    pytest.importorskip("aimass.images")
    try: import timm  # noqa
    except Exception:
        with pytest.raises(AimassError, match="needs timm"): train("timm:resnet18", home["images"], epochs=1, progress=False)


@pytest.mark.slow
def test_cnn_template_on_a_folder_with_topk_misclassified_and_html(home):
    r = train("cnn", write_image_folder(home["dir"]/"six", n_per_class=6, classes=list("abcdef")), epochs=1, batch_size=8,
              progress=False, name="six-cnn")
    assert {"top3_accuracy", "top5_accuracy"} <= set(r.test_metrics)
    assert r.confusion.shape == (6, 6) and r.classes == list("abcdef")
    assert list(r.misclassified.columns) == ["path", "true", "predicted", "probability"] and len(r.misclassified)
    html = r._repr_html_()
    assert "misclassified validation images" in html and "data:image/png;base64" in html
    assert r.version.card.spec["template"] == "cnn" and "pixels" in r.version.card.spec


@pytest.mark.slow
def test_accumulate_2_runs_in_lightnings_loop(home):
    r = train("cnn", home["images"], epochs=1, batch_size=4, accumulate=2, progress=False, name="acc")
    assert r.status == "completed" and r.loop.batches_per_step == 1 and r.loop.reasons[0].startswith("accumulate=2")


@pytest.mark.slow
def test_resume_an_image_run(home):
    r1 = train("cnn", home["images"], epochs=1, batch_size=8, progress=False, name="again")
    r2 = train(name="again", resume=True, epochs=2, progress=False)
    assert len(r2.history) == 2 and r2.version.card.data["fingerprint"] == r1.version.card.data["fingerprint"]


@pytest.mark.slow
def test_init_from_a_backbone_state_dict(home, tmp_path):
    from safetensors.torch import save_file
    from aimass.models import cnn
    own = cnn((3, 32, 32), 5)  # another head size: the head is new, the rest is loaded
    save_file(own.state_dict(), str(tmp_path/"w.safetensors"))
    r = train("cnn", home["images"], epochs=1, batch_size=8, progress=False, init_from=str(tmp_path/"w.safetensors"), lr=0.0,
              scheduler="constant", name="init")
    after = read_state_dict(r.version.path/"weights.safetensors")
    assert torch.equal(after["backbone.2.weight"], own.state_dict()["2.weight"])
