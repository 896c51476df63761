"""What a run records of each epoch: training means, test and validation metrics, the memorisation curve."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from sidjax.evaluation import split_metrics
from sidjax.train.epoch import RunData
from sidjax.train.plan import Plan
from sidjax.train.stops import DIVERGED, TrainingDiverged


def epoch_record(plan: Plan, epoch: int, mean: dict[str, np.ndarray], test: dict[str, Any], num_test: int,
                 extra: dict[str, float], seconds: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    """One seed's record of ``epoch`` (a line of ``metrics.jsonl``).

    Args:
      mean: the epoch's training metrics, each the mean over its steps.
      test: the test split's sums (``split_metrics``) over ``num_test`` examples.
      extra: validation and label-noise diagnostics (``label_diagnostics``).
      seconds: ``{"epoch_time_s": training, "eval_time_s": evaluation}``.
    """
    test = split_metrics(test, num_test)
    return {
        "epoch": epoch,
        "train_loss": float(mean["loss"]),
        "train_ce": float(mean["ce"]),
        "train_accuracy": float(mean["accuracy"]),
        **per_unit_training(plan, mean),
        "test_accuracy": test["accuracy"],
        "per_unit_accuracy": test["per_unit_accuracy"],
        "per_unit_kl": test["per_unit_kl"],
        **extra,
        **seconds,
    }


def per_unit_training(plan: Plan, mean: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """Each unit's mean training loss (local methods) and accuracy over the epoch's batches, as seen in training."""
    per_unit = {}
    if plan.method.local:
        per_unit["train_unit_loss"] = mean["unit_loss"].tolist()
    if "unit_accuracy" in mean:
        per_unit["train_unit_accuracy"] = mean["unit_accuracy"].tolist()
    return per_unit


def divergence(plan: Plan, record: dict[str, Any]) -> str | None:
    """What says that the epoch of ``record`` diverged, or None: its loss is not finite, or the last
    unit's training cross-entropy exceeds ``DIVERGED`` times a uniform guess's (``log N``): a finite loss
    that large (Adam at lr 1000 reaches 1e19) means the run is at chance and will not come back."""
    chance = float(np.log(plan.info.num_classes))
    if np.isfinite(record["train_loss"]) and record["train_ce"] <= DIVERGED * chance:
        return None
    if not np.isfinite(record["train_loss"]):
        return f"the training loss is {record['train_loss']}"
    return (
        f"the last unit's training cross-entropy is {record['train_ce']:.3g}, over {DIVERGED:g} times a "
        f"uniform guess's ({chance:.2f})"
    )


def partial_divergence(plan: Plan, means: list[dict[str, np.ndarray]]) -> bool:
    """Whether the steps of an epoch so far (each member's training means) already diverge: such a state
    is not checkpointed, so that the last good checkpoint stays the newest."""
    return any(
        divergence(plan, {"train_loss": float(m["loss"]), "train_ce": float(m["ce"])}) is not None
        for m in means
    )


def diverged_epoch(plan: Plan, history: list[dict[str, Any]]) -> int | None:
    """The first epoch of ``history`` that diverged (``divergence``), or None."""
    return next((r["epoch"] for r in history if divergence(plan, r) is not None), None)


def check_diverged(plan: Plan, record: dict[str, Any], seed: int | None) -> None:
    """Raises ``TrainingDiverged`` where the epoch of ``record`` diverged (``divergence``)."""
    what = divergence(plan, record)
    if what is None:
        return
    who = f" (seed {seed})" if seed is not None else ""
    raise TrainingDiverged(
        f"training diverged in epoch {record['epoch']}{who}: {what}; the learning rate is the likely cause: "
        f"lower it{'' if plan.config.lr is None else f' (now {plan.config.lr:g})'}"
    )


def label_diagnostics(plan: Plan, data: RunData, predict: Callable[[Any], list[np.ndarray]]) -> list[dict]:
    """Per seed: validation accuracy (on its labels as given), and with label noise the memorisation curve.

    ``predict(images) -> per-seed classes``. With noise, the training examples
    are predicted once more (evaluation mode) and split by whether the seed
    flipped their label: ``train_clean_accuracy`` (unflipped, predicted as
    labelled), ``train_flipped_memorised`` (flipped, predicted as the wrong
    label they were given) and ``train_flipped_true`` (flipped, predicted as
    their true class).
    """
    found = [{} for _ in data.noisy_labels]
    if data.val_images is not None:
        for extra, predicted, labels in zip(found, predict(data.val_images), data.val_labels, strict=True):
            extra["val_accuracy"] = float((predicted == labels).mean())
    if plan.config.label_noise > 0:
        images = data.train_images if data.resident else plan.learner.put(data.train_images)
        clean = data.dataset.train_labels
        for extra, predicted, noisy in zip(found, predict(images), data.noisy_labels, strict=True):
            flipped = noisy != clean
            extra["train_clean_accuracy"] = _mean(predicted[~flipped] == clean[~flipped])
            extra["train_flipped_memorised"] = _mean(predicted[flipped] == noisy[flipped])
            extra["train_flipped_true"] = _mean(predicted[flipped] == clean[flipped])
    return found


def _mean(hits: np.ndarray) -> float:
    return float(hits.mean()) if hits.size else float("nan")


def trained_network(plan: Plan) -> dict[str, Any]:
    """What is trained, as the network and the recipe have it (a config may name defaults your model overrides).

    ``units``: K; ``stem``/``unit_modules``: module classes; ``belief_input``:
    how units read the previous belief; ``alpha``: each unit's effective
    alpha (``"schedule"``; None for a method that reads none); ``parameters``:
    trained scalars; ``method``: the rule's identity (``Method.identity``);
    ``execution``, ``schedule``, ``placement``: how its step ran, resolved.
    """
    network = plan.network
    shapes = jax.eval_shape(lambda key: plan.build(key)[1].params, jax.random.key(0))
    alpha = None
    if plan.method.uses_alpha:
        alpha = (
            "schedule"
            if plan.loss.scheduled
            else [round(float(a), 6) for a in plan.loss.alphas(network.num_units)]
        )
    return {
        "name": network.name,
        "mode": network.mode,
        "units": network.num_units,
        "stem": network.stem.kind if network.stem else None,
        "unit_modules": [network.units[0 if network.stacked else k].kind for k in range(network.num_units)],
        "belief_input": network.belief_input,
        "alpha": alpha,
        "parameters": int(sum(leaf.size for leaf in jax.tree.leaves(shapes))),
        "method": plan.method.identity(),
        "execution": plan.learner.execution,
        "schedule": "pipelined"
        if plan.config.pipelined
        else "in turn"
        if plan.config.refresh
        else "synchronous",
        "placement": plan.config.placement,
        **({"recipe": plan.recipe} if plan.recipe else {}),
    }
