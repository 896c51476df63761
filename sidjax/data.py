"""Datasets from TFDS as host arrays: normalise, label noise, shuffle, batch.

TFDS is the one source. On a machine without internet, Fashion-MNIST comes
from Debian's ``dataset-fashion-mnist`` package: its four IDX files differ
from upstream only in the gzip header, which ``restore_debian_fashion_mnist``
rewrites so the files are byte-identical to upstream; TFDS then prepares them
from ``manual_dir`` with its checksums verified. Any other archive can be
given the same way (``manual_dir`` holding the upstream files).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import struct
from collections.abc import Iterator

import chex
import jax
import jax.numpy as jnp
import numpy as np

# name -> (image shape, number of classes), known before any data is loaded
DATASET_INFO: dict[str, tuple[tuple[int, int, int], int]] = {
    "fashion_mnist": ((28, 28, 1), 10),
    "mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
}
DATASETS: tuple[str, ...] = tuple(DATASET_INFO)
# Debian's dataset-fashion-mnist; override with $SIDJAX_FASHION_MNIST_DIR.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# Upstream gzip MTIMEs, from the original Fashion-MNIST archives.
_FASHION_MNIST_MTIME = {"train": 1504176606, "t10k": 1504176627}


class DatasetUnavailableError(RuntimeError):
    """The dataset can neither be loaded from disk nor downloaded."""


FOLDER_PREFIX = "folder:"  # dataset "folder:/path": root/{train,test}/<class>/<image files>


def is_image_folder(name: str) -> bool:
    return name.startswith(FOLDER_PREFIX)


def dataset_info(name: str, image_size: int = 64) -> tuple[tuple[int, int, int], int]:
    """``(input_shape, num_classes)`` of a named dataset or of an image folder.

    An image folder (``"folder:/path"``, e.g. Tiny-ImageNet) holds ``train/``
    and ``test/``, each with one sub-directory of images per class; its images
    are resized to ``image_size`` x ``image_size`` x 3.

    Raises:
      ValueError: an unknown name.
      DatasetUnavailableError: a folder without that layout.
    """
    if not is_image_folder(name):
        if name not in DATASET_INFO:
            raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS} or folder:/path")
        return DATASET_INFO[name]
    root = name[len(FOLDER_PREFIX) :]
    splits = [os.path.join(root, split) for split in ("train", "test")]
    classes = [
        sorted(d for d in os.listdir(s) if os.path.isdir(os.path.join(s, d))) if os.path.isdir(s) else []
        for s in splits
    ]
    if not classes[0] or not classes[1]:
        raise DatasetUnavailableError(
            f"{root}: an image folder needs train/ and test/, each with one sub-directory of images per class"
        )
    return (image_size, image_size, 3), len(set(classes[0]) | set(classes[1]))


def _load_image_folder(root: str, image_size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """uint8 arrays of an image folder (``tfds.ImageFolder``), resized to ``image_size``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = tfds.ImageFolder(root, shape=(None, None, 3))

    def resize(image, label):
        image = tf.image.resize(image, (image_size, image_size), antialias=True)
        return tf.cast(tf.round(image), tf.uint8), label

    arrays = {}
    for split in ("train", "test"):
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False).map(resize)
        chunks = list(tfds.as_numpy(ds.batch(8192)))
        arrays[split] = (np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))
    return arrays


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset as host arrays.

    Attributes:
      name: TFDS name.
      train_images, test_images: float32 ``[num, H, W, C]``, normalised per
        channel with the training set's mean and std.
      train_labels, test_labels: int32 ``[num]``.
      num_classes: N.
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])


def restore_debian_fashion_mnist(src_dir: str, dst_dir: str) -> str:
    """Writes Debian's Fashion-MNIST files with their upstream gzip headers.

    Debian dropped the FNAME field and reset MTIME; restoring both gives the
    exact upstream bytes (and TFDS's registered checksums).

    Args:
      src_dir: directory of Debian's four ``*-ubyte.gz`` files.
      dst_dir: where to write the restored files.

    Returns:
      ``dst_dir``.
    """
    os.makedirs(dst_dir, exist_ok=True)
    for split in ("train", "t10k"):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{split}-{kind}-ubyte.gz"
            dst = os.path.join(dst_dir, name)
            if os.path.exists(dst):
                continue
            with open(os.path.join(src_dir, name), "rb") as f:
                raw = f.read()
            if raw[:2] != b"\x1f\x8b":
                raise DatasetUnavailableError(f"{src_dir}/{name} is not a gzip file")
            flags = raw[3]
            if flags & 0x08:  # already carries a file name: copy unchanged
                restored = raw
            else:
                header = raw[:3] + bytes([flags | 0x08])
                header += struct.pack("<I", _FASHION_MNIST_MTIME[split]) + raw[8:10]
                restored = header + name[:-3].encode() + b"\x00" + raw[10:]
            tmp = dst + ".tmp"
            with open(tmp, "wb") as f:
                f.write(restored)
            os.replace(tmp, dst)
    return dst_dir


def _debian_fashion_mnist_dir() -> str | None:
    path = os.environ.get("SIDJAX_FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST_DIR)
    has_all = all(
        os.path.exists(os.path.join(path, f"{s}-{k}-ubyte.gz"))
        for s in ("train", "t10k")
        for k in ("images-idx3", "labels-idx1")
    )
    return path if has_all else None


def _unavailable_message(name: str, err: Exception) -> str:
    hint = (
        "install Debian's package (apt-get install -y dataset-fashion-mnist) or "
        if name == "fashion_mnist"
        else ""
    )
    return (
        f"dataset {name!r} is not prepared and could not be downloaded "
        f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}). "
        f"Connect to the internet, {hint}or pass manual_dir (--manual-dir) holding the "
        f"upstream archives (file names in tensorflow_datasets/url_checksums/{name}.txt)."
    )


def load_tfds_arrays(
    name: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    download_retries: int = 0,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Loads a TFDS image-classification dataset as uint8 host arrays.

    Args:
      name: one of ``DATASETS``.
      data_dir: TFDS data directory (default: TFDS's, ``$TFDS_DATA_DIR``).
      manual_dir: directory with the upstream archives, for offline machines.
        For Fashion-MNIST, Debian's files are used automatically if present.
      download_retries: retries of a failed download. TFDS's own default
        retries for ~200 s; 0 makes an offline machine fail in well under a
        second.

    Returns:
      ``{"train": (images, labels), "test": (images, labels)}``.

    Raises:
      ValueError: unknown name.
      DatasetUnavailableError: not prepared, and neither downloadable nor in
        ``manual_dir``.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ logs quiet
    import tensorflow_datasets as tfds  # heavy: imported only when data is needed
    from tensorflow_datasets.core.download import downloader

    logging.getLogger("absl").setLevel(logging.WARNING)
    tfds.disable_progress_bar()
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        if manual_dir is None and name == "fashion_mnist" and _debian_fashion_mnist_dir():
            manual_dir = restore_debian_fashion_mnist(
                _debian_fashion_mnist_dir(),
                os.path.join(builder.data_dir_root, "manual", "fashion_mnist_debian"),
            )
        previous = downloader.MAX_RETRIES
        downloader.MAX_RETRIES = download_retries
        try:
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
        except Exception as err:  # TFDS raises many types; all mean "not available"
            raise DatasetUnavailableError(_unavailable_message(name, err)) from err
        finally:
            downloader.MAX_RETRIES = previous
    return {split: _read_split(tfds, builder, split) for split in ("train", "test")}


def _read_split(tfds, builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    # Chunked reads: batch_size=-1 crashes TensorFlow on mocked (generator) data.
    chunks = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True).batch(8192)))
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


def load_dataset(
    name: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    download_retries: int = 0,
    image_size: int = 64,
) -> Dataset:
    """Loads a dataset (see ``load_tfds_arrays``, or an image folder: see
    ``dataset_info``) and normalises it per channel.

    Returns:
      A ``Dataset`` with float32 images normalised by the training set's
      per-channel mean and std.
    """
    input_shape, num_classes = dataset_info(name, image_size)
    if is_image_folder(name):
        arrays = _load_image_folder(name[len(FOLDER_PREFIX) :], image_size)
    else:
        arrays = load_tfds_arrays(name, data_dir, manual_dir, download_retries)
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    train_x = train_x.astype(np.float32) / 255.0
    test_x = test_x.astype(np.float32) / 255.0
    mean = train_x.mean(axis=(0, 1, 2))
    std = train_x.std(axis=(0, 1, 2)) + 1e-8
    return Dataset(
        name,
        (train_x - mean) / std,
        train_y.astype(np.int32),
        (test_x - mean) / std,
        test_y.astype(np.int32),
        num_classes,
    )


def symmetric_label_noise(
    labels: np.ndarray, rate: float, num_classes: int, seed: int
) -> tuple[np.ndarray, float]:
    """Flips each label with probability ``rate`` to a different class, uniformly.

    Args:
      labels: int ``[num]``.
      rate: flip probability in [0, 1].
      num_classes: N >= 2.
      seed: the noise's own seed.

    Returns:
      ``(noisy_labels [num], realised_flip_rate)``.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"label noise rate must lie in [0, 1], got {rate}")
    rng = np.random.default_rng(seed)
    flip = rng.random(len(labels)) < rate
    # an offset in 1..N-1 lands uniformly on the other N-1 classes
    offset = rng.integers(1, num_classes, size=len(labels))
    noisy = np.where(flip, (labels + offset) % num_classes, labels).astype(labels.dtype)
    return noisy, float((noisy != labels).mean()) if len(labels) else 0.0


def epoch_batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled full batches for one epoch (the last partial batch is dropped).

    The order depends only on ``(seed, epoch)``, so a run is reproducible and
    can be resumed at an epoch boundary.

    Yields:
      ``(images [batch_size, ...], labels [batch_size])``.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(labels))
    for start in range(0, len(order) - batch_size + 1, batch_size):
        idx = order[start : start + batch_size]
        yield images[idx], labels[idx]


def random_crop_flip(key: chex.PRNGKey, images: chex.Array, padding: int = 4) -> chex.Array:
    """CIFAR augmentation on device: random crop after zero padding, random h-flip.

    Args:
      key: PRNG key.
      images: ``[B, H, W, C]``.
      padding: pixels of zero padding on each side before the crop.

    Returns:
      ``[B, H, W, C]``.
    """
    b, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * padding + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (b,))

    def one(image, offset, flip):
        crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
        return jnp.where(flip, crop[:, ::-1, :], crop)

    return jax.vmap(one)(padded, offsets, flips)
