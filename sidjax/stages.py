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
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sidjax.errors import ConfigError
from sidjax.losses import SIDLoss
from sidjax.network import Network
from sidjax.schedule import init_slots
from sidjax.state import Learner, TrainState, new_state
from sidjax.steps import Augment, batch_metrics, join_state, memory_beyond_arguments, stem_state, step_key
from sidjax.units import PartState, make_unit_update, walk


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


def make_stages(
    network: Network,
    tx: optax.GradientTransformation,
    loss: SIDLoss,
    *,
    pipelined: bool,
    num_stages: int | None,
    devices,
    augment: Augment | None,
    batch_size: int | None,
) -> Learner:
    """The learner of a blockwise network with its units in stages (``sidjax.make_learner`` checks the rules)."""
    stages = Stages.cut(network.num_units, num_stages, devices)
    update = make_unit_update(network, tx, loss)
    dev0 = stages.device(0)

    def stage_program(s, units, inputs, stem, batch):
        """Stage s's walk; stage 0 also augments the batch, builds the first input and counts the step."""
        a, b = stages.bounds[s]
        x, labels, key, step = batch
        key = step_key(key, step)
        alphas = loss.alphas(network.num_units, step)
        if s == 0:
            if augment is not None:
                x = augment(key, x)
            fresh = network.first_input(x, labels)
            inputs = [fresh._replace(valid=jnp.asarray(True)), *inputs] if pipelined else fresh
            step = step + 1
        elif not pipelined:
            inputs = inputs._replace(valid=True)  # every synchronous input is valid: no masking traced
        units, stem, outputs = walk(update, list(units), range(a, b), inputs, alphas, key, stem, x)
        return units, stem, outputs, step

    metrics = jax.jit(lambda losses, logits, labels, valid: batch_metrics(
        jnp.stack(losses).sum(), jnp.stack(losses), jnp.stack(logits), jnp.stack(labels),
        jnp.stack([jnp.asarray(v, jnp.float32) for v in valid]) if pipelined else None))  # fmt: skip

    def run(program: Callable, state: TrainState, batch, key):
        """One step, every stage through ``program`` (the jitted stage program, or one that records it)."""
        slots = list(state.slots)
        units, outputs, carry, new_step = [], [], None, None
        stem = stem_state(network, state)
        for s, (a, b) in enumerate(stages.bounds):
            if pipelined:
                inputs = [slots[k] for k in range(max(a, 1), b)]
            else:
                inputs = None if s == 0 else jax.device_put(carry, stages.device(s))
            x, labels = batch if s == 0 else (None, None)
            first = jax.device_put((x, labels, key, state.step), stages.device(s))
            parts = [
                PartState(state.params.units[k], state.stats.units[k], state.opt_state.units[k])
                for k in range(a, b)
            ]
            parts, new_stem, outs, step = program(s, parts, inputs, stem if s == 0 else None, first)
            if s == 0:
                stem, new_step = new_stem, step
            units += parts
            outputs += outs
            carry = outs[-1].next
        new = join_state(state, units, stem, tuple)._replace(step=new_step)
        if pipelined:
            new = new._replace(slots=next_slots(slots, outputs))
        losses, logits, labels, valid = jax.device_put(
            tuple([getattr(o, f) for o in outputs] for f in ("loss", "logits")) +
            tuple([getattr(o.next, f) for o in outputs] for f in ("labels", "valid")), dev0)  # fmt: skip
        return new, metrics(losses, logits, labels, valid)

    def next_slots(slots: list, outputs: list) -> tuple:
        """Unit k's output waits one step in unit k+1's slot, moved only where k+1 is on another stage."""
        moved = [
            out.next
            if stages.device_of(k) == stages.device_of(k + 1)
            else jax.device_put(out.next, stages.device_of(k + 1))
            for k, out in enumerate(outputs[:-1])
        ]
        return (slots[0], *moved)

    program = jax.jit(stage_program, static_argnums=0)

    def place(state: TrainState) -> TrainState:
        """A state in the network's layout -> units (and their slots) on their stages' devices, as tuples."""

        def units(tree):
            return tuple(
                jax.device_put(t, stages.device_of(k)) for k, t in enumerate(network.unit_list(tree))
            )

        return state._replace(
            params=state.params._replace(
                stem=jax.device_put(state.params.stem, dev0), units=units(state.params.units)
            ),
            stats=state.stats._replace(
                stem=jax.device_put(state.stats.stem, dev0), units=units(state.stats.units)
            ),
            opt_state=state.opt_state._replace(
                stem=jax.device_put(state.opt_state.stem, dev0), units=units(state.opt_state.units)
            ),
            step=jax.device_put(state.step, dev0),
            slots=units(state.slots) if pipelined else (),
        )

    def gather(state: TrainState) -> TrainState:
        """The state on the first device, in the network's layout (for evaluation and checkpoints)."""
        state = jax.device_put(state, stages.devices[0])
        join = network.join_units
        return state._replace(
            params=state.params._replace(units=join(list(state.params.units))),
            stats=state.stats._replace(units=join(list(state.stats.units))),
            opt_state=state.opt_state._replace(units=join(list(state.opt_state.units))),
            slots=join(list(state.slots)) if pipelined else (),
        )

    def init(variables) -> TrainState:
        slots = init_slots(network, variables, batch_size) if pipelined else ()
        return place(new_state(variables, tx, slots))

    def memory_bytes(state: TrainState, batch, key) -> int:
        """The largest over stages of a stage program's memory beyond its arguments, plus its inputs.

        Stages run one after another (synchronous) or on different devices,
        so a device holds at most one stage's memory at a time. Not counted:
        the stage programs do not donate, so a stage's new parameters and
        optimizer state live beside the old ones until the step returns.
        """
        calls = []

        def record(s, *args):
            calls.append((s, args))
            return program(s, *args)

        run(record, state, batch, key)
        peak = 0
        for s, args in calls:
            own = memory_beyond_arguments(program.lower(s, *args).compile())  # outputs included
            inputs = sum(a.nbytes for a in jax.tree.leaves([args[1], args[3]]))  # the step's intermediates
            peak = max(peak, own + inputs)
        return peak

    return Learner(
        network=network,
        init=init,
        step=lambda state, batch, key: run(program, state, batch, key),
        place=place,
        gather=gather,
        put=lambda tree: jax.device_put(tree, dev0),
        memory_bytes=memory_bytes,
        traceable=False,
    )
