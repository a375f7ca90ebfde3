"""bench/bench_images.py compares like with like: its hand-written baselines prepare images exactly as aimass's
evaluation transform does (so the serving comparison does the same work on each side), and its hand-written
fine-tuning loop trains on the same split that aimass.train makes."""
import sys
from pathlib import Path
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]/"bench"))
import bench_images as b


def test_the_baselines_prepare_images_as_aimass_evaluation_does(tmp_path):
    from aimass.images import ImageProcessing, open_image
    proc = ImageProcessing.from_pretrained(b.PROCESSOR)  # microsoft/resnet-18's: resize 256, center crop 224
    files = b.files_of(b.write_images(tmp_path/"photos", n_per_class=1, size=64, classes=2))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 451, 3), dtype=np.uint8)).save(tmp_path/"wide.jpg")  # not square
    for f in files + [str(tmp_path/"wide.jpg")]:
        np.testing.assert_array_equal(b.hand_prepare(f), proc.prepare(open_image(f)))


def test_the_hand_written_loop_trains_on_aimass_split(tmp_path):
    from aimass.images import load_images
    from aimass.data import split
    photos = b.write_images(tmp_path/"photos", n_per_class=8, size=40)
    sp = split(load_images(photos))
    (tr, _), (va, _), (te, _), classes = b.split_files(b.files_of(photos))
    assert (tr, va, te) == (list(sp.train.X), list(sp.val.X), list(sp.test.X))
    assert classes == sp.train.classes
