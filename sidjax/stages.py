"""Blockwise units in stages, each stage one program on its device.

Blockwise units never exchange gradients, only forward activations, so each
unit and its optimizer state can live on its own device. The K units are cut
into ``num_stages`` contiguous stages; stage s is one jitted walk over its
units (``sidjax.units.walk``) on ``devices[s * D // num_stages]``, and
activations move to the next stage with one ``jax.device_put`` per stage
boundary. Dispatch is asynchronous, so stages whose inputs are ready compute
at the same time. This works for blocks of any structure (VGG, ResNet) as
for identical ones (ViT). For stacked units the same placement is also
available as one program over a mesh (``placement="mesh:1,D"``: the stacked
units and slots are split along ``unit``).

With the synchronous schedule stage s waits for stages 1..s-1, so on S
devices at most one is busy at a time (the exact blockwise step, tested equal
to the single-device step). With the pipelined schedule (``sidjax.schedule``)
every stage trains on its slots of the previous step, so all stages compute
at once. On one device, ``num_stages=K`` runs one program per unit, which
holds the least memory (one unit's activations and temp at a time).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sidjax.errors import ConfigError
from sidjax.losses import SIDLoss
from sidjax.network import Network, Parts
from sidjax.schedule import init_slots
from sidjax.state import Learner, TrainState, new_state
from sidjax.steps import Augment, batch_metrics, memory_beyond_arguments, step_key, trained_stem
from sidjax.units import LocalRule, UnitUpdate, first_input, make_unit_update, walk


@dataclasses.dataclass(frozen=True)
class Stages:
    """How K units are cut into stages and where each stage runs."""

    bounds: tuple[tuple[int, int], ...]
    devices: tuple[Any, ...]

    @classmethod
    def cut(cls, num_units: int, num_stages: int | None, devices) -> Stages:
        devices = tuple(devices or jax.devices())
        stages = num_stages or min(len(devices), num_units)
        if not 1 <= stages <= num_units:
            raise ConfigError(
                f"placement: stages must lie in [1, {num_units}] (one unit at least each), got {stages}",
                "placement",
            )
        sizes = [num_units // stages + (s < num_units % stages) for s in range(stages)]
        return cls(tuple((sum(sizes[:s]), sum(sizes[: s + 1])) for s in range(stages)), devices)

    def device(self, s: int):
        """The device of stage s."""
        return self.devices[s * len(self.devices) // len(self.bounds)]

    def device_of(self, k: int):
        """The device of unit k."""
        return self.device(next(s for s, (a, b) in enumerate(self.bounds) if a <= k < b))

    def place(self, network: Network, state: TrainState) -> TrainState:
        """A state in the network's layout -> each unit (and its slot) on its stage's device, as tuples."""

        def units(tree):
            return tuple(jax.device_put(t, self.device_of(k)) for k, t in enumerate(network.unit_list(tree)))

        parts = Parts(jax.device_put(state.parts.stem, self.device(0)), units(state.parts.units))
        slots = units(state.slots) if state.slots else ()
        return TrainState(parts, jax.device_put(state.step, self.device(0)), slots)

    def gather(self, network: Network, state: TrainState) -> TrainState:
        """The state on the first device, in the network's layout (for evaluation and checkpoints)."""
        state = jax.device_put(state, self.devices[0])
        parts = state.parts._replace(units=network.join_units(list(state.parts.units)))
        slots = network.join_units(list(state.slots)) if state.slots else ()
        return state._replace(parts=parts, slots=slots)


@dataclasses.dataclass(frozen=True)
class StagedStep:
    """One training step as one program per stage, dispatched in order from Python."""

    network: Network
    method: LocalRule
    stages: Stages
    update: UnitUpdate
    loss: SIDLoss
    pipelined: bool
    augment: Augment | None

    def stage(self, s: int, units, inputs, stem, batch):
        """Stage s's walk; stage 0 also augments the batch, builds the first input and counts the step."""
        network, (a, b) = self.network, self.stages.bounds[s]
        x, labels, key, step = batch
        key = step_key(key, step)
        alphas = self.loss.alphas(network.num_units, step)
        if s == 0:
            if self.augment is not None:
                x = self.augment(key, x)
            x, fresh = first_input(network, self.method, x, labels, key)
            inputs = [fresh._replace(valid=jnp.asarray(True)), *inputs] if self.pipelined else fresh
            step = step + 1
        elif not self.pipelined:
            inputs = inputs._replace(valid=True)  # every synchronous input is valid: no masking traced
        units, stem, outputs = walk(self.update, list(units), range(a, b), inputs, alphas, key, stem, x)
        return units, stem, outputs, step

    def run(self, program: Callable, state: TrainState, batch, key) -> tuple[TrainState, dict]:
        """One step, every stage through ``program`` (the jitted ``stage``, or one that records it)."""
        stages, units, outputs, carry = self.stages, [], [], None
        stem, step = trained_stem(self.network, state), None
        for s, (a, b) in enumerate(stages.bounds):
            if self.pipelined:
                inputs = [state.slots[k] for k in range(max(a, 1), b)]
            else:
                inputs = None if s == 0 else jax.device_put(carry, stages.device(s))
            x, labels = batch if s == 0 else (None, None)
            first = jax.device_put((x, labels, key, state.step), stages.device(s))
            parts, new_stem, outs, new_step = program(
                s, state.parts.units[a:b], inputs, stem if s == 0 else None, first
            )
            stem, step = (new_stem, new_step) if s == 0 else (stem, step)
            units, outputs, carry = units + parts, outputs + outs, outs[-1].next
        parts = Parts(stem or state.parts.stem, tuple(units))
        slots = self.next_slots(state.slots, outputs) if self.pipelined else ()
        return TrainState(parts, step, slots), self.metrics(outputs)

    def next_slots(self, slots: tuple, outputs: list) -> tuple:
        """Unit k's output waits one step in unit k+1's slot, moved only where k+1 is on another stage."""
        device_of = self.stages.device_of
        moved = [
            out.next if device_of(k) == device_of(k + 1) else jax.device_put(out.next, device_of(k + 1))
            for k, out in enumerate(outputs[:-1])
        ]
        return (slots[0], *moved)

    def metrics(self, outputs: list) -> dict:
        """The step's metrics from every unit's output, on the first device."""
        fields = [[o.loss for o in outputs], [o.logits for o in outputs], [o.next.labels for o in outputs],
                  [o.next.valid for o in outputs]]  # fmt: skip
        return _metrics(*jax.device_put(fields, self.stages.device(0)), pipelined=self.pipelined)


@functools.partial(jax.jit, static_argnames="pipelined")
def _metrics(losses, logits, labels, valid, pipelined: bool) -> dict:
    valid = jnp.stack([jnp.asarray(v, jnp.float32) for v in valid]) if pipelined else None
    losses = jnp.stack(losses)
    return batch_metrics(losses.sum(), losses, jnp.stack(logits), jnp.stack(labels), valid)


def make_stages(
    network: Network,
    method: LocalRule,
    tx: optax.GradientTransformation,
    loss: SIDLoss,
    *,
    pipelined: bool,
    num_stages: int | None,
    devices,
    augment: Augment | None,
    batch_size: int | None,
    refresh: bool = False,
) -> Learner:
    """The learner of a blockwise network with its units in stages, trained by a local method
    (``sidjax.make_learner`` checks the rules)."""
    stages = Stages.cut(network.num_units, num_stages, devices)
    staged = StagedStep(network, method, stages, make_unit_update(network, method, tx, loss, refresh), loss,
                        pipelined, augment)  # fmt: skip
    program = jax.jit(staged.stage, static_argnums=0)

    def fresh(variables) -> TrainState:
        return new_state(
            variables, tx, init_slots(network, method, variables, batch_size) if pipelined else ()
        )

    def memory_bytes(state: TrainState, batch, key) -> int:
        """The largest over stages of a stage program's memory beyond its arguments, plus its inputs.

        Stages run one after another (synchronous) or on different devices,
        so a device holds at most one stage's memory at a time. Not counted:
        the stage programs do not donate, so a stage's new parameters and
        optimizer state live beside the old ones until the step returns.
        """
        calls = []
        staged.run(lambda s, *args: calls.append((s, args)) or program(s, *args), state, batch, key)
        sizes = [memory_beyond_arguments(program.lower(s, *args).compile())  # outputs included
                 + sum(a.nbytes for a in jax.tree.leaves([args[1], args[3]]))  # the step's intermediates
                 for s, args in calls]  # fmt: skip
        return max(sizes)

    return Learner(
        network=network,
        init=lambda variables: stages.place(network, fresh(variables)),
        step=lambda state, batch, key: staged.run(program, state, batch, key),
        place=lambda state: stages.place(network, state),
        gather=lambda state: stages.gather(network, state),
        put=lambda tree: jax.device_put(tree, stages.device(0)),
        memory_bytes=memory_bytes,
        template=lambda variables: jax.eval_shape(fresh, variables),
        traceable=False,
        execution="sequential",
    )
