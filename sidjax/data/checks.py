"""What your arrays must be before anything trains on them: one place, one message per problem.

``check_arrays`` refuses (``ConfigError``) what no training can use or what
sidjax would misread, naming the array, what is wrong and the likely fix;
what is only suspicious (labels that start at 1) is said in a warning.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from sidjax.errors import ConfigError


def _images(name: str, x: np.ndarray) -> np.ndarray:
    """``[num, H, W, C]`` images (``[num, H, W]`` read as one channel) or ``[num, F]`` features, or ``ConfigError``."""
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ConfigError(f"{name} are {x.dtype}; give uint8 (0..255) or float images, or float features")
    if x.ndim == 2:
        _flattened_images(name, x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim not in (2, 4):
        raise ConfigError(
            f"{name} must be images [num, H, W, C] (or [num, H, W]) or features [num, F], got shape {x.shape}"
        )
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3, 4) and x.shape[1:3] != (1, 1):
        raise ConfigError(
            f"{name} have shape {x.shape}, which looks channels-first [num, C, H, W]; sidjax reads "
            f"[num, H, W, C]: pass {name}.transpose(0, 2, 3, 1)"
        )
    if np.issubdtype(x.dtype, np.floating) and len(x):  # an empty split is refused in check_arrays
        bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
        if bad.any():
            where = np.flatnonzero(bad)
            raise ConfigError(
                f"{name} have non-finite values (nan or inf) in {len(where)} example{'s' * (len(where) > 1)}, "
                f"e.g. {where[:5].tolist()}; "
                "drop or repair them before training"
            )
        big = (np.abs(x) > np.finfo(np.float32).max).reshape(len(x), -1).any(axis=1)  # they train as float32
        if big.any():
            where = np.flatnonzero(big)
            raise ConfigError(
                f"{name} have values beyond float32's range (|x| > {np.finfo(np.float32).max:.3g}) in "
                f"{len(where)} example{'s' * (len(where) > 1)}, e.g. {where[:5].tolist()}; rescale them (e.g. "
                "divide by their largest value) before training"
            )
    return x


def check_statistics(mean: np.ndarray, std: np.ndarray) -> None:
    """The training split's per-channel statistics are finite (values that fit float32 can still square past it)."""
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise ConfigError(
            "train_images are too large to standardise in float32 (their mean or spread is not finite); rescale "
            "them (e.g. divide by their largest value) before training"
        )


def _flattened_images(name: str, x: np.ndarray) -> None:
    """Warns where ``[num, F]`` features look like flattened uint8 images (F a square, 0..255)."""
    side = math.isqrt(x.shape[1])
    if x.dtype == np.uint8 and side * side == x.shape[1] and side >= 8:
        warnings.warn(
            f"{name} {x.shape} are read as {x.shape[1]} features, each standardised on its own; if they are "
            f"flattened images, pass {name}.reshape(-1, {side}, {side}, 1) for per-channel statistics",
            UserWarning,
            stacklevel=4,
        )


def _labels(name: str, y: np.ndarray) -> np.ndarray:
    """Integer class ids ``[num]``, or ``ConfigError``."""
    if y.ndim == 2 and y.shape[1] > 1 and np.isin(y, (0, 1)).all() and (y.sum(axis=1) == 1).all():
        raise ConfigError(f"{name} have shape {y.shape} and look one-hot; give class ids: {name}.argmax(-1)")
    if y.ndim == 2 and y.shape[1] == 1:
        raise ConfigError(f"{name} have shape {y.shape}; give class ids [num]: {name}.reshape(-1)")
    if y.ndim != 1:
        raise ConfigError(f"{name} must be class ids [num], got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        whole = np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all()
        hint = f": pass {name}.astype(int)" if whole else ""
        raise ConfigError(f"{name} must be integer class ids, got {y.dtype}{hint}")
    return y


def check_arrays(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Checks a dataset's four arrays; returns the inputs (images as ``[num, H, W, C]``, features as
    ``[num, F]``) and the number of classes.

    Raises:
      ConfigError: one line naming the array, the problem and the likely fix.
    """
    train_x, test_x = _images("train_images", train_x), _images("test_images", test_x)
    train_y, test_y = _labels("train_labels", train_y), _labels("test_labels", test_y)
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ConfigError(
            f"train and test images must have one shape, got {train_x.shape} and {test_x.shape}"
        )
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ConfigError(
            f"{len(train_x)} train images but {len(train_y)} labels, {len(test_x)} test images but {len(test_y)} labels"
        )
    if not len(train_y) or not len(test_y):
        raise ConfigError("both splits need at least one example")
    low, high = int(min(train_y.min(), test_y.min())), int(max(train_y.max(), test_y.max()))
    given = num_classes is not None
    num_classes = high + 1 if num_classes is None else num_classes
    for name, y in (("train_labels", train_y), ("test_labels", test_y)):
        if y.min() < 0 or y.max() >= num_classes:
            raise ConfigError(f"{name} must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    unseen = np.setdiff1d(test_y, train_y)
    if len(unseen):
        warnings.warn(
            f"test classes {unseen[:10].tolist()} have no training example: the network cannot learn them, and "
            f"their {int(np.isin(test_y, unseen).sum())} test examples count as errors",
            UserWarning,
            stacklevel=3,
        )
    if low == 1 and not given:
        warnings.warn(
            f"labels run from 1 to {high}: class 0 has no example, so the network gets {num_classes} outputs; "
            "if your classes are 1..N, subtract 1 from the labels",
            UserWarning,
            stacklevel=3,
        )
    return train_x, test_x, num_classes
