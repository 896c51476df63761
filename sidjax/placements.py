"""The trainers of the placements other than one device: a mesh, and stages.

Both return the same ``Trainer`` record as a single device does
(``sidjax.trainer.make_trainer`` chooses), so ``run`` does not know which
placement it drives.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from sidjax.data import Dataset, normalised_batch
from sidjax.parallel import DATA, gather, make_mesh, replicate, shard_state
from sidjax.pipeline import BlockPipeline
from sidjax.trainer import Plan, Trainer, make_chunk


def mesh_trainer(plan: Plan, dataset: Dataset, step, key, init_one, evaluate_split, predict_split) -> Trainer:
    """One program on a ``(data, module)`` mesh: state split as ``sidjax.parallel`` does, data replicated."""
    mesh, network = make_mesh(*plan.placement.mesh), plan.network
    evaluate, predict = jax.jit(evaluate_split), jax.jit(predict_split)
    return Trainer(
        init=lambda params: shard_state(init_one(params[0]), network, mesh),
        load=lambda states: shard_state(states[0], network, mesh),
        unload=lambda state: [gather(state)],
        put=lambda tree: replicate(tree, mesh),
        chunk=make_chunk(dataset, step, key, batch_sharding=NamedSharding(mesh, PartitionSpec(DATA))),
        evaluate=lambda state, images, labels: [gather(evaluate(state.params, images, labels))],
        predict=lambda state, images: [gather(predict(state.params, images))],
    )


def stages_trainer(plan: Plan, dataset: Dataset, tx, augment, key, evaluate_split, predict_split) -> Trainer:
    """Blockwise units in stages (``sidjax.pipeline.BlockPipeline``), stepped from Python."""
    config = plan.config
    pipe = BlockPipeline(plan.network, tx, config.method, config.loss(), pipelined=config.pipelined,
                         num_stages=plan.placement.stages or None, augment=augment)  # fmt: skip
    x_shape = (config.batch_size, *plan.info.input_shape)
    evaluate, predict = jax.jit(evaluate_split), jax.jit(predict_split)
    return Trainer(
        init=lambda params: pipe.init(params[0], x_shape),
        load=lambda states: pipe.place(states[0]),
        unload=lambda state: [jax.device_get(pipe.gather(state))],
        put=lambda tree: jax.device_put(tree, pipe.stage_device(0)),
        chunk=StageChunks(pipe, dataset, key),
        evaluate=lambda state, images, labels: [
            jax.device_get(evaluate(pipe.gather(state).params, images, labels))
        ],
        predict=lambda state, images: [jax.device_get(predict(pipe.gather(state).params, images))],
    )


class StageChunks:
    """Chunks of the stage pipeline: its steps are driven from Python, one program per stage."""

    def __init__(self, pipe, dataset: Dataset, key: jax.Array):
        self.pipe, self.key = pipe, key
        self.batch = jax.jit(
            lambda images, labels, order, i: normalised_batch(dataset, images, labels, order[i])
        )
        self.stack = jax.jit(lambda metrics: jax.tree.map(lambda *m: jnp.stack(m), *metrics))

    def compile(self, state, images, labels, order, start, length: int) -> float:
        """Compiles every stage's program by one step on a copy of the state."""
        begin = time.perf_counter()
        copy = jax.tree.map(jnp.copy, state)
        jax.block_until_ready(self.pipe.step(copy, self.batch(images, labels, order, start), self.key))
        return time.perf_counter() - begin

    def __call__(self, state, images, labels, order, start, length: int):
        per_step = []
        for i in range(start, start + length):
            state, metrics = self.pipe.step(state, self.batch(images, labels, order, i), self.key)
            per_step.append(metrics)
        return state, self.stack(per_step)
