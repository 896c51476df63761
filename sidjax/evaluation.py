"""Evaluation with SID's depth diagnostics: accuracy and KL(target || p_i) per module."""

from __future__ import annotations

from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sidjax.losses import kl_to_target
from sidjax.network import NetParams, Network


def make_eval_step(
    network: Network, label_smoothing: float = 0.0
) -> Callable[[NetParams, chex.Array, chex.Array, chex.Array], dict[str, chex.Array]]:
    """Jitted ``(params, x [B,...], labels [B], mask [B]) -> sums``.

    Returns a dict of sums over unmasked examples: ``correct [L]``, ``kl [L]``
    (``KL(p~_y || p_i)``, which is ``-log p_i(y)`` without smoothing).
    """

    def eval_step(params, x, labels, mask):
        logits = network.apply(params, x)  # [L, B, N]
        correct = (logits.argmax(-1) == labels[None]) * mask[None]
        kl = jax.vmap(lambda lg: kl_to_target(lg, labels, label_smoothing))(logits) * mask[None]
        return {"correct": correct.sum(-1), "kl": kl.sum(-1)}

    return jax.jit(eval_step)


def evaluate(
    eval_step: Callable,
    params: NetParams,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 1000,
) -> dict[str, float | list[float]]:
    """Evaluates on a whole split, padding the last batch (one compile).

    Args:
      eval_step: from ``make_eval_step``.
      params: the model params.
      images: ``[num, H, W, C]``; labels: ``[num]``.
      batch_size: examples per jitted call.

    Returns:
      ``accuracy`` (last module), ``per_module_accuracy [L]``,
      ``per_module_kl [L]`` (means over the split).
    """
    num = len(labels)
    if num == 0:
        raise ValueError("cannot evaluate on an empty split")
    batch_size = min(batch_size, num)
    totals = None
    for start in range(0, num, batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        mask = np.ones(len(y), np.float32)
        pad = batch_size - len(y)
        if pad:
            x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
            y = np.concatenate([y, np.zeros((pad,), y.dtype)])
            mask = np.concatenate([mask, np.zeros((pad,), np.float32)])
        sums = eval_step(params, jnp.asarray(x), jnp.asarray(y), jnp.asarray(mask))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    per_module_accuracy = (totals["correct"] / num).tolist()
    return {
        "accuracy": per_module_accuracy[-1],
        "per_module_accuracy": per_module_accuracy,
        "per_module_kl": (totals["kl"] / num).tolist(),
    }
