"""Batches on the device: an epoch's order, gathered, normalised and augmented there.

An epoch's order is a permutation from ``(seed, epoch)`` (numpy's, so that
results recorded before the data moved to the device reproduce to the digit),
sent to the device once per epoch as ``[steps, B]`` int32 indices (240 KB for
Fashion-MNIST). Each step gathers its batch from the resident uint8 images,
normalises and augments it on the device; no example crosses from the host
during an epoch. Splits larger than the device budget stream instead, one
chunk of batches at a time, gathered on the host and sent ahead of use.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sidjax.data.dataset import Dataset


def nbytes(dataset: Dataset) -> int:
    """Bytes of both splits' images and labels as stored."""
    arrays = (dataset.train_images, dataset.train_labels, dataset.test_images, dataset.test_labels)
    return sum(a.nbytes for a in arrays)


def epoch_order(num: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's shuffled full batches as indices, int32 ``[num // batch_size, batch_size]``.

    Depends only on ``(seed, epoch)``, so runs are reproducible and resume at
    an epoch boundary; the last partial batch is dropped.
    """
    steps = num // batch_size
    order = np.random.default_rng([seed, epoch]).permutation(num)[: steps * batch_size]
    return order.reshape(steps, batch_size).astype(np.int32)


def normalised_batch(
    dataset: Dataset, images: chex.Array, labels: chex.Array, idx: chex.Array
) -> tuple[chex.Array, chex.Array]:
    """Gathers ``images[idx]`` and ``labels[idx]`` (``idx [B]``) and normalises the images; jittable.

    ``dataset`` supplies only the statistics (constants in the program).
    """
    return dataset.normalise(jnp.take(images, idx, axis=0)), jnp.take(labels, idx, axis=-1)


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
