"""The data of a run and one epoch of training over it.

``prepare_data`` applies the config's limits and each member's label noise (its seed's) and
decides where the training split lives: on the device for the whole run when
both splits fit in ``device_data_mb``, else on the host, sent chunk by chunk.
``epoch_chunks`` cuts an epoch into the compiled chunks ``sidjax.train.session`` runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from sidjax.data import Dataset, epoch_order, symmetric_label_noise
from sidjax.data.device import nbytes
from sidjax.train.members import Members
from sidjax.train.plan import Plan


class RunData(NamedTuple):
    """A run's data, placed.

    Attributes:
      dataset: the training part (after the limits and the validation
        hold-out) and the test split, with the clean labels.
      train_images: device array if ``resident``, else the host array.
      train_labels: ``[N]``, or ``[M, N]`` (each member's noisy labels) for M members.
      test_images, test_labels: on the device.
      resident: the training split lives on the device.
      realised_noise: each member's fraction of flipped training labels.
      noisy_labels: host ``[M, N]``, each member's training labels as trained on.
      val_images: the validation split on the device, or None.
      val_labels: host ``[M, N_val]``, each member's validation labels (with
        the same noise as its training labels).
    """

    dataset: Dataset
    train_images: Any
    train_labels: Any
    test_images: Any
    test_labels: Any
    resident: bool
    realised_noise: list[float]
    noisy_labels: np.ndarray
    val_images: Any = None
    val_labels: np.ndarray | None = None


def fits_on_device(plan: Plan, dataset: Dataset) -> bool:
    """Both splits, after the limits, fit in ``device_data_mb``."""
    return (
        nbytes(dataset.subset(plan.config.limit_train, plan.config.limit_test))
        <= plan.config.device_data_mb * 2**20
    )


def prepare_data(plan: Plan, dataset: Dataset, members: Members, resident: bool) -> RunData:
    """Limits, label noise per member (its seed's, as a separate run would draw), the
    validation hold-out (the last ``config.validation`` examples), placement."""
    config = plan.config
    data = dataset.subset(config.limit_train, config.limit_test)
    labels = []
    for seed in members.seeds:
        noisy = data.train_labels
        if config.label_noise > 0:
            noisy, _ = symmetric_label_noise(data.train_labels, config.label_noise, data.num_classes, seed)
        labels.append(noisy)
    noisy_all = np.stack(labels)
    num = len(data.train_labels) - config.validation
    val_images, val_labels = None, None
    if config.validation:
        val_images, val_labels = plan.learner.put(data.train_images[num:]), noisy_all[:, num:]
    data = dataclasses.replace(
        data, train_images=data.train_images[:num], train_labels=data.train_labels[:num]
    )
    noisy_labels = noisy_all[:, :num]
    realised = [float((n != data.train_labels).mean()) for n in noisy_labels]
    train_labels = members.stack_host(list(noisy_labels))
    train_images = data.train_images
    if resident:
        train_images, train_labels = plan.learner.put((train_images, train_labels))
    test_images, test_labels = plan.learner.put((data.test_images, data.test_labels))
    return RunData(data, train_images, train_labels, test_images, test_labels, resident, realised, noisy_labels,
                   val_images, val_labels)  # fmt: skip


class Chunk(NamedTuple):
    """The arguments of one compiled chunk: ``length`` steps whose batches are ``order[start: start + length]``.

    Attributes:
      images, labels: the training split (resident), or this chunk's examples (streamed).
      order: ``[M?, steps, B]`` indices into ``images``.
      start: the chunk's first step in ``order``.
      length: its steps.
    """

    images: Any
    labels: Any
    order: Any
    start: int
    length: int


def _streamed(plan: Plan, data: RunData, order: np.ndarray, starts) -> Any:
    """Each chunk's examples gathered on the host and sent; the next is sent while one computes."""
    for start, length in starts:
        idx = order[..., start : start + length, :]  # [M?, length, B]
        flat = idx.reshape(*idx.shape[:-2], -1)
        if flat.ndim == 1:
            images, labels = data.train_images[flat], data.train_labels[flat]
        else:
            images = np.stack([data.train_images[f] for f in flat])
            labels = np.stack([lab[f] for lab, f in zip(data.train_labels, flat, strict=True)])
        local = np.broadcast_to(np.arange(flat.shape[-1], dtype=np.int32).reshape(length, -1), idx.shape)
        yield Chunk(*plan.learner.put((images, labels, np.ascontiguousarray(local))), 0, length)


def epoch_chunks(plan: Plan, data: RunData, members: Members, epoch: int, first: int = 0):
    """Every ``Chunk`` of ``epoch`` from its step ``first``."""
    steps, chunk = plan.steps_per_epoch, plan.steps_per_chunk
    num, batch = len(data.dataset.train_labels), plan.config.batch_size
    order = members.stack_host([epoch_order(num, batch, seed, epoch) for seed in members.seeds])
    starts = [(start, min(chunk, steps - start)) for start in range(first, steps, chunk)]
    if not data.resident:
        return _streamed(plan, data, order, starts)
    order_on_device = plan.learner.put(order)
    return (Chunk(data.train_images, data.train_labels, order_on_device, s, n) for s, n in starts)


class Progress(NamedTuple):
    """An epoch's training so far.

    Attributes:
      steps: the epoch's steps done.
      metrics: per member, every step's metrics so far: host arrays ``[steps, ...]``.
      seconds: training time so far (the segments of a resumed epoch add up).
    """

    steps: int = 0
    metrics: list[dict[str, np.ndarray]] | None = None
    seconds: float = 0.0

    def means(self) -> list[dict[str, np.ndarray]]:
        """Per member, each metric's mean over the steps done (float64)."""
        return [{k: v.astype(np.float64).mean(0) for k, v in m.items()} for m in self.metrics]

    def extend(self, steps: int, metrics: list[dict[str, np.ndarray]], seconds: float) -> Progress:
        """This progress followed by a segment: ``steps`` done in all, the segment's per-step ``metrics``
        and its ``seconds``. A partial epoch saved by an older sidjax keeps its own keys."""
        if self.metrics is not None:
            metrics = [{k: np.concatenate([old[k], m[k]]) for k in m if k in old}
                       for old, m in zip(self.metrics, metrics, strict=True)]  # fmt: skip
        return Progress(steps, metrics, self.seconds + seconds)


def per_member(results: list, members: Members) -> list[dict[str, np.ndarray]]:
    """Chunk metrics ``[M?, length, ...]`` -> per member, every step's metrics ``[steps, ...]``."""
    host = [members.split(r) for r in jax.device_get(results)]
    return [{k: np.concatenate([r[i][k] for r in host]) for k in host[0][i]} for i in range(len(members))]
