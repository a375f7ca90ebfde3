"""A user's own image model for the serving tests, as a user module would hold it: `TinyPixels` takes uint8 pixels
`(N, H, W, 3)` (the contract's "models take pixels"), converts and normalises them itself, then one conv and a linear
head. `make_pixel_version` trains it briefly on an image folder and registers it the way `aimass.train` stores a
version: a card with the "image" Preprocessor and a class spec, the weights, and `heldout.npz` holding the held-out
images as file paths (decoded by the version's own Preprocessor wherever they are used).

    from factory import write_image_folder
    from tiny_pixels import make_pixel_version
    mv = make_pixel_version(write_image_folder(tmp/"digits", n_per_class=40))   # digits-pixels:v1
"""
from pathlib import Path
import numpy as np
import torch
from torch import nn

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class TinyPixels(nn.Module):
    "uint8 `(N, H, W, 3)` -> float, NCHW, normalised -> conv -> 4x4 average pool -> linear: class logits."
    def __init__(self, num_classes: int = 3, mean=IMAGENET_MEAN, std=IMAGENET_STD, channels: int = 8):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.conv = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.head = nn.Linear(channels * 16, num_classes)

    def forward(self, pixels):
        x = (pixels.permute(0, 3, 1, 2).float() - self.mean) / self.std
        x = self.pool(torch.relu(self.conv(x)))
        return self.head(x.flatten(1))


def image_files(folder) -> tuple:
    "`(paths, labels, classes)` of an ImageFolder-layout folder, sorted."
    classes = sorted(p.name for p in Path(folder).iterdir() if p.is_dir())
    paths = [(str(f), k) for k, c in enumerate(classes) for f in sorted((Path(folder)/c).iterdir()) if f.is_file()]
    return [p for p, _ in paths], np.array([k for _, k in paths], np.int64), classes


def make_pixel_version(folder, name: str = "digits-pixels", size: int = 32, epochs: int = 40, test_every: int = 4, seed: int = 0):
    "Train `TinyPixels` on the images in `folder` (every `test_every`-th one held out) and register it as `name`."
    from aimass.data import Preprocessor
    from aimass.images import ImageProcessing
    paths, y, classes = image_files(folder)
    test = np.arange(len(paths)) % test_every == 0
    proc = ImageProcessing.default(size=size)
    pre = Preprocessor.for_images(proc)
    kwargs = {"num_classes": len(classes), "mean": list(proc.mean), "std": list(proc.std)}
    from factory import register_trained_module
    return register_trained_module(name, TinyPixels, kwargs, pre, list(paths), y, classes, test, lr=1e-2, epochs=epochs,
                                   seed=seed, data_name=Path(folder).name)
