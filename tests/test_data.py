"""Data without TensorFlow: original files verified by checksum, TFDS's data_source, folders, on-device batches."""

import gzip
import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sidjax
from sidjax import ConfigError
from sidjax.data import (
    DEBIAN_FASHION_MNIST_DIR,
    SOURCES,
    Dataset,
    DatasetUnavailableError,
    dataset_info,
    epoch_order,
    load_dataset,
    normalised_batch,
    random_crop_flip,
    symmetric_label_noise,
)
from sidjax.data.files import IDX, SourceFile


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4])
def test_symmetric_label_noise_rate_and_targets(rate):
    labels = np.random.default_rng(0).integers(0, 10, 50_000).astype(np.int32)
    noisy, realised = symmetric_label_noise(labels, rate, 10, seed=1)
    assert abs(realised - rate) < 0.01
    assert realised == pytest.approx(float((noisy != labels).mean()))
    if rate:  # flips land on the other classes uniformly
        counts = np.bincount((noisy - labels)[noisy != labels] % 10, minlength=10)
        assert counts[0] == 0 and counts[1:].min() > 0.8 * counts[1:].mean()
    np.testing.assert_array_equal(noisy, symmetric_label_noise(labels, rate, 10, seed=1)[0])


def test_epoch_order_is_a_seeded_permutation_of_full_batches():
    order = epoch_order(10, 3, seed=0, epoch=1)
    assert order.shape == (3, 3) and order.dtype == np.int32 and len(set(order.ravel())) == 9
    np.testing.assert_array_equal(order, epoch_order(10, 3, 0, 1))
    assert not np.array_equal(order, epoch_order(10, 3, 0, 2)) and not np.array_equal(
        order, epoch_order(10, 3, 1, 1)
    )


def test_batches_are_gathered_and_normalised_on_the_device_as_on_the_host():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8), rng.integers(0, 5, 20)
    dataset = Dataset.from_arrays(images, labels, images[:4], labels[:4])
    expected = (images.astype(np.float32) / 255.0 - dataset.mean) / dataset.std  # the formula, on the host
    np.testing.assert_array_equal(dataset.normalise(images), expected)
    idx = np.array([3, 7, 1], np.int32)
    x, y = jax.jit(lambda im, lb, i: normalised_batch(dataset, im, lb, i))(
        jnp.asarray(images), jnp.asarray(labels), idx
    )
    np.testing.assert_array_equal(np.asarray(x), expected[idx])  # bit for bit
    np.testing.assert_array_equal(np.asarray(y), labels[idx])


def test_random_crop_flip_is_a_padded_crop_or_its_mirror():
    images = jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
    out = jax.jit(random_crop_flip)(jax.random.key(1), images)
    chex.assert_shape(out, images.shape)
    padded = jnp.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for b in range(16):
        crops = [padded[b, i : i + 8, j : j + 8] for i in range(9) for j in range(9)]
        assert any(bool(jnp.array_equal(out[b], c)) for c in crops + [c[:, ::-1] for c in crops])
    assert not bool(jnp.array_equal(out, images))


@pytest.fixture
def debian_dir():
    if not os.path.isdir(DEBIAN_FASHION_MNIST_DIR):
        if os.environ.get("CI"):
            pytest.fail(
                "CI must install Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)"
            )
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    return DEBIAN_FASHION_MNIST_DIR


def test_fashion_mnist_reads_from_debian_files_without_tensorflow(debian_dir, fashion_mnist):
    assert fashion_mnist.source == debian_dir
    assert (
        fashion_mnist.train_images.shape == (60_000, 28, 28, 1)
        and fashion_mnist.train_images.dtype == np.uint8
    )
    assert fashion_mnist.test_images.shape == (10_000, 28, 28, 1)
    assert np.bincount(fashion_mnist.train_labels).tolist() == [6000] * 10
    assert fashion_mnist.mean == pytest.approx([0.2860], abs=1e-4)


def _restore_upstream_header(raw: bytes, name: str) -> bytes:
    """Debian rewrote the gzip header (dropped FNAME, reset MTIME); the original archives carry both."""
    mtime = {"train": 1504176606, "t10k": 1504176627}[name.split("-")[0]]
    header = raw[:3] + bytes([raw[3] | 0x08]) + struct.pack("<I", mtime) + raw[8:10]
    return header + name[:-3].encode() + b"\x00" + raw[10:]


def test_original_archives_and_debian_files_both_verify_and_damage_is_named(debian_dir, tmp_path):
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    for name in IDX:
        (upstream / name).write_bytes(
            _restore_upstream_header((open(f"{debian_dir}/{name}", "rb").read()), name)
        )
        assert (
            hashlib.sha256((upstream / name).read_bytes()).hexdigest()
            == SOURCES["fashion_mnist"][IDX.index(name)].sha256
        )
    assert load_dataset("fashion_mnist", manual_dir=str(upstream)).train_images.shape == (60_000, 28, 28, 1)
    damaged = tmp_path / "damaged"
    shutil.copytree(debian_dir, damaged)
    raw = bytearray((damaged / IDX[2]).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (damaged / IDX[2]).write_bytes(bytes(raw))
    with pytest.raises(DatasetUnavailableError, match=f"{damaged}/{IDX[2]} is (damaged|not the original)"):
        load_dataset("fashion_mnist", manual_dir=str(damaged))
    os.remove(damaged / IDX[3])
    with pytest.raises(DatasetUnavailableError, match=f"{damaged} lacks {IDX[3]}"):
        load_dataset("fashion_mnist", manual_dir=str(damaged))
    with pytest.raises(DatasetUnavailableError, match="is not a directory"):
        load_dataset("fashion_mnist", manual_dir=str(tmp_path / "nowhere"))


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes())


def _register(monkeypatch, name, directory):
    """Registers the checksums of the small files written here (the real ones are the originals')."""
    files = tuple(
        SourceFile(f.name, hashlib.sha256((directory / f.name).read_bytes()).hexdigest())
        for f in SOURCES[name]
    )
    monkeypatch.setitem(SOURCES, name, files)


def test_mnist_and_cifar_read_from_their_original_formats(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    arrays = [rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 10, 6), rng.integers(0, 256, (4, 28, 28)),
              rng.integers(0, 10, 4)]  # fmt: skip
    for name, array in zip(IDX, arrays, strict=True):
        (mnist / name).write_bytes(_idx(array))
    _register(monkeypatch, "mnist", mnist)
    data = load_dataset("mnist", manual_dir=str(mnist))
    np.testing.assert_array_equal(data.train_images[..., 0], arrays[0])
    np.testing.assert_array_equal(data.test_labels, arrays[3])
    for name, label_bytes in (("cifar10", 1), ("cifar100", 2)):
        images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, 7).astype(np.uint8)
        records = [
            bytes([9] * (label_bytes - 1) + [int(y)]) + x.transpose(2, 0, 1).tobytes()
            for x, y in zip(images, labels, strict=True)
        ]
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            parts = {
                "data_batch_1.bin": records[:3],
                "data_batch_2.bin": records[3:5],
                "test_batch.bin": records[5:],
            }
            if name == "cifar100":
                parts = {"train.bin": records[:5], "test.bin": records[5:]}
            for member, chunk in parts.items():
                blob = b"".join(chunk)
                info = tarfile.TarInfo(f"{name}-batches-bin/{member}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        directory = tmp_path / name
        directory.mkdir()
        (directory / SOURCES[name][0].name).write_bytes(archive.getvalue())
        _register(monkeypatch, name, directory)
        data = load_dataset(name, manual_dir=str(directory))
        np.testing.assert_array_equal(data.train_images, images[:5])  # channels last, in the archive's order
        np.testing.assert_array_equal(data.test_labels, labels[5:])
        assert data.num_classes == (100 if name == "cifar100" else 10)


def test_tfds_datasets_are_read_through_data_source(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12):
        data = load_dataset("mnist", data_dir=str(tmp_path))  # no original files given: TFDS
    assert data.source.startswith("tfds:") and data.train_images.shape == (12, 28, 28, 1)
    assert data.train_images.dtype == np.uint8


def test_without_tensorflow_the_error_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith("tensorflow") else real(name, *a),
    )
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("cifar10", data_dir=str(tmp_path))
    message = str(err.value)
    assert (
        "pip install 'sidjax[tf]'" in message and "cifar-10-binary.tar.gz" in message and "\n" not in message
    )


def test_offline_download_fails_fast_with_one_line(tmp_path, monkeypatch):
    """No network is used: the download itself fails as it does on an offline machine."""
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", offline)
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as err:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert (
        "cifar10" in message and "no network" in message and "--manual-dir" in message and "\n" not in message
    )


def test_unknown_dataset_is_refused():
    with pytest.raises(ConfigError, match="dataset must be one of"):
        load_dataset("imagenet5")


def _image_folder(root, sizes=((10, 12), (7, 9), (16, 16))):
    """root/{train,test}/<class>/*.png with images of several sizes; class k has brightness 80k."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for k, name in enumerate(("ant", "bee", "cat")):
            os.makedirs(root / split / name)
            for i in range(n):
                h, w = sizes[i % len(sizes)]
                pixels = np.clip(80 * k + rng.integers(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return f"folder:{root}"


def test_image_folder_is_resized_labelled_and_cached_by_its_listing(tmp_path, monkeypatch):
    monkeypatch.setenv("SIDJAX_CACHE_DIR", str(tmp_path / "cache"))
    name = _image_folder(tmp_path / "imgs")
    assert dataset_info(name, image_size=8)[:4] == ((8, 8, 3), 3, 12, 6)
    data = load_dataset(name, image_size=8)
    assert data.train_images.shape == (12, 8, 8, 3) and data.test_images.shape == (6, 8, 8, 3)
    assert sorted(np.bincount(data.train_labels).tolist()) == [4, 4, 4]
    means = [data.train_images[data.train_labels == k].mean() for k in range(3)]
    assert means == sorted(means)  # labels follow the folders, in sorted order
    assert len(os.listdir(tmp_path / "cache")) == 1
    np.testing.assert_array_equal(load_dataset(name, image_size=8).train_images, data.train_images)
    os.utime(tmp_path / "imgs" / "train" / "ant" / "0.png", ns=(1, 1))  # a changed file: a new cache
    load_dataset(name, image_size=8)
    assert len(os.listdir(tmp_path / "cache")) == 2


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda r: [os.remove(p) for p in (r / "train" / "bee").iterdir()], "bee: an empty class folder"),
        (lambda r: shutil.rmtree(r / "train" / "cat"), "class 'cat' has a folder in test/ only"),
        (
            lambda r: (r / "test" / "ant" / "1.png").write_bytes(b"not a png"),
            "ant/1.png: not a readable image",
        ),
        (lambda r: shutil.rmtree(r / "test"), "an image folder needs train/ and test/"),
    ],
)
def test_bad_image_folders_are_named(tmp_path, damage, message, monkeypatch):
    monkeypatch.setenv("SIDJAX_CACHE_DIR", str(tmp_path / "cache"))
    name = _image_folder(tmp_path / "imgs")
    damage(tmp_path / "imgs")
    with pytest.raises(DatasetUnavailableError, match=message):
        load_dataset(name, image_size=8)


def test_training_needs_neither_tensorflow_nor_tfds(debian_dir):
    """As on a GPU machine that has jax but no TensorFlow and no TFDS: importing either fails."""
    script = (
        "import sys; sys.modules.update(tensorflow=None, tensorflow_datasets=None)\n"
        "import sidjax\n"
        "config = sidjax.TrainConfig(model='mlp', num_modules=2, epochs=1, limit_train=512, limit_test=256)\n"
        "print(sidjax.run(config, progress=False).summary['final_test_accuracy'])\n"
    )
    env = {**os.environ, "SIDJAX_FASHION_MNIST_DIR": debian_dir}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.split()[-1]) > 0.3  # 4 steps of 128 examples; chance is 0.1


def _arrays(n=8):
    rng = np.random.default_rng(0)
    return rng.random((n, 6, 6, 1)).astype(np.float32), np.arange(n) % 4


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda x, y: (np.where(np.arange(len(x))[:, None, None, None] == 2, np.inf, x), y),
         "train_images have non-finite values (nan or inf) in 1 example, e.g. [2]; drop or repair them before "
         "training"),
        (lambda x, y: (x, y[:, None]), "train_labels have shape (8, 1); give class ids [num]: train_labels.reshape(-1)"),
        (lambda x, y: (x, np.eye(4, dtype=int)[y]), "train_labels have shape (8, 4) and look one-hot; give class "
                                                    "ids: train_labels.argmax(-1)"),
        (lambda x, y: (x.transpose(0, 3, 1, 2), y), "train_images have shape (8, 1, 6, 6), which looks channels-first"
                                                    " [num, C, H, W]; sidjax reads [num, H, W, C]: pass "
                                                    "train_images.transpose(0, 2, 3, 1)"),
        (lambda x, y: (x, y.astype(np.float32)), "train_labels must be integer class ids, got float32: pass "
                                                  "train_labels.astype(int)"),
        (lambda x, y: (x, y - 1), "train_labels must lie in [0, 4), got [-1, 2]"),
        (lambda x, y: (x > 0.5, y), "train_images are bool; give uint8 (0..255) or float images, or float features"),
        (lambda x, y: (x[..., None], y), "train_images must be images [num, H, W, C] (or [num, H, W]) or features "
                                         "[num, F], got shape (8, 6, 6, 1, 1)"),
        (lambda x, y: (x, np.stack([y, y, y], 1)), "train_labels must be class ids [num], got shape (8, 3)"),
        (lambda x, y: (x, y + 0.5), "train_labels must be integer class ids, got float64"),
        (lambda x, y: (x, y[:-1]), "8 train images but 7 labels, 8 test images but 8 labels"),
        (lambda x, y: (x[:-1], y), "7 train images but 8 labels, 8 test images but 8 labels"),
        (lambda x, y: (x[:, :4], y), "train and test images must have one shape, got (8, 4, 6, 1) and (8, 6, 6, 1)"),
        (lambda x, y: (x[:0], y[:0]), "both splits need at least one example"),
    ],
)  # fmt: skip
def test_arrays_that_cannot_train_or_would_be_misread_are_refused_with_the_fix(damage, message):
    x, y = _arrays()
    bad_x, bad_y = damage(x, y)
    with pytest.raises(ConfigError) as err:
        Dataset.from_arrays(bad_x, bad_y, x, y)
    assert str(err.value) == message
    test_side = str(err.value).replace("train_", "test_")
    if test_side.startswith(
        "test_"
    ):  # the test split is checked alike: a non-finite test image is refused too
        with pytest.raises(ConfigError, match=re.escape(test_side)):
            Dataset.from_arrays(x, y, bad_x, bad_y)


def test_labels_that_start_at_one_are_warned_about_not_refused():
    x, y = _arrays()
    with pytest.warns(
        UserWarning, match=r"labels run from 1 to 4: class 0 has no example, so the network gets 5"
    ):
        dataset = Dataset.from_arrays(x, y + 1, x, y + 1)
    assert dataset.num_classes == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Dataset.from_arrays(x, y + 1, x, y + 1, num_classes=5)  # said explicitly: no warning


def test_a_constant_training_channel_is_centred_not_blown_up():
    rng = np.random.default_rng(0)
    train = rng.random((32, 4, 4, 2)).astype(np.float32)
    train[..., 1] = 0.5
    test = rng.random((8, 4, 4, 2)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"channel \[1\] is constant \(value \[0.5\]"):
        data = Dataset.from_arrays(train, np.arange(32) % 3, test, np.arange(8) % 3)
    assert data.std[1] == 1.0 and data.std[0] == train.std(axis=(0, 1, 2))[0] + np.float32(1e-8)
    np.testing.assert_allclose(data.normalise(test)[..., 1], test[..., 1] - 0.5, atol=1e-6)


def test_labels_above_the_given_number_of_classes_are_refused():
    x, y = _arrays()
    with pytest.raises(ConfigError) as err:
        Dataset.from_arrays(x, y, x, y, num_classes=3)
    assert str(err.value) == "train_labels must lie in [0, 3), got [0, 3]"


def test_normalisation_statistics_come_from_the_training_split_alone():
    rng = np.random.default_rng(0)
    train = rng.random((40, 4, 4, 2)).astype(np.float32)
    test = (5.0 + 3.0 * rng.random((10, 4, 4, 2))).astype(np.float32)  # far from the training split
    data = Dataset.from_arrays(train, np.arange(40) % 3, test, np.arange(10) % 3)
    np.testing.assert_array_equal(data.mean, train.mean(axis=(0, 1, 2)),
                                  err_msg="the mean is the training split's, per channel")  # fmt: skip
    np.testing.assert_array_equal(data.std, train.std(axis=(0, 1, 2)) + np.float32(1e-8),
                                  err_msg="the std is the training split's, per channel")  # fmt: skip
    data = data.subset(20, 5)
    np.testing.assert_array_equal(data.mean, train.mean(axis=(0, 1, 2)), err_msg="limits keep the statistics")


def test_feature_rows_train_through_run_standardised_per_feature():
    """Tabular data ``[num, F]``: each feature standardised on the training split's own mean and std."""
    rng = np.random.default_rng(0)
    centres, scales = rng.normal(size=(4, 12)) * 2, np.logspace(-3, 3, 12)  # features on far-apart scales

    def draw(n):
        y = rng.integers(0, 4, n)
        return ((centres[y] + rng.normal(size=(n, 12))) * scales).astype(np.float32), y

    (x, y), (xt, yt) = draw(1024), draw(256)
    dataset = Dataset.from_arrays(x, y, xt, yt, name="tabular")
    assert dataset.input_shape == (12,)
    np.testing.assert_allclose(dataset.mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(dataset.normalise(x).std(0), 1.0, rtol=1e-4)
    config = sidjax.TrainConfig(
        dataset="tabular", model="mlp", num_modules=3, tiny=True, epochs=2, batch_size=64
    )
    result = sidjax.run(config, dataset=dataset, progress=False)
    assert result.network.input_shape == (12,) and result.summary["final_test_accuracy"] > 0.9  # chance: 0.25
    flat = rng.integers(0, 256, (8, 64), dtype=np.uint8)  # flattened 8 x 8 images, perhaps
    with pytest.warns(UserWarning, match=r"are read as 64 features, .*reshape\(-1, 8, 8, 1\)"):
        Dataset.from_arrays(flat, y[:8], flat, y[:8])


def test_a_test_class_without_training_examples_is_warned_about():
    x, y = _arrays()
    train = y != 3
    with pytest.warns(
        UserWarning, match=r"test classes \[3\] have no training example: .* their 2 test examples"
    ):
        Dataset.from_arrays(x[train], y[train], x, y, num_classes=4)
