"Image data (aimass.images and the image branch of aimass.data): opening images, preprocessing, folders and tables, splits, loaders."
import base64, io, json, os, subprocess, sys
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from aimass.core import AimassError
from aimass.data import Preprocessor, RowError, load_data, split
from aimass.images import (IMAGE_SUFFIXES, MAX_PIXELS, ImageDataset, ImageError, ImageFiles, ImageProcessing, ImageTooLarge,
                           load_images, loader_workers, open_image)
from factory import write_image_folder

RGB = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)


def encoded(a=RGB, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO(); Image.fromarray(a).save(buf, fmt, **kw); return buf.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    "3 classes x 8 digits as 32x32 PNGs, plus a README, a text file, a corrupt JPEG and a notebook checkpoint folder."
    root = write_image_folder(tmp_path_factory.mktemp("img")/"photos", n_per_class=8, classes=["cat", "dog", "owl"])
    (root/"README.md").write_text("x"); (root/"dog"/"notes.txt").write_text("x")
    (root/"owl"/"broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root/".ipynb_checkpoints").mkdir()
    return root


# --- open_image ---------------------------------------------------------------------------------------------------

def test_open_image_every_input_kind(tmp_path):
    png = encoded()
    (tmp_path/"a.png").write_bytes(png)
    for src in [tmp_path/"a.png", str(tmp_path/"a.png"), png, bytearray(png), {"b64": base64.b64encode(png).decode()},
                {"b64": "data:image/png;base64," + base64.b64encode(png).decode()}, Image.fromarray(RGB), RGB, RGB / 255,
                RGB.astype(np.int64).tolist()]:
        img = open_image(src)
        assert (img.mode, img.size) == ("RGB", (8, 6)), type(src)
        assert np.array_equal(np.asarray(img), RGB), type(src)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "1", "I;16", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(mode):
    assert open_image(Image.fromarray(RGB).convert(mode)).mode == "RGB"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_formats(fmt):
    assert open_image(encoded(fmt=fmt)).size == (8, 6)


def test_arrays_of_every_shape():
    for a in [RGB[..., 0], RGB[..., :1], RGB, np.concatenate([RGB, np.full((6, 8, 1), 255, np.uint8)], -1)]:
        assert np.asarray(open_image(a)).shape == (6, 8, 3)
    assert np.asarray(open_image(np.zeros((2, 2, 4), np.uint8)))[0, 0].tolist() == [255, 255, 255]  # transparent: white
    with pytest.raises(ImageError, match="channels last; got shape"): open_image(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ImageError, match=r"values in \[0, 1\]"): open_image(np.full((4, 4), 7.0))


def test_sixteen_bit_png_is_scaled_not_clipped():
    grey = np.array([[0, 32768, 65535]], np.uint16)
    out = np.asarray(open_image(encoded(grey)))[0, :, 0]
    assert out.tolist() == [0, 128, 255]


def test_exif_orientation_applied():
    exif = Image.Exif(); exif[0x0112] = 6  # rotate 90 degrees to display
    img = open_image(encoded(fmt="JPEG", exif=exif))
    assert img.size == (6, 8)


def test_not_an_image_truncated_and_missing(tmp_path):
    png = encoded(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (tmp_path/"cut.png").write_bytes(png[:len(png) - 40])
    with pytest.raises(ImageError, match=f"{tmp_path/'cut.png'} is truncated or corrupt"): open_image(tmp_path/"cut.png")
    with pytest.raises(ImageError, match="not an image Pillow can read"): open_image(b"hello", name="instance 2")
    with pytest.raises(ImageError, match="No image file at"): open_image(tmp_path/"nope.png")
    with pytest.raises(ImageError, match="not valid base64"): open_image({"b64": "@@@"})
    with pytest.raises(ImageError, match="cannot read an image from int"): open_image(3)


def test_pixel_cap_before_decoding():
    buf = io.BytesIO(); Image.new("1", (10_000, 5_000)).save(buf, "PNG")  # 50 MP, a few kB: a small bomb
    with pytest.raises(ImageTooLarge, match="10000x5000 = 50,000,000 pixels, over the cap of 40,000,000"): open_image(buf.getvalue())
    with pytest.raises(ImageTooLarge, match="instance 0 is 8x6"): open_image(encoded(), max_pixels=47, name="instance 0")
    with pytest.raises(ImageTooLarge): open_image(RGB, max_pixels=10)
    assert MAX_PIXELS == 40_000_000 and issubclass(ImageTooLarge, ImageError) and issubclass(ImageError, AimassError)


def test_pillows_own_bomb_check_is_image_too_large():
    buf = io.BytesIO(); Image.new("1", (30_000, 30_000)).save(buf, "PNG")
    with pytest.raises(ImageTooLarge, match="900,000,000 pixels, a decompression bomb"): open_image(buf.getvalue(), max_pixels=10**12)


# --- ImageProcessing ----------------------------------------------------------------------------------------------

def _hf_processors():
    import transformers
    transformers.logging.set_verbosity_error()
    from transformers import BitImageProcessor, ConvNextImageProcessor, MobileNetV2ImageProcessor, ViTImageProcessor
    return [ViTImageProcessor(), ConvNextImageProcessor(size={"shortest_edge": 224}), ConvNextImageProcessor(),
            MobileNetV2ImageProcessor(), BitImageProcessor(), ViTImageProcessor(size={"height": 64, "width": 48}, resample=3)]


@pytest.mark.parametrize("i", range(6))
def test_prepare_matches_transformers(i):
    "Our pixels, normalised as the network's PixelInput does, are transformers' own pixel_values."
    hf = _hf_processors()[i]
    p = ImageProcessing.from_pretrained(hf)
    assert p.source == "hf preprocessor_config.json"
    for s, (h, w) in enumerate([(300, 400), (257, 199), (90, 500)]):
        img = np.random.default_rng(s).integers(0, 256, (h, w, 3), dtype=np.uint8)
        theirs = hf(Image.fromarray(img), return_tensors="np")["pixel_values"][0]
        px = p.prepare(img)
        assert px.dtype == np.uint8 and px.shape == p.output_shape
        ours = ((px / np.float32(255) - np.float32(p.mean)) / np.float32(p.std)).transpose(2, 0, 1)
        assert ours.shape == theirs.shape
        assert np.abs(ours - theirs).max() < 1e-4


def test_from_a_saved_processor_folder(tmp_path):
    from transformers import AutoImageProcessor, MobileNetV2ImageProcessor
    MobileNetV2ImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    p = ImageProcessing.from_pretrained(tmp_path)
    assert (p.size, p.crop, p.output_shape, p.resample) == (40, [32, 32], (32, 32, 3), "bilinear")
    assert ImageProcessing.from_pretrained(str(tmp_path/"preprocessor_config.json")) == p
    assert ImageProcessing.from_pretrained(AutoImageProcessor.from_pretrained(tmp_path)) == p
    assert ImageProcessing.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    with pytest.raises(AimassError, match="No preprocessor_config.json in"): ImageProcessing.from_pretrained(tmp_path/"..")


def test_from_timm_pretrained_cfg(tmp_path):
    resnet18 = {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 0.95, "crop_mode": "center",
                "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "num_classes": 1000}
    p = ImageProcessing.from_pretrained(resnet18)
    assert (p.size, p.crop, p.resample, p.source) == (235, [224, 224], "bilinear", "timm pretrained_cfg")
    vit = {"input_size": [3, 384, 384], "interpolation": "bicubic", "crop_pct": 1.0, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert ImageProcessing.from_pretrained({"architecture": "vit", "pretrained_cfg": vit}).output_shape == (384, 384, 3)
    (tmp_path/"config.json").write_text(json.dumps({"architecture": "resnet18", "pretrained_cfg": resnet18}))
    assert ImageProcessing.from_pretrained(tmp_path) == p  # a timm hub folder
    squash = ImageProcessing.from_pretrained({**resnet18, "crop_mode": "squash", "crop_pct": 1.0})
    assert (squash.size, squash.crop) == ([224, 224], [224, 224])


def test_prepare_and_augment_shapes():
    big = np.random.default_rng(2).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    p = ImageProcessing(size=32, crop=[24, 24])
    assert p.prepare(big).shape == (24, 24, 3)
    assert ImageProcessing.default(20).prepare(big).shape == (20, 20, 3)  # a shortest edge alone: a square crop
    assert ImageProcessing.default([16, 40]).prepare(big).shape == (16, 40, 3)
    a, b = p.augment(big, np.random.default_rng(0)), p.augment(big, np.random.default_rng(1))
    assert a.shape == b.shape == (24, 24, 3) and not np.array_equal(a, b)
    assert np.array_equal(p.augment(big, np.random.default_rng(0)), a)  # seeded
    with pytest.raises(AimassError, match="resample is one of"): ImageProcessing(resample="magic")


# --- folders and tables -------------------------------------------------------------------------------------------

def test_image_folder(photos):
    ds = load_images(photos)
    assert isinstance(ds, ImageDataset) and ds.classes == ["cat", "dog", "owl"] and ds.task == "classification"
    assert len(ds) == 24 and np.bincount(ds.y).tolist() == [8, 8, 8]
    assert [Path(p).name for p, _ in ds.skipped] == ["broken.jpg"] and "not an image" in ds.skipped[0][1]
    assert ds.ignored == 2  # README.md and notes.txt; the checkpoint folder is not a class
    assert all(os.path.isabs(p) and Path(p).suffix in IMAGE_SUFFIXES for p in ds.X) and ds.X.dtype == object
    assert "24 images, 3 classes, 1 unreadable skipped, 2 non-image files ignored" in repr(ds)


def test_load_data_routes_folders_and_image_tables(photos, tmp_path):
    assert isinstance(load_data(photos), ImageDataset) and isinstance(load_data(str(photos)), ImageDataset)
    table = pd.DataFrame({"file": [f"photos/cat/cat_000{i}.png" for i in range(4)] + [f"photos/dog/dog_000{i}.png" for i in range(4)],
                          "kind": ["c"] * 4 + ["d"] * 4})
    table.to_csv(photos.parent/"t.csv", index=False)
    ds = load_data(photos.parent/"t.csv", target="kind", image="file")
    assert (ds.classes, ds.target, len(ds)) == (["c", "d"], "kind", 8)
    assert Path(ds.X[5]) == photos/"dog"/"dog_0001.png"  # relative to the table's folder
    assert load_data(str(photos.parent/"t.csv"), target="kind").tabular  # without image=: a plain table
    assert load_data("digits").X.shape[1:] == (1, 8, 8)  # names still win


def test_tables_of_paths(photos, tmp_path):
    rows = pd.DataFrame({"image": [str(photos/"cat"/"cat_0000.png"), "cat/cat_0001.png", "owl/broken.jpg", "dog/dog_0000.png"],
                         "label": ["cat", "cat", "owl", "dog"]})
    rows.to_csv(photos/"labels.csv", index=False); rows.to_parquet(photos/"labels.parquet")
    for f in ["labels.csv", "labels.parquet"]:
        ds = load_images(photos/f)
        assert (ds.classes, len(ds), len(ds.skipped)) == (["cat", "dog"], 3, 1)
    df = rows.assign(image=[str(photos/"cat"/"cat_0000.png")] * 4, label=[0.5, 1.5, 2.5, 3.5])
    assert load_images(df, task="regression").task == "regression"
    (photos/"labels.csv").unlink(); (photos/"labels.parquet").unlink()


def test_bad_image_data(tmp_path, photos):
    write_image_folder(tmp_path/"one", n_per_class=3, classes=["cat"])
    with pytest.raises(AimassError, match=r"a single class folder \('cat'\)"): load_images(tmp_path/"one")
    (tmp_path/"empty").mkdir()
    with pytest.raises(AimassError, match="No class folders in"): load_images(tmp_path/"empty")
    (tmp_path/"empty"/"a").mkdir(); (tmp_path/"empty"/"b").mkdir(); (tmp_path/"empty"/"b"/"x.png").write_bytes(encoded())
    with pytest.raises(AimassError, match=r"class folder .*empty/a has no images"): load_images(tmp_path/"empty")
    pd.DataFrame({"image": ["photos/cat/cat_0000.png", "photos/cat/missing.png"], "label": [0, 1]}).to_csv(tmp_path/"t.csv", index=False)
    (tmp_path/"photos").symlink_to(photos)
    with pytest.raises(AimassError, match="Row 1 of t.csv: no image file at photos/cat/missing.png"): load_images(tmp_path/"t.csv")
    with pytest.raises(AimassError, match="No column 'path'"): load_images(tmp_path/"t.csv", image="path")
    with pytest.raises(AimassError, match="Say which column holds the image paths"): load_data(pd.DataFrame({"a": ["x"], "b": [1]}), target="b", image="")
    with pytest.raises(AimassError, match="task='regression' does not fit"): load_images(photos, task="regression")


def test_split_is_stratified_seeded_and_names_a_small_class(tmp_path, photos):
    ds = load_images(photos)
    s = split(ds, seed=0)
    assert all(isinstance(part, ImageDataset) for part in (s.train, s.val, s.test))
    assert sorted(np.concatenate([s.train.X, s.val.X, s.test.X]).tolist()) == sorted(ds.X.tolist())
    assert min(np.bincount(s.test.y, minlength=3)) >= 1 and min(np.bincount(s.val.y, minlength=3)) >= 1  # stratified
    assert s.test.X.tolist() == split(ds, seed=0).test.X.tolist() and s.test.X.tolist() != split(ds, seed=1).test.X.tolist()
    small = write_image_folder(tmp_path/"small", n_per_class=6, classes=["a", "b"])
    for f in sorted((small/"b").iterdir())[2:]: f.unlink()
    with pytest.raises(AimassError, match="Class 'b' has 2 image"): split(load_images(small))


def test_fingerprint_and_subset(tmp_path):
    root = write_image_folder(tmp_path/"p", n_per_class=4)
    ds = load_images(root)
    fp = ds.fingerprint()
    assert len(fp) == 16 and load_images(root).fingerprint() == fp
    assert isinstance(ds.subset([0, 5]), ImageDataset) and ds.subset([0, 5]).root == ds.root
    os.utime(ds.X[0], ns=(1, 1))
    assert ds.fingerprint() != fp  # a changed file changes it


# --- the image Preprocessor ---------------------------------------------------------------------------------------

def test_image_preprocessor(photos):
    pre = Preprocessor.for_images(ImageProcessing.default(16))
    assert (pre.kind, pre.input_shape, pre.numeric_only) == ("image", (16, 16, 3), False)
    pre = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))  # plain JSON
    png = (photos/"cat"/"cat_0000.png").read_bytes()
    b64 = base64.b64encode(png).decode()
    rows = [photos/"cat"/"cat_0000.png", str(photos/"cat"/"cat_0000.png"), png, {"b64": b64}, {"image": {"b64": b64}},
            {"image": str(photos/"cat"/"cat_0000.png")}, Image.open(photos/"cat"/"cat_0000.png"), np.asarray(Image.open(photos/"cat"/"cat_0000.png"))]
    x = pre.transform(rows)
    assert (x.shape, x.dtype) == ((8, 16, 16, 3), np.uint8) and all(np.array_equal(x[0], xi) for xi in x)
    assert pre.transform(png).shape == (1, 16, 16, 3)  # one row
    assert pre.transform(pd.DataFrame({"image": [png, png], "id": [1, 2]})).shape == (2, 16, 16, 3)
    assert pre.transform([]).shape == (0, 16, 16, 3)
    sch = pre.schema
    assert (sch["kind"], sch["shape"], sch["dtype"], sch["max_pixels"]) == ("image", [16, 16, 3], "uint8", MAX_PIXELS) and "b64" in sch["row"]
    assert "image -> 16x16x3 uint8" in repr(pre)


def test_image_preprocessor_errors_name_the_row(photos):
    pre = Preprocessor.for_images(ImageProcessing.default(16))
    png = (photos/"cat"/"cat_0000.png").read_bytes()
    with pytest.raises(RowError, match="Row 2: the image is not an image Pillow can read") as e: pre.transform([png, png, b"nope"])
    assert e.value.row == 2 and isinstance(e.value, ImageError) and not isinstance(e.value, ImageTooLarge)
    with pytest.raises(RowError, match="Row 1: the image is truncated") as e: pre.transform([png, png[:len(png) // 2]])
    with pytest.raises(RowError, match=r'Row 0: an image row is \{"image": ...\}'): pre.transform([{"picture": 1}])
    buf = io.BytesIO(); Image.new("1", (10_000, 5_000)).save(buf, "PNG")
    with pytest.raises(ImageTooLarge) as e: pre.transform([png, buf.getvalue()])
    assert e.value.row == 1 and isinstance(e.value, RowError)


def test_fit_on_images_uses_their_size(photos):
    pre = Preprocessor.fit(split(load_images(photos)).train)
    assert pre.kind == "image" and pre.input_shape == (32, 32, 3) and pre.processing.source == "default"


# --- loading for training -----------------------------------------------------------------------------------------

def test_image_files_through_workers(photos):
    import torch
    from torch.utils.data import DataLoader
    ds = load_images(photos)
    p = ImageProcessing.default(24)
    files = ImageFiles(ds.X, ds.y, p)
    xb, yb = next(iter(DataLoader(files, batch_size=6, num_workers=2)))
    assert (xb.shape, xb.dtype, yb.dtype) == ((6, 24, 24, 3), torch.uint8, torch.int64)
    assert np.array_equal(xb[3].numpy(), p.prepare(ds.X[3])) and yb.tolist() == ds.y[:6].tolist()
    assert np.array_equal(ImageFiles(ds.X, ds.y, p, train=True)[0][0], files[0][0])  # train alone: no augmentation
    aug = ImageFiles(ds.X, ds.y, p, train=True, augment=True)
    assert not np.array_equal(aug[0][0], aug[0][0])
    assert not ImageFiles(ds.X, ds.y, p, train=False, augment=True).augment  # augment only when training
    assert 0 <= loader_workers() <= 8


def test_a_file_that_fails_later_is_named(tmp_path):
    from torch.utils.data import DataLoader
    png = encoded(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (tmp_path/"cut.png").write_bytes(png[:len(png) - 40])  # the header reads: the scan keeps it
    with pytest.raises(Exception, match=f"{tmp_path/'cut.png'} is truncated or corrupt"):
        next(iter(DataLoader(ImageFiles([tmp_path/"cut.png"], [0], ImageProcessing.default(8)), num_workers=1)))


def test_importing_images_is_light():
    out = subprocess.run([sys.executable, "-c", "import sys, aimass.images; print('torch' in sys.modules, 'PIL.Image' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_a_server_can_refuse_file_paths(photos):
    from aimass.images import _transform_images
    st = Preprocessor.for_images(ImageProcessing.default(8)).state
    png = (photos/"cat"/"cat_0000.png").read_bytes()
    assert _transform_images(st, [str(photos/"cat"/"cat_0000.png")]).shape == (1, 8, 8, 3)
    with pytest.raises(RowError, match="Row 1: send the image itself"): _transform_images(st, [png, {"image": str(photos/"cat"/"cat_0000.png")}], paths=False)
