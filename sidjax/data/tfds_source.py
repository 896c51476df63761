"""Datasets through TFDS, for those whose original files are not on disk.

Reading never needs TensorFlow: sidjax prepares TFDS datasets in the
array_record format and reads them with ``tfds.data_source``. Preparing does
need TensorFlow (TFDS's generators encode images with it): where it is
missing, the error names the ``[tf]`` extra. A dataset an older run prepared
in the tfrecord format is read with TensorFlow where it is installed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os

import numpy as np

from sidjax.data.dataset import Dataset, channel_stats
from sidjax.data.files import SOURCES, DatasetUnavailableError

TF_EXTRA = "pip install 'sidjax[tf]'"


def _files_hint(name: str) -> str:
    files = ", ".join(f.name for f in SOURCES.get(name, ()))
    if not files:
        return ""
    debian = "install Debian's dataset-fashion-mnist, " if name == "fashion_mnist" else ""
    return f"or {debian}pass --manual-dir DIR holding the original files ({files})"


def read_tfds(name: str, data_dir: str | None, manual_dir: str | None, download_retries: int = 0) -> Dataset:
    """``name`` through TFDS: prepared once (needs TensorFlow), read without it.

    Args:
      name: a TFDS image-classification dataset with ``image`` and ``label``.
      data_dir: TFDS data directory (default: TFDS's, ``$TFDS_DATA_DIR``).
      manual_dir: archives TFDS may prepare from, for offline machines.
      download_retries: retries of a failed download (TFDS's own default
        retries for ~200 s; 0 makes an offline machine fail in under a second).

    Raises:
      DatasetUnavailableError: one line saying what to install or pass.
    """
    if importlib.util.find_spec("tensorflow_datasets") is None:
        raise DatasetUnavailableError(
            f"{name}: its original files were not found and tensorflow-datasets is not installed; "
            f"{TF_EXTRA} {_files_hint(name)}".strip()
        )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ logs quiet
    import tensorflow_datasets as tfds  # heavy: imported only when this source is used

    logging.getLogger("absl").setLevel(logging.ERROR)  # TFDS warns about what the error line says
    tfds.disable_progress_bar()
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        legacy = tfds.builder(name, data_dir=data_dir)  # prepared by an older version as tfrecord?
        if legacy.is_prepared():
            return _from_tfrecord(name, tfds, legacy)
        _prepare(name, tfds, builder, manual_dir, download_retries)
    arrays = {}
    for split in ("train", "test"):
        source = builder.as_data_source(split=split)
        records = [source[i] for i in range(len(source))]
        arrays[split] = (np.stack([r["image"] for r in records]), np.asarray([r["label"] for r in records]))
    return _dataset(name, builder, arrays)


def _prepare(name, tfds, builder, manual_dir, retries) -> None:
    if importlib.util.find_spec("tensorflow") is None:
        raise DatasetUnavailableError(
            f"{name} is not prepared, and preparing it with TFDS needs TensorFlow: {TF_EXTRA} {_files_hint(name)}".strip()
        )
    from tensorflow_datasets.core.download import downloader

    previous, downloader.MAX_RETRIES = downloader.MAX_RETRIES, retries
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints its progress; errors get one line
            builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except Exception as err:  # TFDS raises many types; all mean "not available"
        reason = (
            "no network"
            if isinstance(err, ConnectionError) or "Connection" in type(err).__name__
            else _short(err)
        )
        hint = _files_hint(name) or "or pass --manual-dir DIR with the archives TFDS expects"
        raise DatasetUnavailableError(
            f"{name} is not prepared and could not be downloaded ({reason}); connect to the internet, {hint}"
        ) from err
    finally:
        downloader.MAX_RETRIES = previous


def _short(err: Exception) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text[:120].rsplit(' ', 1)[0] if len(text) > 120 else text}"


def _from_tfrecord(name, tfds, builder) -> Dataset:
    if importlib.util.find_spec("tensorflow") is None:
        raise DatasetUnavailableError(
            f"{name} was prepared as tfrecord in {builder.data_dir}, which needs TensorFlow to read: {TF_EXTRA}, "
            "or delete that directory to prepare it again as array_record"
        )
    arrays = {}
    for split in ("train", "test"):
        # Chunked reads: batch_size=-1 crashes TensorFlow on mocked (generator) data.
        chunks = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True).batch(8192)))
        arrays[split] = (np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))
    return _dataset(name, builder, arrays)


def _dataset(name, builder, arrays) -> Dataset:
    (train_x, train_y), (test_x, test_y) = arrays["train"], arrays["test"]
    mean, std = channel_stats(train_x)
    num_classes = builder.info.features["label"].num_classes
    return Dataset(
        name, train_x, train_y.astype(np.int32), test_x, test_y.astype(np.int32), num_classes, mean, std,
        source=f"tfds:{builder.data_dir}",
    )  # fmt: skip
