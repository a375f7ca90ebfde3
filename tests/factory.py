"""What the tests make, in one place: small trained versions registered the way `aimass.train` stores them, and one
AIMASS_HOME shared by a module's (or the session's) tests.

    from factory import make_version, shared_home

    mv = make_version("linear")                           # 3 epochs on digits, registered as digits-linear:v1

    @shared_home(scope="module")                          # the module's `home` fixture; every test there uses it
    def home(folder):
        make_version("cnn", name="digits-cnn", epochs=2)  # AIMASS_HOME is `folder` while this runs
        return {"rows": ...}                              # more keys of the fixture's value, beside "dir" (= folder)
"""
import io, sys, textwrap, time
from pathlib import Path
import numpy as np
import pytest


def make_version(model="mlp",    # a template name (mlp, cnn, linear); ignored when `spec` is given
                 data="digits",  # a dataset name or an aimass.data.Dataset
                 epochs=3,       # passes over the training split (a plain loop, no Lightning: fast)
                 name=None,      # registered name; default "<dataset>-<model>"
                 spec=None,      # a model spec (template or class, with source) instead of `model`
                 seed=0,         # torch seed for the weights and the batches
                 **model_kwargs):
    "A few epochs of a template (or a spec) on a dataset, registered as aimass.train stores it: card, weights, heldout.npz."
    import torch
    from aimass.data import Preprocessor, load_data, split
    from aimass.models import model_from_spec, resolve_model
    from aimass.registry import Registry
    ds = load_data(data) if isinstance(data, str) else data
    sp = split(ds, seed=0); pre = Preprocessor.fit(sp.train)
    nout = ds.num_classes or 1
    torch.manual_seed(seed)
    if spec is None: net, spec = resolve_model(model, pre.input_shape, nout, model_kwargs)
    else: net = model_from_spec(spec, pre.input_shape, nout, trust_code=True)  # the test's own code
    xtr, ytr = torch.from_numpy(pre.transform(sp.train.X)), torch.from_numpy(sp.train.y)
    ymean, ystd = (float(ytr.mean()), float(ytr.std())) if ds.task == "regression" else (0.0, 1.0)
    if any(p.requires_grad for p in net.parameters()):
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        for _ in range(epochs):
            for i in range(0, len(ytr), 32):
                out, yb = net(xtr[i:i+32]), ytr[i:i+32]
                loss = (torch.nn.functional.cross_entropy(out, yb) if ds.task == "classification"
                        else torch.nn.functional.mse_loss(out.reshape(-1), (yb - ymean) / ystd))
                opt.zero_grad(); loss.backward(); opt.step()
    buf = io.BytesIO(); np.savez(buf, x=pre.transform(sp.test.X), y=sp.test.y)
    card = {"task": ds.task, "classes": ds.classes, "target": {"name": ds.target, "mean": ymean, "std": ystd},
            "model": spec.get("template", "custom"), "spec": spec, "input_shape": list(pre.input_shape),
            "num_outputs": nout, "preprocessor": pre.to_dict(), "schema": pre.schema, "metrics": {"test": {}}}
    return Registry().save(name or f"{ds.name}-{model}", card, net.state_dict(), files={"heldout.npz": buf.getvalue()})


def write_image_folder(folder,          # where to write: one subfolder per class (made if missing)
                       n_per_class=20,  # images per class
                       size=(32, 32),   # (height, width) of each image
                       classes=None,    # class folder names, one per digit 0, 1, ...; default ["0", "1", "2"]
                       fmt="png",       # file suffix and format: png, jpg, webp, bmp
                       seed=0):         # which digits are picked
    "Writes scikit-learn's digits (upscaled, RGB) as image files in ImageFolder layout: `folder/<class>/<class>_0000.<fmt>`; returns `folder`."
    from PIL import Image
    from sklearn.datasets import load_digits
    folder, classes = Path(folder), list(classes or ["0", "1", "2"])
    assert len(classes) <= 10, "digits has 10 classes"
    d, rng = load_digits(), np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (folder/str(name)).mkdir(parents=True, exist_ok=True)
        picks = rng.choice(np.flatnonzero(d.target == k), n_per_class, replace=n_per_class > int((d.target == k).sum()))
        for j, i in enumerate(picks):
            gray = (d.images[i] * (255 / 16)).astype(np.uint8)
            tint = np.array([1.0, 0.9, 0.8])  # not quite gray, so a channel mix-up shows
            rgb = (np.stack([gray] * 3, -1) * tint).astype(np.uint8)
            img = Image.fromarray(rgb).resize((size[1], size[0]), Image.BILINEAR)
            img.save(folder/str(name)/f"{name}_{j:04d}.{fmt}", format={"jpg": "JPEG", "tif": "TIFF"}.get(fmt, fmt.upper()))
    return folder


_TINY_VISION = {  # arch -> (config class, tiny sizes, image processor config besides mean/std and size)
    "resnet": ("ResNetConfig", dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
               {"image_processor_type": "ConvNextImageProcessor", "crop_pct": 0.875, "resample": 3}),
    "vit": ("ViTConfig", dict(patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
            {"image_processor_type": "ViTImageProcessor", "resample": 2}),
    "convnext": ("ConvNextConfig", dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2),
                 {"image_processor_type": "ConvNextImageProcessor", "crop_pct": 0.875, "resample": 3}),
    "mobilenet_v2": ("MobileNetV2Config", dict(depth_multiplier=0.25, finegrained_output=False),
                     {"image_processor_type": "MobileNetV2ImageProcessor", "do_center_crop": True, "resample": 2}),
}


def make_tiny_hf_vision(folder,            # where to save it (made if missing)
                        arch="resnet",     # resnet, vit, convnext or mobilenet_v2
                        image_size=32,     # the side its image processor resizes (and crops) to
                        num_labels=3,      # the size of its own head (train replaces it)
                        seed=0):           # torch seed for its random weights
    """A tiny real-architecture Hugging Face image classifier with random weights, saved with `save_pretrained` and a
    matching `preprocessor_config.json`: what `hf:FOLDER` loads, with nothing downloaded."""
    import json, torch, transformers
    from transformers import AutoModelForImageClassification
    cls, sizes, proc = _TINY_VISION[arch]
    if arch in ("vit", "mobilenet_v2"): sizes = {**sizes, "image_size": image_size}
    config = getattr(transformers, cls)(num_channels=3, num_labels=num_labels, **sizes)
    torch.manual_seed(seed)
    model = AutoModelForImageClassification.from_config(config)
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    size = ({"height": image_size, "width": image_size} if arch == "vit" else {"shortest_edge": image_size})
    if arch == "mobilenet_v2": proc = {**proc, "crop_size": {"height": image_size, "width": image_size}}
    mean = [0.485, 0.456, 0.406] if arch != "vit" else [0.5, 0.5, 0.5]
    std = [0.229, 0.224, 0.225] if arch != "vit" else [0.5, 0.5, 0.5]
    (folder/"preprocessor_config.json").write_text(json.dumps(
        {**proc, "do_resize": True, "size": size, "do_rescale": True, "rescale_factor": 1/255, "do_normalize": True,
         "image_mean": mean, "image_std": std}, indent=2))
    return folder


def _stop_servers():
    "Servers this process started in a shared home end with it (only if a test imported the launcher at all)."
    launcher = sys.modules.get("aimass.launcher")
    if launcher is not None: launcher.stop(all=True)


class SharedHome(dict):
    "The value of a `shared_home` fixture: {'dir': the AIMASS_HOME folder, **what `fill` returned}."


def shared_home(scope="module"):  # "module" or "session": how long the home and what `fill` made in it live
    """Turns `fill(folder) -> dict|None` into the autouse `home` fixture: AIMASS_HOME is the new `folder` while `fill`
    runs and during every test of the module (conftest's `aimass_home` sees it), instead of an empty one per test.
    The fixture's value is `SharedHome(dir=folder, **fill(folder))`; servers still running when the scope ends are
    stopped."""
    def decorate(fill):
        def home(tmp_path_factory):
            folder = tmp_path_factory.mktemp(fill.__name__)
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("AIMASS_HOME", str(folder))
                try: yield SharedHome(dir=folder, **(fill(folder) or {}))
                finally: _stop_servers()
        home.__doc__ = fill.__doc__
        return pytest.fixture(scope=scope, autouse=True, name="home")(home)
    return decorate


# A user model (stored as source, like a class defined in a notebook) whose forward misbehaves on magic inputs: a first
# raw pixel of 1e6 sleeps 2.5 s, -1e6 kills the worker process; each call logs its row count to $AIMASS_FAULTS_LOG
# when set. Served by the torch backend.
QUIRKY_SOURCE = textwrap.dedent('''
    import os, time
    class Quirky(nn.Module):
        def __init__(self, in_features=64, num_outputs=10):
            super().__init__()
            self.in_features, self.num_outputs = in_features, num_outputs
            self.lin = nn.Linear(in_features, num_outputs)
        def forward(self, x):
            x = x.reshape(len(x), -1)
            log = os.environ.get("AIMASS_FAULTS_LOG")
            if log:
                with open(log, "a") as f: f.write(f"{len(x)}\\n")
            if len(x) and float(x[:, 0].max()) > 1000: time.sleep(2.5)
            if len(x) and float(x[:, 0].min()) < -1000: os._exit(3)
            return self.lin(x)
''')
QUIRKY_SPEC = {"class": "aimass_user_model:Quirky", "kwargs": {"in_features": 64, "num_outputs": 10}, "lightning": False,
               "source": QUIRKY_SOURCE}


_TEXT_TOPICS = {  # label -> scikit-learn dataset descriptions (real English, shipped offline) its sentences come from
    "faces": ("lfw", "olivetti_faces"),
    "plants": ("iris", "species_distributions", "covtype"),
    "medicine": ("breast_cancer", "diabetes"),
}


def _descr_words(names) -> list:
    "The words of scikit-learn's dataset descriptions `names` (reStructuredText markup left out)."
    import re
    from sklearn.datasets import descr
    text = " ".join((Path(descr.__file__).parent/f"{n}.rst").read_text() for n in names)
    return re.findall(r"[A-Za-z][A-Za-z'\-]+|\d+", re.sub(r"\.\. _[^:]*:|\*\*|``|:[a-z]+:", " ", text))


def text_frame(n=60,          # rows
               seed=0,        # which word windows are picked
               classes=None,  # labels, from "faces", "plants", "medicine" (default: all three)
               ):
    """A small labelled text DataFrame with real words: each `text` is a window of 4-20 consecutive words of the
    scikit-learn dataset descriptions of its topic (`label`). Also `title` (the first 3 words), `score` (the text's word
    count / 10, a regression target) and `tags` (a "|"-joined multi-label target: the label, and "long" for texts of 12
    words or more)."""
    import pandas as pd
    rng, classes = np.random.default_rng(seed), list(classes or _TEXT_TOPICS)
    words = {c: _descr_words(_TEXT_TOPICS[c]) for c in classes}
    rows = []
    for i in range(n):
        c = classes[i % len(classes)]
        k = int(rng.integers(4, 21)); start = int(rng.integers(0, len(words[c]) - k))
        w = words[c][start:start + k]
        rows.append({"text": " ".join(w), "title": " ".join(w[:3]), "label": c, "score": k / 10,
                     "tags": "|".join([c] + (["long"] if k >= 12 else []))})
    return pd.DataFrame(rows)


def _train_wordpiece(texts, vocab_size=400):
    "A BERT-style WordPiece tokenizer (lower-cased, [CLS] a [SEP] b [SEP] with token types) trained on `texts`."
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers, decoders
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return tok


def make_tiny_hf_text(folder,           # where to save it (made if missing)
                      arch="bert",      # bert (with token_type_ids) or distilbert (without)
                      num_labels=2,     # the size of its own head (train replaces it)
                      seed=0,           # torch seed for its random weights
                      max_position=128, # the longest sequence it takes
                      ):
    """A tiny real-architecture Hugging Face sequence classifier with random weights and a WordPiece tokenizer trained
    on real text (scikit-learn's dataset descriptions), both saved with `save_pretrained`: what `hf:FOLDER` loads, with
    nothing downloaded. Returns `folder`."""
    import torch, transformers
    from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    tok = _train_wordpiece([" ".join(_descr_words([n])) for t in _TEXT_TOPICS.values() for n in t] +
                           list(text_frame(200, seed=1)["text"]))
    if arch == "bert":
        config = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=37, max_position_embeddings=max_position,
                                         num_labels=num_labels)
        inputs = ["input_ids", "token_type_ids", "attention_mask"]
    elif arch == "distilbert":
        config = transformers.DistilBertConfig(vocab_size=tok.get_vocab_size(), dim=32, n_layers=2, n_heads=2, hidden_dim=37,
                                               max_position_embeddings=max_position, num_labels=num_labels)
        inputs = ["input_ids", "attention_mask"]
    else: raise ValueError(f"arch is bert or distilbert, not {arch!r}")
    config.pad_token_id = tok.token_to_id("[PAD]")
    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_position,
                                   model_input_names=inputs)
    fast.save_pretrained(folder)
    return folder


def register_trained_module(name, cls, kwargs: dict, pre, rows: list, y, classes: list, test, lr: float, epochs: int,
                            seed: int = 0, data_name: str = "data"):
    """Train user module `cls(**kwargs)` full-batch on the `rows` not in boolean mask `test` (through preprocessor `pre`),
    and register it as `name`: a class-spec card with test metrics, and the held-out rows in heldout.npz."""
    import torch
    from torch import nn
    from aimass.data import score
    from aimass.models import class_spec
    from aimass.registry import Registry
    torch.manual_seed(seed)
    net = cls(**kwargs)
    x, yt = torch.from_numpy(pre.transform([r for r, t in zip(rows, test) if not t])), torch.from_numpy(y[~test])
    opt = torch.optim.Adam(net.parameters(), lr)
    for _ in range(epochs):
        loss = nn.functional.cross_entropy(net(x), yt)
        opt.zero_grad(); loss.backward(); opt.step()
    net.eval()
    test_rows = [r for r, t in zip(rows, test) if t]
    with torch.inference_mode(): probs = torch.softmax(net(torch.from_numpy(pre.transform(test_rows))), -1).numpy()
    buf = io.BytesIO(); np.savez(buf, x=np.array(test_rows), y=y[test])
    card = {"task": "classification", "classes": classes, "model": cls.__name__, "spec": class_spec(cls, kwargs),
            "input_shape": list(pre.input_shape), "num_outputs": len(classes), "preprocessor": pre.to_dict(),
            "schema": pre.schema, "metrics": {"test": score("classification", probs, y[test])},
            "data": {"name": data_name, "rows": {"train": int((~test).sum()), "test": int(test.sum())}}}
    return Registry().save(name, card, net.state_dict(), files={"heldout.npz": buf.getvalue()})


def wait_for(check, timeout=20.0):
    "Return once `check()` is true (polled every 0.05 s); fail the test after `timeout` s."
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check(): return True
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
