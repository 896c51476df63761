"""Evaluation with SID's depth diagnostics: accuracy and KL(target || p_i) of every unit's belief."""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sidjax.data import Dataset, normalised_batch
from sidjax.losses import kl_to_target
from sidjax.network import NetParams, Network


def make_eval_step(
    network: Network, label_smoothing: float = 0.0
) -> Callable[[NetParams, chex.Array, chex.Array, chex.Array], dict[str, chex.Array]]:
    """``(params, x [B, ...], labels [B], mask [B]) -> sums`` over unmasked examples, jittable.

    Sums: ``correct [K]`` and ``kl [K]`` (``KL(p~_y || p_i)``, which is
    ``-log p_i(y)`` without smoothing).
    """

    def eval_step(params, x, labels, mask):
        logits = network.apply(params, x)  # [K, B, N]
        correct = (logits.argmax(-1) == labels[None]) * mask[None]
        kl = jax.vmap(lambda lg: kl_to_target(lg, labels, label_smoothing))(logits) * mask[None]
        return {"correct": correct.sum(-1), "kl": kl.sum(-1)}

    return eval_step


def make_split_evaluator(
    network: Network, dataset: Dataset, batch_size: int, label_smoothing: float = 0.0
) -> Callable[[NetParams, chex.Array, chex.Array], dict[str, chex.Array]]:
    """``(params, images [N, ...], labels [N]) -> sums`` over a whole split, as one ``lax.scan``.

    Batches of ``batch_size`` (the last one padded and masked), gathered and
    normalised on the device; jittable and vmappable over params.
    """
    eval_step = make_eval_step(network, label_smoothing)

    def evaluate_split(params, images, labels):
        num = labels.shape[-1]
        batch = min(batch_size, num)
        starts = jnp.arange(0, num, batch)

        def body(totals, start):
            idx = start + jnp.arange(batch)
            mask = (idx < num).astype(jnp.float32)
            x, y = normalised_batch(dataset, images, labels, jnp.minimum(idx, num - 1))
            sums = eval_step(params, x, y, mask)
            return jax.tree.map(jnp.add, totals, sums), None

        zeros = {"correct": jnp.zeros(network.num_units), "kl": jnp.zeros(network.num_units)}
        totals, _ = jax.lax.scan(body, zeros, starts)
        return totals

    return evaluate_split


def make_split_predictor(
    network: Network, dataset: Dataset, batch_size: int
) -> Callable[[NetParams, chex.Array], chex.Array]:
    """``(params, images [N, ...]) -> int32 [N]``: the last unit's predicted class of every image.

    One ``lax.scan`` over batches of ``batch_size`` (the last one padded),
    gathered and normalised on the device; jittable and vmappable over params.
    """

    def predict_split(params, images):
        num = images.shape[0]
        batch = min(batch_size, num)
        starts = jnp.arange(0, num, batch)

        def body(_, start):
            idx = jnp.minimum(start + jnp.arange(batch), num - 1)
            x = dataset.normalise(jnp.take(images, idx, axis=0))
            return None, network.apply(params, x)[-1].argmax(-1).astype(jnp.int32)

        _, predictions = jax.lax.scan(body, None, starts)
        return predictions.reshape(-1)[:num]

    return predict_split


def summarise_sums(sums: dict[str, np.ndarray], num: int) -> dict[str, float | list[float]]:
    """Host sums -> ``accuracy`` (last unit), ``per_module_accuracy [K]``, ``per_module_kl [K]``."""
    per_module_accuracy = (np.asarray(sums["correct"]) / num).tolist()
    return {
        "accuracy": per_module_accuracy[-1],
        "per_module_accuracy": per_module_accuracy,
        "per_module_kl": (np.asarray(sums["kl"]) / num).tolist(),
    }


def evaluate(
    network: Network,
    params: NetParams,
    dataset: Dataset,
    batch_size: int = 1000,
    label_smoothing: float = 0.0,
) -> dict[str, float | list[float]]:
    """Test accuracy and every unit's accuracy and ``KL(target || p_i)`` on ``dataset``'s test split.

    Returns:
      ``accuracy`` (last unit), ``per_module_accuracy [K]``,
      ``per_module_kl [K]`` (means over the split).
    """
    evaluate_split = jax.jit(make_split_evaluator(network, dataset, batch_size, label_smoothing))
    sums = evaluate_split(params, jnp.asarray(dataset.test_images), jnp.asarray(dataset.test_labels))
    return summarise_sums(jax.device_get(sums), len(dataset.test_labels))
