"""The compiled programs of a run: chunks of training steps, evaluation and prediction, for its M members.

The training step and its state come from the plan's ``Learner``; this
module runs it: a *chunk* is ``steps_per_chunk`` steps as one compiled
``lax.scan`` over batches gathered on the device (stages, whose step is
driven from Python, loop instead). M members (seeds, grid points) train
together in one program: their states are stacked along a leading axis and
the chunk, evaluation and prediction are ``jax.vmap``-ed over it (or, for
convolutions on XLA:CPU, unrolled: ``Plan.cpu_convolutions``). A grid
point's values live in its members' optimizer states, so one step serves all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sidjax.data import Dataset, normalised_batch
from sidjax.evaluation import make_split_evaluator, make_split_predictor
from sidjax.network import Variables, stack
from sidjax.parallel import to_host
from sidjax.state import TrainState
from sidjax.train.members import Members
from sidjax.train.plan import Plan


class RunPrograms(NamedTuple):
    """What a run compiles for its M members, beside its ``Learner``.

    Attributes:
      chunk: ``chunk(state, images, labels, order, start, length) -> (state,
        metrics)``: ``length`` steps whose batches are ``order[start: start +
        length]`` (``[steps, B]`` indices into ``images``); every metric has
        a leading ``[length]`` axis (after the member axis).
        ``chunk.compile(...)`` compiles ahead of time and returns the
        seconds it took.
      evaluate: ``(state, images, labels) -> per-member sums`` over a split.
      predict: ``(state, images) -> per-member int [N]``, the last unit's classes.
      members: the members trained together.
    """

    chunk: Any
    evaluate: Callable[[Any, Any, Any], list[dict[str, np.ndarray]]]
    predict: Callable[[Any, Any], list[np.ndarray]]
    members: Members


def over_members(fn: Callable, in_axes: tuple, count: int, unroll: bool) -> Callable:
    """``fn`` over ``count`` members in one program: ``jax.vmap``, or with ``unroll`` its contract unrolled.

    Unrolled, the members follow one another: XLA:CPU turns a vmapped
    convolution into a grouped one, several times slower per member than the
    members apart.
    """
    if not unroll:
        return jax.vmap(fn, in_axes=in_axes)

    def unrolled(*args):
        outs = [
            fn(
                *(
                    a if axis is None else jax.tree.map(lambda v, i=i: v[i], a)
                    for a, axis in zip(args, in_axes, strict=True)
                )
            )
            for i in range(count)
        ]
        return stack(outs)

    return unrolled


class CompiledChunks:
    """A jitted chunk with a static length, compiled ahead of time once per length.

    ``keys`` (each member's train key) is bound here, so callers pass the data only.
    """

    def __init__(self, jitted: Callable, keys: jax.Array):
        self.jitted, self.keys = jitted, keys
        self.compiled: dict[int, Any] = {}

    def compile(self, state, images, labels, order, start, length: int) -> float:
        begin = time.perf_counter()
        lowered = self.jitted.lower(state, images, labels, order, start, self.keys, length)
        self.compiled[length] = lowered.compile()
        return time.perf_counter() - begin

    def __call__(self, state, images, labels, order, start, length: int):
        if length not in self.compiled:
            self.compile(state, images, labels, order, start, length)
        return self.compiled[length](state, images, labels, order, start, self.keys)


class PythonChunks:
    """Chunks of a learner whose step is driven from Python (stages): one step at a time."""

    def __init__(self, step: Callable, dataset: Dataset, key: jax.Array):
        self.step, self.key = step, key
        self.batch = jax.jit(
            lambda images, labels, order, i: normalised_batch(dataset, images, labels, order[i])
        )
        self.stack = jax.jit(lambda metrics: jax.tree.map(lambda *m: jnp.stack(m), *metrics))

    def compile(self, state, images, labels, order, start, length: int) -> float:
        """Compiles every program of a step by one step on a copy of the state."""
        begin = time.perf_counter()
        copy = jax.tree.map(jnp.copy, state)
        jax.block_until_ready(self.step(copy, self.batch(images, labels, order, start), self.key))
        return time.perf_counter() - begin

    def __call__(self, state, images, labels, order, start, length: int):
        per_step = []
        for i in range(start, start + length):
            state, metrics = self.step(state, self.batch(images, labels, order, i), self.key)
            per_step.append(metrics)
        return state, self.stack(per_step)


def make_chunks(plan: Plan, dataset: Dataset, members: Members, streamed: bool) -> Any:
    """The chunk program of ``plan``'s learner for ``members`` (images shared, or per member when ``streamed``)."""
    learner, keys = plan.learner, members.train_keys()
    if not learner.traceable:
        return PythonChunks(learner.step, dataset, keys)

    def chunk(state, images, labels, order, start, key, length):
        idxs = jax.lax.dynamic_slice_in_dim(order, start, length)

        def body(state, idx):
            return learner.step(state, normalised_batch(dataset, images, labels, idx), key)

        if length == 1:  # no loop at all (see chunking.auto_chunk)
            state, metrics = body(state, idxs[0])
            return state, jax.tree.map(lambda m: m[None], metrics)
        return jax.lax.scan(body, state, idxs)

    if members.together:
        axes = (0, 0 if streamed else None, 0, 0, None, 0, None)
        chunk = over_members(chunk, axes, len(members), plan.cpu_convolutions)
    return CompiledChunks(jax.jit(chunk, static_argnums=6, donate_argnums=0), keys)


def make_programs(plan: Plan, dataset: Dataset, members: Members, streamed: bool = False) -> RunPrograms:
    """The programs that train ``plan`` on ``dataset`` for ``members`` together.

    ``dataset`` supplies the normalisation statistics (constants in the
    programs); ``streamed``: the training split is sent chunk by chunk.
    """
    config, learner = plan.config, plan.learner
    evaluate_split = make_split_evaluator(
        plan.network, dataset, config.eval_batch_size, config.label_smoothing
    )
    predict_split = make_split_predictor(plan.network, dataset, config.eval_batch_size)
    if members.together:
        evaluate_split = over_members(evaluate_split, (0, None, None), len(members), plan.cpu_convolutions)
        predict_split = over_members(predict_split, (0, None), len(members), plan.cpu_convolutions)
    evaluate_jit, predict_jit = jax.jit(evaluate_split), jax.jit(predict_split)

    return RunPrograms(
        chunk=make_chunks(plan, dataset, members, streamed),
        evaluate=lambda state, images, labels: members.split(
            to_host(evaluate_jit(_variables(learner, state), images, labels))
        ),
        predict=lambda state, images: members.split(to_host(predict_jit(_variables(learner, state), images))),
        members=members,
    )


def _variables(learner, state: TrainState) -> Variables:
    return learner.gather(state).variables


def init_states(plan: Plan, members: Members) -> Any:
    """Each member's first state: its seed's init key (or ``init_from``'s run), its point's optimizer values;
    placed (stacked along axis 0 for several members)."""
    return members.stack(
        [
            plan.initial_state(m.seed, m.point, key)
            for m, key in zip(members, members.init_keys(), strict=True)
        ]
    )


def load_states(plan: Plan, members: Members, states: list[TrainState]) -> Any:
    """Per-member ``TrainState``s in the network's layout (restored checkpoints) -> placed."""
    return jax.device_put(members.stack(states)) if members.together else plan.learner.place(states[0])


def unload_states(plan: Plan, members: Members, state: Any) -> list[TrainState]:
    """The placed state -> per-member ``TrainState``s on the host, in the network's layout."""
    return members.split(to_host(plan.learner.gather(state)))
