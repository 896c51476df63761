"""Datasets: read without TensorFlow, kept as uint8, put on the device once.

Sources, tried in this order:

* the original files, read with numpy and checked against their published
  checksums (``sidjax.data.files``): Fashion-MNIST offline from Debian's
  ``dataset-fashion-mnist``, or any built-in dataset from ``manual_dir``;
* TFDS, read through its TF-free ``data_source`` (``sidjax.data.tfds_source``);
* an image folder, ``"folder:/root"`` (``sidjax.data.folders``);
* your own arrays: ``Dataset.from_arrays``.

``sidjax.data.device`` orders an epoch and builds its batches on the device;
``sidjax.train.epoch`` decides whether a split lives there or streams.
"""

from __future__ import annotations

from typing import NamedTuple

from sidjax.data.dataset import Dataset, channel_stats, symmetric_label_noise
from sidjax.data.device import epoch_order, normalised_batch, random_crop_flip
from sidjax.data.files import (
    DEBIAN_FASHION_MNIST_DIR,
    NUM_CLASSES,
    SOURCES,
    DatasetUnavailableError,
    find_files,
    read_files,
)
from sidjax.data.folders import FOLDER_PREFIX, folder_listing, is_image_folder, read_image_folder
from sidjax.data.tfds_source import read_tfds
from sidjax.errors import ConfigError


class DatasetInfo(NamedTuple):
    """What is known of a dataset before it is loaded."""

    input_shape: tuple[int, ...]
    num_classes: int
    num_train: int
    num_test: int


DATASET_INFO: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo((28, 28, 1), 10, 60_000, 10_000),
    "mnist": DatasetInfo((28, 28, 1), 10, 60_000, 10_000),
    "cifar10": DatasetInfo((32, 32, 3), 10, 50_000, 10_000),
    "cifar100": DatasetInfo((32, 32, 3), 100, 50_000, 10_000),
}
DATASETS: tuple[str, ...] = tuple(DATASET_INFO)


def dataset_info(name: str, image_size: int = 64) -> DatasetInfo:
    """Shape, classes and split sizes of a built-in dataset or an image folder, before loading it.

    Raises:
      ConfigError: an unknown name.
      DatasetUnavailableError: an image folder that is not laid out as it
        must be (the message names the folder).
    """
    if is_image_folder(name):
        classes, listing = folder_listing(name[len(FOLDER_PREFIX) :])
        return DatasetInfo(
            (image_size, image_size, 3), len(classes), len(listing["train"]), len(listing["test"])
        )
    if name not in DATASET_INFO:
        raise ConfigError(
            f"dataset must be one of {DATASETS} or folder:/path/to/images, got {name!r} "
            "(or pass your own arrays: sidjax.Dataset.from_arrays)",
            "dataset",
        )
    return DATASET_INFO[name]


def load_dataset(
    name: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    download_retries: int = 0,
    image_size: int = 64,
) -> Dataset:
    """Loads a dataset as uint8 host arrays with its per-channel statistics.

    Args:
      name: one of ``DATASETS``, or ``"folder:/root"``.
      data_dir: TFDS data directory, where TFDS is the source.
      manual_dir: a directory holding the dataset's original files.
      download_retries: TFDS download retries (0: fail at once offline).
      image_size: image folders are resized to this.

    Raises:
      ConfigError: an unknown name.
      DatasetUnavailableError: one line saying what is missing and what to do.
    """
    dataset_info(name, image_size)
    if is_image_folder(name):
        return read_image_folder(name, image_size)
    directory = find_files(name, manual_dir)
    if directory is not None:
        return read_files(name, directory)
    return read_tfds(name, data_dir, None, download_retries)


__all__ = [
    "DATASETS",
    "DATASET_INFO",
    "DEBIAN_FASHION_MNIST_DIR",
    "FOLDER_PREFIX",
    "NUM_CLASSES",
    "SOURCES",
    "Dataset",
    "DatasetInfo",
    "DatasetUnavailableError",
    "channel_stats",
    "dataset_info",
    "epoch_order",
    "is_image_folder",
    "load_dataset",
    "normalised_batch",
    "random_crop_flip",
    "read_files",
    "symmetric_label_noise",
]
