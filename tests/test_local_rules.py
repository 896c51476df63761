"""Every local rule gets the whole engine: SID, DGL, Forward-Forward, the HSIC bottleneck and a user's rule
run fused, sequential, pipelined, in stages and on a mesh, each equal to the others where they must be."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import count_compiles, needs_devices, tiny_blockwise, tiny_network
from test_pipeline import batches

import sidjax
from sidjax import METHODS, LocalMethod, SIDLoss, make_learner
from sidjax.units import UnitSeen

LOSS = SIDLoss(0.5)
TX = optax.adam(1e-2, eps=1e-3)  # see test_pipeline: eps above float32 rounding
# The HSIC bottleneck's loss is hundreds (beta = 50 times a normalised HSIC) through m x m solves of a
# nearly singular kernel, and its training amplifies float32 round-off: scaling the initial parameters by
# (1 + 1e-7) moved them by 5.7e-4 after 5 pipelined steps (SID's and FF's by 1.3e-7). One program against
# the op-by-op reference (or a split batch) differs by as much (8.2e-4 measured); every other rule stays
# under 1e-5, which checks the schedules themselves.
HSIC_TOLERANCE = 2e-3


def quiet(seen: UnitSeen):
    """A user's rule: its head's cross-entropy plus 0.01 times its mean squared activity."""
    ce = optax.softmax_cross_entropy_with_integer_labels(seen.logits, seen.input.labels).mean()
    return ce + 0.01 * jnp.mean(seen.output**2), seen.logits


RULES = {
    **{name: METHODS[name] for name in ("sid", "dgl", "ff", "hsic")},
    "quiet": LocalMethod(name="quiet", summary="cross-entropy + 0.01 x activity", unit_loss=quiet,
                         modes=("blockwise",), belief_input="none"),
}  # fmt: skip


def _network(rule: str, model: str = "simplecnn", k: int = 3, shape=(8, 8, 1)):
    spec = RULES[rule]
    network, variables = tiny_blockwise(model, k, shape, belief_input=spec.default_belief_input("blockwise"))
    return spec, *spec.adapt(network, variables, jax.random.key(7))


def _train(spec, network, variables, data, tx=TX, **settings):
    learner = make_learner(network, tx, spec, LOSS, batch_size=data[0][1].shape[0], **settings)
    state = learner.init(variables)
    for batch in data:
        state, metrics = learner.step(state, batch, jax.random.key(0))
    return learner.gather(state), metrics, learner


@pytest.mark.parametrize("rule", list(RULES))
def test_fused_and_sequential_take_the_same_steps(rule):
    spec, network, variables = _network(rule)
    data = batches((8, 8, 1))
    fused, fused_metrics, learner = _train(spec, network, variables, data, execution="fused")
    walked, walked_metrics, walker = _train(spec, network, variables, data, execution="sequential")
    assert (learner.execution, walker.execution) == ("fused", "sequential"), "the learner says what it runs"
    chex.assert_trees_all_close(walked.params, fused.params, atol=1e-5, rtol=1e-5)
    chex.assert_trees_all_close(walked_metrics, fused_metrics, atol=1e-5, rtol=1e-5)


def reference_pipelined(spec, network, variables, data):
    """The one-step-stale recurrence by hand, op by op, for any local rule: unit k trains at step t on what
    unit k-1 handed on at step t-1 (with that batch's labels and what the rule gave it); an empty slot means
    no update. The rule's own functions give the loss and what is handed on."""
    k_units, key, loss = network.num_units, jax.random.key(0), spec.loss(LOSS)
    units = [network.unit_values(variables.params.units, k) for k in range(k_units)]
    stats = [network.unit_values(variables.stats.units, k) for k in range(k_units)]
    stem, stem_stats = variables.params.stem, variables.stats.stem
    opts, stem_opt = [TX.init(u) for u in units], TX.init(stem)
    slots = [None] * k_units
    for step, (x, labels) in enumerate(data):
        step_key = jax.random.fold_in(key, step)
        new_slots = [None] * k_units
        for k in range(k_units):
            if k == 0:
                x_given, given = spec.give(network, x, labels, step_key)
                inp = network.first_input(x_given, labels, True, given)
            elif slots[k] is None:
                continue
            else:
                inp = slots[k]

            def loss_fn(stem_p, unit_p, k=k, inp=inp, step_key=step_key):
                if k == 0:
                    inp = inp._replace(h=network.apply_stem(stem_p, stem_stats, inp.h, step_key)[0])
                (h_out, logits), _ = network.apply_unit(k, unit_p, stats[k], inp, step_key)
                seen = UnitSeen(k, inp, h_out, logits, jax.random.fold_in(step_key, k), loss.alpha, loss)
                return spec.unit_loss(seen)[0], (inp, h_out, logits)

            (_, (seen_inp, h_out, logits)), (g_stem, g_unit) = jax.value_and_grad(
                loss_fn, (0, 1), has_aux=True
            )(stem, units[k])
            updates, opts[k] = TX.update(g_unit, opts[k], units[k])
            units[k] = optax.apply_updates(units[k], updates)
            if k == 0:
                updates, stem_opt = TX.update(g_stem, stem_opt, stem)
                stem = optax.apply_updates(stem, updates)
            if k + 1 < k_units:
                new_slots[k + 1] = spec.hand_on(network, seen_inp, h_out, logits)
        slots = new_slots
    return stem, units


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("execution", ["sequential", "fused"])
def test_the_pipelined_schedule_is_its_one_step_stale_recurrence(rule, execution):
    spec, network, variables = _network(rule)
    data = batches((8, 8, 1), n=5)
    state, _, _ = _train(spec, network, variables, data, execution=execution, pipelined=True)
    stem, units = reference_pipelined(spec, network, variables, data)
    tol = HSIC_TOLERANCE if rule == "hsic" else 1e-5
    chex.assert_trees_all_close(state.params.stem, stem, atol=tol)
    chex.assert_trees_all_close(network.unit_list(state.params.units), units, atol=tol)


@needs_devices(3)
@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("pipelined", [False, True])
def test_stages_equal_one_device(rule, pipelined):
    spec, network, variables = _network(rule)
    data = batches((8, 8, 1), n=4)
    one, one_metrics, _ = _train(spec, network, variables, data, execution="sequential", pipelined=pipelined)
    staged, staged_metrics, learner = _train(spec, network, variables, data, pipelined=pipelined,
                                             placement="stages:3", devices=jax.devices()[:3])  # fmt: skip
    assert learner.execution == "sequential"
    chex.assert_trees_all_close(staged.params, one.params, atol=1e-5)
    chex.assert_trees_all_close(staged_metrics, one_metrics, atol=1e-5)


@needs_devices(2)
@pytest.mark.parametrize("rule", list(RULES))
def test_a_data_mesh_equals_one_device(rule):
    """The batch split over two devices computes the same steps (SGD: Adam's first steps turn round-off in
    gradients near its eps into eps-sized gaps, which the HSIC bottleneck's gradients reach)."""
    spec, network, variables = _network(rule)
    data = batches((8, 8, 1), n=1 if rule == "hsic" else 3)  # HSIC: one step, before its round-off grows
    sgd = optax.sgd(0.05)
    one, one_metrics, _ = _train(spec, network, variables, data, sgd, execution="sequential")
    meshed, meshed_metrics, _ = _train(spec, network, variables, data, sgd, execution="sequential",
                                       placement="mesh:2,1", devices=jax.devices()[:2])  # fmt: skip
    tol = HSIC_TOLERANCE if rule == "hsic" else 1e-5
    chex.assert_trees_all_close(meshed.params, one.params, atol=tol)
    chex.assert_trees_all_close(meshed_metrics, one_metrics, atol=tol, rtol=tol)


@needs_devices(2)
@pytest.mark.parametrize("rule", ["ff", "quiet"])
def test_stacked_units_split_over_a_unit_mesh_equal_one_device(rule):
    spec, network, variables = _network(rule, "vit_tiny", 4)
    assert network.stacked
    data = batches((8, 8, 1), n=3)
    one, _, _ = _train(spec, network, variables, data, execution="vmap", pipelined=True)
    meshed, _, _ = _train(spec, network, variables, data, execution="vmap", pipelined=True, placement="mesh:1,2",
                          devices=jax.devices()[:2])  # fmt: skip
    walked, _, _ = _train(spec, network, variables, data, execution="sequential", pipelined=True)
    chex.assert_trees_all_close(meshed.params, one.params, atol=1e-5)
    chex.assert_trees_all_close(walked.params, one.params, atol=1e-5)


@pytest.mark.parametrize("rule", ["ff", "hsic", "quiet"])
def test_the_sequential_step_holds_less_than_the_fused_one(rule):
    """A rule's units walked one after another hold about one unit's activations (a tiny ViT, K = 4)."""
    spec, network, variables = _network(rule, "vit_tiny", 4, (16, 16, 3))
    x, y = batches((16, 16, 3), n=1, size=32)[0]
    memory = {}
    for execution in ("fused", "sequential"):
        learner = make_learner(network, TX, spec, LOSS, execution=execution)
        memory[execution] = learner.memory_bytes(learner.init(variables), (x, y), jax.random.key(0))
    assert memory["sequential"] < memory["fused"], memory


def test_a_step_compiles_once_for_every_execution():
    spec, network, variables = _network("ff")
    data = batches((8, 8, 1), n=3)
    for execution in ("fused", "sequential"):
        learner = make_learner(network, TX, spec, LOSS, execution=execution)
        state = learner.init(variables)
        state, _ = learner.step(state, data[0], jax.random.key(0))
        with count_compiles() as compiles:
            for batch in data[1:]:
                state, _ = learner.step(state, batch, jax.random.key(0))
        assert compiles.count == 0, execution


@pytest.mark.parametrize(
    ("method", "settings", "words"),
    [
        ("bp", {"execution": "sequential"}, "method 'bp' runs execution 'fused'"),
        ("fa", {"execution": "vmap"}, "method 'fa' runs execution 'fused'"),
        ("noprop", {"pipelined": True}, "pipelined needs a local method"),
    ],
)
def test_what_a_method_cannot_run_is_refused_in_one_line_naming_what_it_can(method, settings, words):
    spec = METHODS[method]
    network, variables = tiny_network("mlp", belief_input=spec.default_belief_input("trunk"))
    network, _ = spec.adapt(network, variables, jax.random.key(0))
    with pytest.raises(sidjax.ConfigError, match=words) as err:
        make_learner(network, TX, spec, batch_size=8, **settings)
    assert "\n" not in str(err.value)


def reference_in_turn(spec, network, variables, data, tx=TX):
    """Units updated in turn, by hand: within each step unit k trains on what units 1..k-1 give after their
    own update of that step (the HSIC bottleneck's authors' loop: a fresh forward pass per unit)."""
    k_units, key, loss = network.num_units, jax.random.key(0), spec.loss(LOSS)
    units = [network.unit_values(variables.params.units, k) for k in range(k_units)]
    stats = [network.unit_values(variables.stats.units, k) for k in range(k_units)]
    stem, stem_stats = variables.params.stem, variables.stats.stem
    opts, stem_opt = [tx.init(u) for u in units], tx.init(stem)
    for step, (x, labels) in enumerate(data):
        step_key = jax.random.fold_in(key, step)
        x_given, given = spec.give(network, x, labels, step_key)
        inp = network.first_input(x_given, labels, True, given)
        for k in range(k_units):

            def loss_fn(stem_p, unit_p, k=k, inp=inp, step_key=step_key):
                if k == 0:
                    inp = inp._replace(h=network.apply_stem(stem_p, stem_stats, inp.h, step_key)[0])
                (h_out, logits), _ = network.apply_unit(k, unit_p, stats[k], inp, step_key)
                seen = UnitSeen(k, inp, h_out, logits, jax.random.fold_in(step_key, k), loss.alpha, loss)
                return spec.unit_loss(seen)[0]

            g_stem, g_unit = jax.grad(loss_fn, (0, 1))(stem, units[k])
            updates, opts[k] = tx.update(g_unit, opts[k], units[k])
            units[k] = optax.apply_updates(units[k], updates)
            if k == 0:
                updates, stem_opt = tx.update(g_stem, stem_opt, stem)
                stem = optax.apply_updates(stem, updates)
                inp = inp._replace(h=network.apply_stem(stem, stem_stats, inp.h, step_key)[0])
            (h_out, logits), _ = network.apply_unit(k, units[k], stats[k], inp, step_key)  # after its update
            inp = spec.hand_on(network, inp, h_out, logits)
    return stem, units


@pytest.mark.parametrize("rule", ["sid", "hsic", "quiet"])
def test_units_updated_in_turn_equal_their_loop_and_differ_from_the_synchronous_walk(rule):
    spec, network, variables = _network(rule)
    data = batches((8, 8, 1), n=3)
    tx = optax.sgd(0.05) if rule == "hsic" else TX  # see test_a_data_mesh_equals_one_device
    state, _, learner = _train(spec, network, variables, data, tx, execution="sequential", refresh=True)
    stem, units = reference_in_turn(spec, network, variables, data, tx)
    tol = HSIC_TOLERANCE if rule == "hsic" else 1e-5
    chex.assert_trees_all_close(state.params.stem, stem, atol=tol)
    chex.assert_trees_all_close(network.unit_list(state.params.units), units, atol=tol)
    walked, _, _ = _train(spec, network, variables, data, tx, execution="sequential")
    last = jax.tree.leaves(network.unit_values(walked.params.units, network.num_units - 1))[0]
    assert not jnp.allclose(last, jax.tree.leaves(units[-1])[0]), "the later units read other inputs"
    with pytest.raises(sidjax.ConfigError, match="refresh updates the units in turn"):
        make_learner(network, TX, spec, execution="fused", refresh=True)
