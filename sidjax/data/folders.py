"""Image-folder datasets (e.g. Tiny-ImageNet): ``root/{train,test}/<class>/<image files>``.

Images are decoded with Pillow, converted to RGB and resized to
``image_size`` x ``image_size`` (bilinear, antialiased when shrinking). The
uint8 arrays are cached under ``$SIDJAX_CACHE_DIR`` (default
``~/.cache/sidjax``), keyed by a digest of every image's path, size and
modification time, so any change to the folder builds a new cache.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from sidjax.data.dataset import Dataset, channel_stats
from sidjax.data.files import DatasetUnavailableError

FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


def is_image_folder(name: str) -> bool:
    return name.startswith(FOLDER_PREFIX)


def folder_listing(root: str) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """``(classes, {split: [(path, class index)]})``, checked.

    Raises:
      DatasetUnavailableError: no ``train/`` or ``test/``, a class folder
        without images, or a class present in one split only (named).
    """
    splits = {s: os.path.join(root, s) for s in ("train", "test")}
    if not all(os.path.isdir(p) for p in splits.values()):
        raise DatasetUnavailableError(
            f"{root}: an image folder needs train/ and test/, each with one sub-directory of images per class"
        )
    found = {
        s: sorted(d for d in os.listdir(p) if os.path.isdir(os.path.join(p, d))) for s, p in splits.items()
    }
    only = {s: sorted(set(found[s]) - set(found[o])) for s, o in (("train", "test"), ("test", "train"))}
    for split, classes in only.items():
        if classes:
            raise DatasetUnavailableError(
                f"{root}: class {classes[0]!r} has a folder in {split}/ only; give it both"
            )
    classes = found["train"]
    if not classes:
        raise DatasetUnavailableError(f"{root}: train/ has no class folders")
    listing = {}
    for split, path in splits.items():
        listing[split] = []
        for index, name in enumerate(classes):
            folder = os.path.join(path, name)
            images = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))
            if not images:
                raise DatasetUnavailableError(
                    f"{folder}: an empty class folder (no {'/'.join(IMAGE_SUFFIXES)} files)"
                )
            listing[split] += [(os.path.join(folder, f), index) for f in images]
    return classes, listing


def read_image_folder(name: str, image_size: int) -> Dataset:
    """The folder dataset ``"folder:/root"``, every image resized to ``image_size`` squared."""
    root = name[len(FOLDER_PREFIX) :]
    classes, listing = folder_listing(root)
    cache = _cache_path(listing, image_size)
    if os.path.exists(cache):
        with np.load(cache) as saved:
            arrays = {s: (saved[f"{s}_x"], saved[f"{s}_y"]) for s in ("train", "test")}
    else:
        arrays = {s: _decode(files, image_size) for s, files in listing.items()}
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = cache + f".{os.getpid()}.tmp.npz"
        np.savez(tmp, **{f"{s}_{k}": a for s, (x, y) in arrays.items() for k, a in (("x", x), ("y", y))})
        os.replace(tmp, cache)
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    mean, std = channel_stats(train_x)
    return Dataset(name, train_x, train_y, test_x, test_y, len(classes), mean, std, source=root)


def _decode(files: list[tuple[str, int]], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    images = np.empty((len(files), image_size, image_size, 3), np.uint8)
    for i, (path, _) in enumerate(files):
        try:
            with Image.open(path) as image:
                image = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
                images[i] = np.asarray(image)
        except Exception as err:  # Pillow raises several types for a bad file
            raise DatasetUnavailableError(
                f"{path}: not a readable image ({type(err).__name__}: {err})"
            ) from None
    return images, np.asarray([c for _, c in files], np.int32)


def _cache_path(listing: dict, image_size: int) -> str:
    digest = hashlib.sha256(str(image_size).encode())
    for split in ("train", "test"):
        for path, index in listing[split]:
            stat = os.stat(path)
            digest.update(f"{split}\0{path}\0{index}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    cache_dir = os.environ.get("SIDJAX_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "sidjax"))
    return os.path.join(cache_dir, f"folder-{digest.hexdigest()[:24]}.npz")
