"""Blockwise SID with blocks on devices: synchronous == single device, pipelined == its recurrence."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from test_blockwise import NUM_CLASSES, tiny_blockwise

from sidjax import SIDLoss, init_train_state, make_train_step
from sidjax.losses import uniform_log_belief
from sidjax.pipeline import BlockPipeline

LOSS = SIDLoss(0.5)
# eps well above float32 rounding: Adam's first steps are ~lr * sign(g), which would turn
# rounding noise in near-zero gradients (jitted pipeline vs op-by-op reference) into lr-sized gaps.
TX = optax.adam(1e-2, eps=1e-3)


def batches(shape, n=4, size=8):
    keys = jax.random.split(jax.random.key(3), n)
    return [
        (
            jax.random.normal(k, (size, *shape)),
            jax.random.randint(jax.random.fold_in(k, 1), (size,), 0, NUM_CLASSES),
        )
        for k in keys
    ]


def run_pipeline(network, params, shape, schedule, devices, data):
    pipe = BlockPipeline(network, TX, "sid", LOSS, schedule=schedule, devices=devices)
    pstate = pipe.init(params, shape, data[0][1].shape[0])
    for batch in data:
        pstate, metrics = pipe.step(pstate, batch, jax.random.key(0))
    return pipe, pstate, metrics


@pytest.mark.parametrize("model,k,shape,ndev", [("simplecnn", 4, (8, 8, 1), 4), ("vgg11", 4, (8, 8, 1), 2),
                                                ("vit_tiny", 4, (8, 8, 1), 4)])  # fmt: skip
def test_synchronous_on_devices_equals_single_device_step(model, k, shape, ndev):
    network, params = tiny_blockwise(model, k, shape)
    data = batches(shape)
    step = make_train_step(network, TX, "sid", LOSS, execution="sequential")
    state = init_train_state(params, TX)
    for batch in data:
        state, ref_metrics = step(state, batch, jax.random.key(0))
    pipe, pstate, metrics = run_pipeline(network, params, shape, "synchronous", jax.devices()[:ndev], data)
    chex.assert_trees_all_close(pipe.gather(pstate).params, state.params, atol=1e-6)
    chex.assert_trees_all_close(metrics, ref_metrics, atol=1e-6)
    for u in range(k):  # unit u and its optimizer state live on their stage's device
        leaves = jax.tree.leaves((pstate.train.params.units[u], pstate.train.opt_state.units[u]))
        assert {d for leaf in leaves for d in leaf.devices()} == {jax.devices()[u * ndev // k]}


def reference_pipelined(network, params, data):
    """The one-step-stale recurrence, by hand, on one device: unit k trains at step t on what
    unit k-1 output at step t-1 (with that batch's labels); an empty slot means no update."""
    k_units = network.num_units
    units = [network.unit_params(params.units, k) for k in range(k_units)]
    stem = params.stem
    opts = [TX.init(u) for u in units]
    stem_opt = TX.init(stem)
    slots = [None] * k_units
    for x, labels in data:
        new_slots = [None] * k_units
        for k in range(k_units):
            if k == 0:
                h, log_belief, y = None, uniform_log_belief(x.shape[0], NUM_CLASSES), labels
            elif slots[k] is None:
                continue
            else:
                h, log_belief, y = slots[k]

            def loss_fn(stem_p, unit_p, k=k, x=x, h=h, log_belief=log_belief, y=y):
                h_in = network.stem(stem_p, x) if k == 0 else h
                h_out, logits = network.unit(0 if network.stacked else k, unit_p, h_in, log_belief)
                return LOSS.per_example(logits, log_belief, y, 0.5).mean(), (h_out, logits)

            (_, (h_out, logits)), (g_stem, g_unit) = jax.value_and_grad(loss_fn, (0, 1), has_aux=True)(
                stem, units[k]
            )
            updates, opts[k] = TX.update(g_unit, opts[k], units[k])
            units[k] = optax.apply_updates(units[k], updates)
            if k == 0:
                updates, stem_opt = TX.update(g_stem, stem_opt, stem)
                stem = optax.apply_updates(stem, updates)
            if k + 1 < k_units:
                new_slots[k + 1] = (h_out, jax.nn.log_softmax(logits), y)
        slots = new_slots
    return stem, units


@pytest.mark.parametrize(
    "model,k,shape,ndev", [("simplecnn", 3, (8, 8, 1), 3), ("vit_tiny", 4, (8, 8, 1), 2)]
)
def test_pipelined_equals_the_one_step_stale_recurrence(model, k, shape, ndev):
    network, params = tiny_blockwise(model, k, shape)
    data = batches(shape, n=5)
    pipe, pstate, _ = run_pipeline(network, params, shape, "pipelined", jax.devices()[:ndev], data)
    stem, units = reference_pipelined(network, params, data)
    chex.assert_trees_all_close(pstate.train.params.stem, stem, atol=1e-5)
    chex.assert_trees_all_close(pstate.train.params.units, tuple(units), atol=1e-5)
    # ... and it differs from the synchronous schedule (the staleness is real).
    _, sync, _ = run_pipeline(network, params, shape, "synchronous", jax.devices()[:ndev], data)
    assert not jnp.allclose(jax.tree.leaves(sync.train.params.units[-1])[0],
                            jax.tree.leaves(pstate.train.params.units[-1])[0])  # fmt: skip


def test_pipeline_does_not_recompile_across_steps():
    shape = (8, 8, 1)
    network, params = tiny_blockwise("simplecnn", 2, shape)
    pipe = BlockPipeline(network, TX, "sid", LOSS, schedule="pipelined", devices=jax.devices()[:2])
    pstate = pipe.init(params, shape, 8)
    data = batches(shape, n=4)
    pstate, _ = pipe.step(pstate, data[0], jax.random.key(0))
    compiled = pipe._update._cache_size()
    for batch in data[1:]:
        pstate, _ = pipe.step(pstate, batch, jax.random.key(0))
    assert pipe._update._cache_size() == compiled


def test_bad_placements_fail_with_one_clear_message():
    network, params = tiny_blockwise("simplecnn", 4)
    with pytest.raises(ValueError, match="3 devices cannot each hold the same number of the 4 blocks"):
        BlockPipeline(network, TX, devices=jax.devices()[:3])
    with pytest.raises(ValueError, match="method 'bp' cannot be placed block by block"):
        BlockPipeline(network, TX, "bp")
    with pytest.raises(ValueError, match="schedule must be one of"):
        BlockPipeline(network, TX, schedule="async")
    from conftest import tiny_network

    trunk, _ = tiny_network("mlp")
    with pytest.raises(ValueError, match="needs a blockwise network"):
        BlockPipeline(trunk, TX)
