"""Schedules and stages: synchronous stages == the single-device step; pipelined == its recurrence."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import NUM_CLASSES, count_compiles, needs_devices, tiny_blockwise, tiny_network

from sidjax import SIDLoss, UnitInput, make_learner
from sidjax.losses import uniform_log_belief

LOSS = SIDLoss(0.5)
# eps well above float32 rounding: Adam's first steps are ~lr * sign(g), which would turn
# rounding noise in near-zero gradients (one program vs op-by-op reference) into lr-sized gaps.
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


def run_stages(network, variables, pipelined, devices, data, num_stages=None):
    placement = f"stages:{num_stages}" if num_stages else "stages"
    learner = make_learner(network, TX, "sid", LOSS, pipelined=pipelined, placement=placement, devices=devices,
                           batch_size=data[0][1].shape[0])  # fmt: skip
    state = learner.init(variables)
    for batch in data:
        state, metrics = learner.step(state, batch, jax.random.key(0))
    return learner, state, metrics


def run_step(network, variables, data, pipelined=False, execution="sequential", placement="single"):
    learner = make_learner(network, TX, "sid", LOSS, execution=execution, pipelined=pipelined, placement=placement,
                           batch_size=data[0][1].shape[0])  # fmt: skip
    state = learner.init(variables)
    for batch in data:
        state, metrics = learner.step(state, batch, jax.random.key(0))
    return state, metrics


@needs_devices(4)
@pytest.mark.parametrize("model,k,shape,ndev", [("simplecnn", 4, (8, 8, 1), 4), ("vgg11", 4, (8, 8, 1), 2),
                                                ("vit_tiny", 4, (8, 8, 1), 4)])  # fmt: skip
def test_synchronous_stages_equal_the_single_device_step(model, k, shape, ndev):
    network, variables = tiny_blockwise(model, k, shape)
    data = batches(shape)
    state, ref_metrics = run_step(network, variables, data)
    learner, placed, metrics = run_stages(network, variables, False, jax.devices()[:ndev], data)
    chex.assert_trees_all_close(learner.gather(placed).params, state.params, atol=1e-6)
    chex.assert_trees_all_close(metrics, ref_metrics, atol=1e-6)
    for u in range(k):  # unit u and its optimizer state live on their stage's device
        leaves = jax.tree.leaves((placed.params.units[u], placed.opt_state.units[u]))
        assert {d for leaf in leaves for d in leaf.devices()} == {jax.devices()[u * ndev // k]}


def reference_pipelined(network, variables, data, alphas=None):
    """The one-step-stale recurrence, by hand, op by op: unit k trains at step t on what
    unit k-1 output at step t-1 (with that batch's labels), with its alpha (0.5 unless
    ``alphas`` gives one per unit); an empty slot means no update."""
    k_units = network.num_units
    alphas = alphas or [0.5] * k_units
    units = [network.unit_values(variables.params.units, k) for k in range(k_units)]
    stats = [network.unit_values(variables.stats.units, k) for k in range(k_units)]
    stem, stem_stats = variables.params.stem, variables.stats.stem
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
                h_in, _ = network.apply_stem(stem_p, stem_stats, x) if k == 0 else (h, None)
                (h_out, logits), _ = network.apply_unit(k, unit_p, stats[k], UnitInput(h_in, log_belief, y))
                return LOSS.unit_loss(logits, log_belief, y, alphas[k]), (h_out, logits)

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


@needs_devices(4)
@pytest.mark.parametrize(  # stacked (ViT) stages are tested synchronously above; pipelined, slow-marked
    "model,k,shape,ndev",
    [("simplecnn", 3, (8, 8, 1), 3), pytest.param("vit_tiny", 4, (8, 8, 1), 2, marks=pytest.mark.slow)],
)
def test_pipelined_stages_equal_the_one_step_stale_recurrence(model, k, shape, ndev):
    network, variables = tiny_blockwise(model, k, shape)
    data = batches(shape, n=5)
    _, placed, _ = run_stages(network, variables, True, jax.devices()[:ndev], data)
    stem, units = reference_pipelined(network, variables, data)
    chex.assert_trees_all_close(placed.params.stem, stem, atol=1e-5)
    chex.assert_trees_all_close(placed.params.units, tuple(units), atol=1e-5)
    # ... and it differs from the synchronous schedule (the staleness is real).
    _, sync, _ = run_stages(network, variables, False, jax.devices()[:ndev], data)
    assert not jnp.allclose(
        jax.tree.leaves(sync.params.units[-1])[0], jax.tree.leaves(placed.params.units[-1])[0]
    )


@pytest.mark.parametrize(
    "model,k,execution",
    [
        ("simplecnn", 3, "sequential"),
        ("simplecnn", 3, "fused"),
        ("vit_tiny", 4, "vmap"),
        ("vit_tiny", 4, "sequential"),
    ],
)
def test_pipelined_single_program_equals_the_recurrence(model, k, execution):
    shape = (8, 8, 1)
    network, variables = tiny_blockwise(model, k, shape)
    data = batches(shape, n=5)
    state, _ = run_step(network, variables, data, pipelined=True, execution=execution)
    stem, units = reference_pipelined(network, variables, data)
    chex.assert_trees_all_close(state.params.stem, stem, atol=1e-5)
    chex.assert_trees_all_close(network.unit_list(state.params.units), units, atol=1e-5)


@pytest.mark.parametrize("placement", ["single", pytest.param("stages:2", marks=needs_devices(2))])
def test_pipelined_units_train_each_with_its_own_alpha(placement):
    """Per-unit alpha under the pipelined schedule, one program and in stages (unit 3 first in its stage)."""
    shape, alphas = (8, 8, 1), (0.9, 0.5, 0.2)
    network, variables = tiny_blockwise("simplecnn", 3, shape)
    data = batches(shape, n=5)
    learner = make_learner(network, TX, "sid", SIDLoss(alphas), pipelined=True, placement=placement,
                           devices=jax.devices()[:2], batch_size=8)  # fmt: skip
    state = learner.init(variables)
    for batch in data:
        state, _ = learner.step(state, batch, jax.random.key(0))
    stem, units = reference_pipelined(network, variables, data, list(alphas))
    params = learner.gather(state).params
    chex.assert_trees_all_close(network.unit_list(params.units), units, atol=1e-5,
                                custom_message=f"pipelined ({placement}): unit k trains with alpha[k] = {alphas}")  # fmt: skip
    chex.assert_trees_all_close(params.stem, stem, atol=1e-5)


@needs_devices(4)
def test_pipelined_stacked_units_on_a_mesh_equal_one_device():
    """Stacked units and their slots split over 4 devices along 'module': one program, same numbers."""
    shape = (8, 8, 1)
    network, variables = tiny_blockwise("vit_tiny", 4, shape)
    data = batches(shape, n=5)
    one, _ = run_step(network, variables, data, pipelined=True, execution="vmap")
    meshed, _ = run_step(network, variables, data, pipelined=True, execution="vmap", placement="mesh:1,4")
    chex.assert_trees_all_close(meshed.params, one.params, atol=1e-6)
    assert len(jax.tree.leaves(meshed.slots)[0].sharding.device_set) == 4


@needs_devices(4)
def test_stages_do_not_recompile_across_steps():
    shape = (8, 8, 1)
    network, variables = tiny_blockwise("simplecnn", 2, shape)
    learner = make_learner(network, TX, "sid", LOSS, pipelined=True, placement="stages", devices=jax.devices()[:2],
                           batch_size=8)  # fmt: skip
    state = learner.init(variables)
    data = batches(shape, n=4)
    state, _ = learner.step(state, data[0], jax.random.key(0))
    with count_compiles() as compiles:
        for batch in data[1:]:
            state, _ = learner.step(state, batch, jax.random.key(0))
    assert compiles.count == 0


def test_one_stage_per_unit_on_one_device_equals_the_single_program():
    shape = (8, 8, 1)
    network, variables = tiny_blockwise("simplecnn", 4, shape)
    data = batches(shape)
    state, _ = run_step(network, variables, data)
    learner, placed, _ = run_stages(network, variables, False, jax.devices()[:1], data, num_stages=4)
    chex.assert_trees_all_close(learner.gather(placed).params, state.params, atol=1e-6)


def test_bad_placements_fail_with_one_clear_message():
    network, _ = tiny_blockwise("simplecnn", 4)
    with pytest.raises(ValueError, match=r"stages must lie in \[1, 4\]"):
        make_learner(network, TX, placement="stages:5")
    with pytest.raises(ValueError, match="placement stages needs a local method"):
        make_learner(network, TX, "bp", placement="stages")
    trunk, _ = tiny_network("mlp")
    with pytest.raises(ValueError, match="placement stages needs mode blockwise"):
        make_learner(trunk, TX, placement="stages")
    with pytest.raises(ValueError, match="pipelined needs mode blockwise"):
        make_learner(trunk, TX, pipelined=True)
    with pytest.raises(
        ValueError, match="the pipelined schedule keeps one batch per unit: give make_learner a batch"
    ):
        make_learner(network, TX, pipelined=True).init(tiny_blockwise("simplecnn", 4)[1])
