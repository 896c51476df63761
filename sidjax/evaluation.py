"""Evaluation and prediction, in evaluation mode, with SID's depth diagnostics.

``evaluate`` gives the test accuracy and, per unit, the accuracy of ``p_k``
and ``KL(target || p_k)``; ``predict`` gives class probabilities. Both run as
jitted, batched programs; the split programs (``make_split_*``) are the ones
a run compiles (jittable and vmappable over variables).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sidjax.data import Dataset, normalised_batch
from sidjax.losses import kl_to_target
from sidjax.network import Network, Variables


def make_eval_step(
    network: Network, label_smoothing: float = 0.0
) -> Callable[[Variables, chex.Array, chex.Array, chex.Array], dict[str, chex.Array]]:
    """``(variables, x [B, ...], labels [B], mask [B]) -> sums`` over unmasked examples, jittable.

    Sums: ``correct [K]`` and ``kl [K]`` (``KL(p~_y || p_k)``, which is
    ``-log p_k(y)`` without smoothing).
    """

    def eval_step(variables, x, labels, mask):
        logits = network.apply(variables, x)  # [K, B, N]
        correct = (logits.argmax(-1) == labels[None]) * mask[None]
        kl = jax.vmap(lambda lg: kl_to_target(lg, labels, label_smoothing))(logits) * mask[None]
        return {"correct": correct.sum(-1), "kl": kl.sum(-1)}

    return eval_step


def _batch_starts(num: int, batch_size: int) -> tuple[int, jax.Array]:
    batch = min(batch_size, num)
    return batch, jnp.arange(0, num, batch)


def make_split_evaluator(
    network: Network, dataset: Dataset, batch_size: int, label_smoothing: float = 0.0
) -> Callable[[Variables, chex.Array, chex.Array], dict[str, chex.Array]]:
    """``(variables, images [N, ...], labels [N]) -> sums`` over a whole split, as one ``lax.scan``.

    Batches of ``batch_size`` (the last one padded and masked), gathered and
    normalised on the device.
    """
    eval_step = make_eval_step(network, label_smoothing)

    def evaluate_split(variables, images, labels):
        num = labels.shape[-1]
        batch, starts = _batch_starts(num, batch_size)

        def body(totals, start):
            idx = start + jnp.arange(batch)
            mask = (idx < num).astype(jnp.float32)
            x, y = normalised_batch(dataset, images, labels, jnp.minimum(idx, num - 1))
            sums = eval_step(variables, x, y, mask)
            return jax.tree.map(jnp.add, totals, sums), None

        zeros = {"correct": jnp.zeros(network.num_units), "kl": jnp.zeros(network.num_units)}
        totals, _ = jax.lax.scan(body, zeros, starts)
        return totals

    return evaluate_split


def make_split_predictor(
    network: Network, dataset: Dataset, batch_size: int
) -> Callable[[Variables, chex.Array], chex.Array]:
    """``(variables, images [N, ...]) -> int32 [N]``: the last unit's predicted class of every image.

    One ``lax.scan`` over batches of ``batch_size`` (the last one padded),
    gathered and normalised on the device.
    """

    def predict_split(variables, images):
        num = images.shape[0]
        batch, starts = _batch_starts(num, batch_size)

        def body(_, start):
            idx = jnp.minimum(start + jnp.arange(batch), num - 1)
            x = dataset.normalise(jnp.take(images, idx, axis=0))
            return None, network.apply(variables, x)[-1].argmax(-1).astype(jnp.int32)

        _, predictions = jax.lax.scan(body, None, starts)
        return predictions.reshape(-1)[:num]

    return predict_split


def split_metrics(sums: dict[str, np.ndarray], num: int) -> dict[str, float | list[float]]:
    """Host sums over ``num`` examples -> ``accuracy`` (last unit), ``per_unit_accuracy [K]``, ``per_unit_kl [K]``."""
    per_unit_accuracy = (np.asarray(sums["correct"]) / num).tolist()
    return {
        "accuracy": per_unit_accuracy[-1],
        "per_unit_accuracy": per_unit_accuracy,
        "per_unit_kl": (np.asarray(sums["kl"]) / num).tolist(),
    }


def evaluate(
    network: Network,
    variables: Variables,
    dataset: Dataset,
    batch_size: int = 1000,
    label_smoothing: float = 0.0,
) -> dict[str, float | list[float]]:
    """Test accuracy and every unit's accuracy and ``KL(target || p_k)`` on ``dataset``'s test split.

    Returns:
      ``accuracy`` (last unit), ``per_unit_accuracy [K]``, ``per_unit_kl [K]``
      (means over the split).
    """
    evaluate_split = jax.jit(make_split_evaluator(network, dataset, batch_size, label_smoothing))
    sums = evaluate_split(variables, jnp.asarray(dataset.test_images), jnp.asarray(dataset.test_labels))
    return split_metrics(jax.device_get(sums), len(dataset.test_labels))


@functools.partial(jax.jit, static_argnames=("network", "per_unit"))
def _probabilities(network: Network, variables: Variables, x: chex.Array, per_unit: bool) -> chex.Array:
    logits = network.apply(variables, x)
    return jax.nn.softmax(logits if per_unit else logits[-1], axis=-1)


def predict(
    network: Network,
    variables: Variables,
    x: chex.Array,
    *,
    per_unit: bool = False,
    batch_size: int = 1024,
) -> np.ndarray:
    """Class probabilities of ``x [num, ...]`` (already normalised), in evaluation mode.

    Args:
      network, variables: a trained network (``sidjax.run``, ``sidjax.load_run``).
      x: inputs as the network was trained on them (``Dataset.normalise`` for
        a dataset's images).
      per_unit: every unit's belief ``[K, num, N]`` instead of the last
        unit's ``[num, N]``.
      batch_size: examples per compiled call (one compile per batch shape).

    Returns:
      float32 probabilities, rows summing to one.

    Raises:
      ValueError: ``x`` is not a batch of the network's inputs (one example
        without its batch axis, another shape, or raw integer images).
    """
    x = _inputs(network, x)
    if not len(x):
        return np.zeros(
            (network.num_units, 0, network.num_classes) if per_unit else (0, network.num_classes), np.float32
        )
    parts = [
        jax.device_get(_probabilities(network, variables, x[i : i + batch_size], per_unit))
        for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(parts, axis=1 if per_unit else 0)


def _inputs(network: Network, x) -> np.ndarray:
    """``x`` as a host array of the network's inputs ``[num, *input_shape]``, or one ``ValueError`` line."""
    x, shape = np.asarray(x), tuple(network.input_shape)
    if not np.issubdtype(x.dtype, np.floating):
        hint = "raw images; normalise them as in training, e.g. dataset.normalise(images)"
        raise ValueError(
            f"predict: x is {x.dtype}: {hint if np.issubdtype(x.dtype, np.integer) else 'give floats'}"
        )
    if x.shape == shape:
        raise ValueError(
            f"predict: x is one example of shape {shape}; give a batch [num, *{shape}], e.g. x[None]"
        )
    if x.shape[1:] != shape:
        raise ValueError(
            f"predict: x has shape {x.shape}; this network takes a batch of {shape} inputs, [num, *{shape}]"
        )
    return x
