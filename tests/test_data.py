"""Data: label noise, batching, augmentation, Debian Fashion-MNIST, clear failures."""

import hashlib
import os
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sidjax.data import (
    DEBIAN_FASHION_MNIST_DIR,
    DatasetUnavailableError,
    epoch_batches,
    load_dataset,
    random_crop_flip,
    restore_debian_fashion_mnist,
    symmetric_label_noise,
)


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.4])
def test_symmetric_label_noise_rate_and_targets(rate):
    labels = np.random.default_rng(0).integers(0, 10, 50_000).astype(np.int32)
    noisy, realised = symmetric_label_noise(labels, rate, 10, seed=1)
    assert abs(realised - rate) < 0.01
    assert realised == pytest.approx(float((noisy != labels).mean()))
    flipped = noisy[noisy != labels]
    if rate:  # flips land on the other classes uniformly
        counts = np.bincount((flipped - labels[noisy != labels]) % 10, minlength=10)
        assert counts[0] == 0
        assert counts[1:].min() > 0.8 * counts[1:].mean()
    again, _ = symmetric_label_noise(labels, rate, 10, seed=1)
    np.testing.assert_array_equal(noisy, again)


def test_label_noise_rate_is_validated():
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        symmetric_label_noise(np.zeros(3, np.int32), -0.1, 10, 0)


def test_epoch_batches_are_a_seeded_permutation():
    x = np.arange(10)[:, None]
    y = np.arange(10)
    batches = list(epoch_batches(x, y, 3, seed=0, epoch=1))
    assert len(batches) == 3 and all(b[0].shape == (3, 1) for b in batches)
    seen = np.concatenate([b[1] for b in batches])
    assert len(set(seen)) == 9
    np.testing.assert_array_equal(seen, np.concatenate([b[1] for b in epoch_batches(x, y, 3, 0, 1)]))
    assert not np.array_equal(seen, np.concatenate([b[1] for b in epoch_batches(x, y, 3, 0, 2)]))
    for bx, by in batches:
        np.testing.assert_array_equal(bx[:, 0], by)


def test_random_crop_flip_is_a_padded_crop_or_its_mirror():
    images = jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
    out = jax.jit(random_crop_flip)(jax.random.key(1), images)
    chex.assert_shape(out, images.shape)
    padded = jnp.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for b in range(16):
        crops = [padded[b, i : i + 8, j : j + 8] for i in range(9) for j in range(9)]
        candidates = crops + [c[:, ::-1] for c in crops]
        assert any(bool(jnp.array_equal(out[b], c)) for c in candidates)
    assert not bool(jnp.array_equal(out, images))


def test_debian_fashion_mnist_restores_upstream_bytes(tmp_path):
    if not os.path.isdir(DEBIAN_FASHION_MNIST_DIR):
        if os.environ.get("CI"):
            pytest.fail(
                "CI must install Debian's dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)"
            )
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    import tensorflow_datasets as tfds

    checksums = os.path.join(os.path.dirname(tfds.__file__), "url_checksums", "fashion_mnist.txt")
    registered = {line.split()[3]: line.split()[2] for line in open(checksums) if line.strip()}
    restore_debian_fashion_mnist(DEBIAN_FASHION_MNIST_DIR, str(tmp_path))
    for name, sha in registered.items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == sha, name


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet5'"):
        load_dataset("imagenet5")


def test_offline_download_fails_fast_with_a_clear_message(tmp_path, monkeypatch):
    """No network is used: the download itself is made to fail as offline machines do."""
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
    assert "cifar10" in message and "--manual-dir" in message and "\n" not in message


def _image_folder(root, sizes=((10, 12), (7, 9), (16, 16))):
    """root/{train,test}/<class>/*.png with images of several sizes; class k is brightness 80k."""
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


def test_image_folder_dataset_is_resized_and_labelled(tmp_path):
    from sidjax.data import dataset_info, load_dataset

    name = _image_folder(tmp_path / "imgs")
    assert dataset_info(name, image_size=8) == ((8, 8, 3), 3)
    data = load_dataset(name, image_size=8)
    assert data.train_images.shape == (12, 8, 8, 3) and data.test_images.shape == (6, 8, 8, 3)
    assert sorted(np.bincount(data.train_labels).tolist()) == [4, 4, 4]
    # Brightness grows with the class index (folders in sorted order): labels follow folders.
    means = [data.train_images[data.train_labels == k].mean() for k in range(3)]
    assert means == sorted(means)


def test_image_folder_trains_from_the_cli_and_bad_folders_fail_clearly(tmp_path, capsys):
    sys.path.insert(
        0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments")
    )
    import train

    name = _image_folder(tmp_path / "imgs")
    summary = train.main(["--dataset", name, "--image-size", "8", "--model", "mlp", "--num-modules", "2",
                          "--epochs", "1", "--batch-size", "4", "--no-progress"])  # fmt: skip
    assert summary["num_train"] == 12 and summary["augment"] is None
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--dataset", f"folder:{tmp_path / 'nowhere'}", "--no-progress"])
    assert exit_info.value.code == 2
    assert "an image folder needs train/ and test/" in capsys.readouterr().err
