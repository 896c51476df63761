"""Blockwise SID with its blocks placed on devices: synchronous and pipelined schedules.

Blockwise units never exchange gradients, only forward activations, so each
unit (block + belief head) and its optimizer state can live on its own
device. Units are placed in contiguous stages over ``devices`` (one unit per
device when there are K devices); each unit's local update is one jit that
runs where its inputs live, and activations move to the next stage with
``jax.device_put``. Dispatch is asynchronous, so devices whose inputs are
ready compute at the same time. This placement works for heterogeneous blocks
(VGG, ResNet) and identical ones (ViT) alike.

Schedules (SID_METHOD §3):

* ``"synchronous"``: the exact blockwise step (``execution="sequential"``),
  distributed: unit k trains on unit k-1's output of the same step. Results
  equal the single-device step. Unit k waits for units 1..k-1 (forward and
  update), so on K devices at most one device is busy at a time.
* ``"pipelined"``: at step t unit k trains on unit k-1's output from step
  t-1 (with the labels of the batch it came from), kept in the carry. All K
  updates of a step are independent, so all devices compute and update at
  once and no unit waits for another: no update locking. Unit k first trains
  at step k (0-based): the fill takes K-1 steps, after which nothing idles
  (bubble fraction (K-1)/T over T steps; no microbatches are needed because
  no backward pass crosses a unit boundary). Unit k sees batch t-k at step t
  and inputs computed with unit k-1's params of one step earlier.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sidjax.losses import uniform_log_belief
from sidjax.network import NetParams, Network
from sidjax.steps import (
    Augment,
    SIDLoss,
    TrainState,
    batch_metrics,
    init_train_state,
    make_unit_update,
    resolve_method,
)

Schedule = Literal["synchronous", "pipelined"]
SCHEDULES: tuple[str, ...] = ("synchronous", "pipelined")


class Slot(NamedTuple):
    """A unit's pending input in the pipelined schedule (on that unit's device)."""

    h: chex.Array  # [B, ...] the previous unit's (stopped) output
    log_belief: chex.Array  # [B, N] the previous unit's log-belief
    labels: chex.Array  # [B] the labels of the batch these came from
    valid: chex.Array  # bool scalar: False until the pipeline has filled this slot


class PipelineState(NamedTuple):
    """``train``: params and optimizer states, units as a tuple, each on its device.
    ``slots``: the pipelined schedule's carry, one per unit after the first (empty if synchronous)."""

    train: TrainState
    slots: tuple[Slot, ...]


@dataclasses.dataclass(frozen=True)
class BlockPipeline:
    """Trains a blockwise network with its units placed on ``devices``.

    Attributes:
      network: a blockwise network (``make_blockwise_network``).
      tx: the optimizer of every part.
      method: ``"sid"`` or ``"dgl"`` (BP has a global backward pass and cannot
        be placed this way; shard its batch instead, see ``sidjax.parallel``).
      loss: local-loss hyperparameters.
      schedule: ``"synchronous"`` or ``"pipelined"``.
      devices: the stages; their number must divide K. Default: ``K`` devices
        if there are that many, otherwise one.
      augment: optional ``augment(key, x) -> x`` applied to the fresh batch.
    """

    network: Network
    tx: optax.GradientTransformation
    method: str = "sid"
    loss: SIDLoss = SIDLoss()
    schedule: Schedule = "synchronous"
    devices: tuple | None = None
    augment: Augment | None = None

    def __post_init__(self):
        k = self.network.num_units
        if not self.network.cut_features:
            raise ValueError(
                "block placement needs a blockwise network (make_blockwise_network); the shared trunk's "
                "modules are sharded with sidjax.parallel instead"
            )
        if self.method not in ("sid", "dgl"):
            raise ValueError(
                f"method {self.method!r} cannot be placed block by block (one global backward pass); "
                "use 'sid' or 'dgl', or shard BP's batch with sidjax.parallel"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        devices = self.devices
        if devices is None:
            devices = jax.devices()[:k] if len(jax.devices()) >= k else jax.devices()[:1]
        devices = tuple(devices)
        if not devices or k % len(devices):
            raise ValueError(
                f"{len(devices)} devices cannot each hold the same number of the {k} blocks; "
                f"pass a number of devices that divides {k}"
            )
        object.__setattr__(self, "devices", devices)
        object.__setattr__(self, "loss", resolve_method(self.network, self.method, self.loss))
        object.__setattr__(self, "_update", make_unit_update(self.network, self.tx, self.loss))
        object.__setattr__(self, "_augment", jax.jit(self.augment) if self.augment is not None else None)

    def device_of(self, k: int):
        """The device of unit k (contiguous stages)."""
        return self.devices[k * len(self.devices) // self.network.num_units]

    # --- state ---------------------------------------------------------------------------
    def init(self, params: NetParams, input_shape: tuple[int, ...], batch_size: int) -> PipelineState:
        """Places ``params`` and fresh optimizer states on the devices; empty pipeline slots."""
        return self.place(init_train_state(params, self.tx), input_shape, batch_size)

    def place(self, state: TrainState, input_shape: tuple[int, ...], batch_size: int) -> PipelineState:
        """An existing single-device ``TrainState`` (e.g. from a checkpoint), placed; empty slots."""
        net = self.network
        units = tuple(net.unit_params(state.params.units, k) for k in range(net.num_units))
        opts = tuple(net.unit_params(state.opt_state.units, k) for k in range(net.num_units))
        dev0 = self.device_of(0)
        train = TrainState(
            NetParams(jax.device_put(state.params.stem, dev0), self._per_unit(units)),
            NetParams(jax.device_put(state.opt_state.stem, dev0), self._per_unit(opts)),
            jax.device_put(state.step, dev0),
        )
        slots = ()
        if self.schedule == "pipelined":
            shapes = self._activation_shapes(state.params, (batch_size, *input_shape))
            slots = tuple(
                jax.device_put(
                    Slot(
                        jnp.zeros(shapes[k - 1].shape, shapes[k - 1].dtype),
                        uniform_log_belief(batch_size, net.num_classes),
                        jnp.zeros((batch_size,), jnp.int32),
                        jnp.asarray(False),
                    ),
                    self.device_of(k),
                )
                for k in range(1, net.num_units)
            )
        return PipelineState(train, slots)

    def gather(self, pstate: PipelineState, device=None) -> TrainState:
        """The ``TrainState`` on one device, in the network's layout (for evaluation, checkpoints)."""
        device = device or self.devices[0]
        train = jax.device_put(pstate.train, device)
        units, opts = train.params.units, train.opt_state.units
        if self.network.stacked:
            units = jax.tree.map(lambda *a: jnp.stack(a), *units)
            opts = jax.tree.map(lambda *a: jnp.stack(a), *opts)
        return TrainState(
            NetParams(train.params.stem, units), NetParams(train.opt_state.stem, opts), train.step
        )

    def _per_unit(self, trees: tuple) -> tuple:
        return tuple(jax.device_put(t, self.device_of(k)) for k, t in enumerate(trees))

    def _activation_shapes(self, params: NetParams, x_shape: tuple[int, ...]) -> list:
        net = self.network
        h = jax.ShapeDtypeStruct(x_shape, jnp.float32)
        h = jax.eval_shape(net.stem, params.stem, h)
        log_belief = jax.ShapeDtypeStruct((x_shape[0], net.num_classes), jnp.float32)
        shapes = []
        for k in range(net.num_units):
            h, _ = jax.eval_shape(
                lambda u, h, b, k=k: net.unit(k, u, h, b), net.unit_params(params.units, k), h, log_belief
            )
            shapes.append(h)
        return shapes

    # --- step ----------------------------------------------------------------------------
    def step(
        self, pstate: PipelineState, batch: tuple[chex.Array, chex.Array], key: chex.PRNGKey
    ) -> tuple[PipelineState, dict[str, chex.Array]]:
        """One step of the schedule on ``batch = (x [B, ...], labels [B])``.

        Metrics as ``make_train_step``'s; in the pipelined schedule the last
        unit's accuracy is on the batch it saw (K-1 steps old) and a unit
        whose slot is not filled yet reports its loss on placeholder input.
        """
        net, train = self.network, pstate.train
        x, labels = batch
        dev0 = self.device_of(0)
        x, labels = jax.device_put(x, dev0), jax.device_put(labels, dev0)
        if self._augment is not None:
            x = self._augment(jax.random.fold_in(key, train.step), x)
        alphas = self.loss.alphas(net.num_units)
        has_stem = net.stem_def is not None
        stem, stem_opt = train.params.stem, train.opt_state.stem
        h, log_belief, unit_labels, valid = x, uniform_log_belief(x.shape[0], net.num_classes), labels, True
        units, opts, values, logits, outputs = [], [], [], [], []
        for k in range(net.num_units):
            device = self.device_of(k)
            if self.schedule == "pipelined" and k > 0:
                h, log_belief, unit_labels, valid = pstate.slots[k - 1]
            else:
                h, log_belief, unit_labels = jax.device_put((h, log_belief, unit_labels), device)
            first = has_stem and k == 0
            out = self._update(
                0 if net.stacked else k,
                first,
                stem if first else None,
                stem_opt if first else None,
                train.params.units[k],
                train.opt_state.units[k],
                h,
                log_belief,
                x if first else None,
                unit_labels,
                jax.device_put(alphas[k], device),
                jax.device_put(valid, device),
            )
            if first:
                stem, stem_opt = out[0], out[1]
            units.append(out[2])
            opts.append(out[3])
            h, log_belief = out[4], out[5]
            values.append(jax.device_put(out[6], dev0))
            logits.append(jax.device_put(out[7], dev0))
            outputs.append((h, log_belief, unit_labels, valid))
        slots = ()
        if self.schedule == "pipelined":  # unit k's output waits one step for unit k+1
            slots = tuple(
                jax.device_put(Slot(*outputs[k - 1]), self.device_of(k)) for k in range(1, net.num_units)
            )
        new = TrainState(NetParams(stem, tuple(units)), NetParams(stem_opt, tuple(opts)), train.step + 1)
        unit_losses = jnp.stack(values)
        last_labels = jax.device_put(unit_labels, dev0)
        return PipelineState(new, slots), batch_metrics(
            unit_losses.sum(), unit_losses, jnp.stack(logits), last_labels
        )
