"""A classification dataset as host arrays, and what a run does to it before training."""

from __future__ import annotations

import dataclasses
import hashlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from sidjax.data.checks import check_arrays, check_statistics
from sidjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A classification dataset as host (numpy) arrays.

    Images stay as they were read (uint8 for every built-in source) and are
    normalised on the device, batch by batch (``normalise``).

    Attributes:
      name: the dataset's name (``TrainConfig.dataset`` must match it).
      train_images, test_images: ``[num, H, W, C]``, uint8 or float.
      train_labels, test_labels: int32 ``[num]`` in ``[0, num_classes)``.
      num_classes: N.
      mean, std: float32 ``[C]``, per-channel statistics of the training
        images after scaling (uint8 images are scaled by 1/255 first).
      source: where the arrays came from (for logs and summaries).
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    mean: np.ndarray
    std: np.ndarray
    source: str = ""

    @classmethod
    def from_arrays(
        cls,
        train_images: np.ndarray,
        train_labels: np.ndarray,
        test_images: np.ndarray,
        test_labels: np.ndarray,
        *,
        num_classes: int | None = None,
        name: str = "arrays",
        source: str = "arrays",
    ) -> Dataset:
        """A dataset from your own arrays (numpy or jax), e.g. ``Dataset.from_arrays(x, y, xt, yt)``.

        Args:
          train_images, test_images: images ``[num, H, W, C]`` (``[num, H, W]``
            is read as one channel), standardised per channel, or feature rows
            ``[num, F]`` (tabular data, for a network whose input is ``(F,)``),
            standardised per feature; uint8 (scaled by 1/255) or finite floats.
          train_labels, test_labels: integer class ids ``[num]``.
          num_classes: N (default: the largest label + 1).
          name: what ``TrainConfig.dataset`` must say to train on it.

        Raises:
          ConfigError: arrays no training can use or sidjax would misread
            (non-finite values, channels-first or flattened images, one-hot
            or ``[num, 1]`` labels, labels out of range), in one line naming
            the likely fix (``sidjax.data.checks``). Labels that start at 1
            are only warned about.
        """
        train_x, train_y, test_x, test_y = (
            np.asarray(a) for a in (train_images, train_labels, test_images, test_labels)
        )
        train_x, test_x, num_classes = check_arrays(train_x, train_y, test_x, test_y, num_classes)
        mean, std = channel_stats(train_x)
        check_statistics(mean, std)
        return cls(
            name,
            train_x,
            train_y.astype(np.int32),
            test_x,
            test_y.astype(np.int32),
            num_classes,
            mean,
            std,
            source,
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])

    @property
    def scale(self) -> float:
        """What images are multiplied by before the statistics apply: 1/255 for uint8, else 1."""
        return 1.0 / 255.0 if self.train_images.dtype == np.uint8 else 1.0

    def normalise(self, images):
        """``[..., C]`` images -> float32, per-channel standardised (numpy or jax arrays alike).

        uint8 images go through a ``[256, C]`` lookup table computed once with
        numpy, so the device gives the host's values bit for bit (XLA may
        rewrite ``x / 255`` as a multiplication, one ulp away).
        """
        if images.dtype == np.uint8:
            xp = jnp if isinstance(images, jax.Array) else np
            table = xp.asarray(self.lookup_table())
            return table[images.astype(xp.int32), xp.arange(images.shape[-1])]
        return (images.astype(np.float32) - self.mean) / self.std

    def lookup_table(self) -> np.ndarray:
        """float32 ``[256, C]``: the normalised value of every uint8 level in every channel."""
        levels = np.arange(256, dtype=np.float32)[:, None] / 255.0
        return ((levels - self.mean) / self.std).astype(np.float32)

    def fingerprint(self) -> str:
        """A digest of both splits' arrays (inputs and labels, their dtypes and shapes): the data a run
        trained on, checked when it resumes."""
        digest = hashlib.sha256()
        for array in (self.train_images, self.train_labels, self.test_images, self.test_labels):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.data)
        return digest.hexdigest()[:16]

    def subset(self, limit_train: int | None, limit_test: int | None) -> Dataset:
        """The first ``limit_train`` / ``limit_test`` examples (all where None); statistics are kept."""
        return dataclasses.replace(
            self,
            train_images=self.train_images[:limit_train],
            train_labels=self.train_labels[:limit_train],
            test_images=self.test_images[:limit_test],
            test_labels=self.test_labels[:limit_test],
        )


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (+1e-8) of ``[num, H, W, C]`` images after ``Dataset.scale``.

    In float32 over the whole array where it fits in 2 GB (numpy's pairwise
    sums: the statistics every recorded result used), else in float64 chunks.
    A channel that is constant in the training split (std below 1e-6) is
    centred but not scaled (std 1), with a warning: dividing by its ~0 std
    would turn any other value of it into ~1e8.
    """
    scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
    axes = tuple(range(images.ndim - 1))  # all but the channels (the features of [num, F] rows)
    if images.size * 4 <= 2**31:
        x = images.astype(np.float32) / 255.0 if scale != 1.0 else images.astype(np.float32)
        with np.errstate(over="ignore"):  # values too large to standardise: checks.check_statistics says so
            mean = x.mean(axis=axes)
            return mean, _spread(x.std(axis=axes), mean)
    total = np.zeros(images.shape[-1]), np.zeros(images.shape[-1])
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].astype(np.float64) * scale
        total = total[0] + chunk.sum(axis=axes), total[1] + (chunk**2).sum(axis=axes)
    count = images.size / images.shape[-1]
    mean = total[0] / count
    std = np.sqrt(np.maximum(total[1] / count - mean**2, 0.0))
    return mean.astype(np.float32), _spread(std, mean).astype(np.float32)


def _spread(std: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``std + 1e-8`` per channel, but 1 for a channel constant in the training split (warned about)."""
    constant = std < 1e-6
    if constant.any():
        where = np.flatnonzero(constant)
        warnings.warn(
            f"train_images channel{'s' * (len(where) > 1)} {where.tolist()} {'are' if len(where) > 1 else 'is'} "
            f"constant (value {[round(float(m), 6) for m in mean[where]]} after scaling): centred but not scaled, "
            "since its std is 0; check the data if that is unexpected",
            UserWarning,
            stacklevel=4,
        )
    return np.where(constant, np.ones_like(std), std + 1e-8)


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
        raise ConfigError(f"label_noise must lie in [0, 1], got {rate}", "label_noise")
    rng = np.random.default_rng(seed)
    flip = rng.random(len(labels)) < rate
    # an offset in 1..N-1 lands uniformly on the other N-1 classes
    offset = rng.integers(1, num_classes, size=len(labels))
    noisy = np.where(flip, (labels + offset) % num_classes, labels).astype(labels.dtype)
    return noisy, float((noisy != labels).mean()) if len(labels) else 0.0
