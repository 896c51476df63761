"""Properties of SID's training step, all on jitted functions."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import NUM_MODULES, count_compiles, tiny_batch, tiny_network, tree_max_abs

from sidjax import METHODS, SIDLoss, Variables, local_losses, make_learner, sid_local_loss, uniform_log_belief
from sidjax.network import UnitInput, unstack

LOSS = SIDLoss(alpha=0.5)


def grads_of(network, variables, x, y, method="sid", loss=LOSS, execution="fused"):
    """``((objective, (unit_losses, logits, stats)), grads)`` of one synchronous step's objective, jitted."""
    objective = METHODS[method].make_objective(network, loss, execution)
    return jax.jit(jax.value_and_grad(objective, has_aux=True))(variables.params, variables.stats, x, y, None)


def with_params(variables, params):
    return Variables(params, variables.stats)


def _module_block(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


@pytest.mark.parametrize("model", ["mlp", "simplecnn"])
def test_gradient_isolation_between_modules(model, batch):
    """d L_i / d theta_j == 0 exactly for j != i; nonzero for j == i."""
    network, variables = tiny_network(model)
    x, y = batch

    @jax.jit
    def jac(params):
        return jax.jacrev(lambda p: local_losses(network, with_params(variables, p), x, y, LOSS)[0])(params)

    jac_modules = jac(variables.params).units  # leaves [L (loss i), L (module j), ...]
    for i in range(NUM_MODULES):
        for j in range(NUM_MODULES):
            block = _module_block(_module_block(jac_modules, i), j)
            if i == j:
                assert tree_max_abs(block) > 0
            else:
                assert tree_max_abs(block) == 0.0, (i, j)


def test_extractor_gets_the_sum_of_local_gradients(mlp_net, batch):
    network, variables = mlp_net
    x, y = batch
    (_, _), grads = grads_of(network, variables, x, y, execution="vmap")
    per_loss = jax.jit(jax.jacrev(lambda p: local_losses(network, with_params(variables, p), x, y, LOSS)[0]))(
        variables.params
    ).stem
    summed = jax.tree.map(lambda a: a.sum(0), per_loss)
    chex.assert_trees_all_close(grads.stem, summed, atol=1e-6)
    assert all(tree_max_abs(jax.tree.map(lambda a, i=i: a[i], per_loss)) > 0 for i in range(NUM_MODULES))


@pytest.mark.parametrize("model", ["mlp", "simplecnn"])
@pytest.mark.parametrize("loss", [SIDLoss(0.5), SIDLoss((0.9, 0.5, 0.1)), SIDLoss(0.3, "reverse", 0.1)])
def test_two_phase_step_equals_fused_step(model, loss, batch):
    network, variables = tiny_network(model)
    x, y = batch
    (_, (l1, _, _)), g1 = grads_of(network, variables, x, y, loss=loss, execution="vmap")
    (_, (l2, _, _)), g2 = grads_of(network, variables, x, y, loss=loss, execution="fused")
    chex.assert_trees_all_close(l1, l2, atol=1e-6)
    chex.assert_trees_all_close(g1, g2, atol=1e-6)
    # Params after one update. SGD, because Adam's first step ~ lr * sign(g) turns
    # float round-off in a near-zero gradient into a full-size step.
    tx = optax.sgd(0.1)
    key = jax.random.key(0)
    two_phase = make_learner(network, tx, "sid", loss, execution="vmap")
    fused = make_learner(network, tx, "sid", loss, execution="fused")
    s1, m1 = two_phase.step(two_phase.init(variables), batch, key)
    s2, m2 = fused.step(fused.init(variables), batch, key)
    chex.assert_trees_all_close(m1, m2, atol=1e-6)
    chex.assert_trees_all_close(s1.params, s2.params, atol=1e-6)
    # the update really moved the params
    assert tree_max_abs(jax.tree.map(jnp.subtract, s1.params, variables.params)) > 1e-4


def test_vmapped_modules_equal_a_python_loop(mlp_net, batch):
    """The stacked/vmapped losses and grads equal a loop over unstacked modules."""
    network, variables = mlp_net
    x, y = batch
    loss = SIDLoss((0.2, 0.5, 0.8))

    def looped(params):
        z, _ = network.apply_stem(params.stem, variables.stats.stem, x)
        prev = uniform_log_belief(x.shape[0], network.num_classes)
        losses = []
        for i, (module_params, module_stats) in enumerate(
            zip(unstack(params.units), unstack(variables.stats.units, NUM_MODULES), strict=True)
        ):
            inp = UnitInput(z, jax.lax.stop_gradient(prev), y)
            (_, logits), _ = network.apply_unit(i, module_params, module_stats, inp)
            losses.append(sid_local_loss(logits, prev, y, loss.alphas(NUM_MODULES)[i]).mean())
            prev = jax.nn.log_softmax(logits)
        return jnp.stack(losses)

    vmapped = jax.jit(lambda p: local_losses(network, with_params(variables, p), x, y, loss)[0])
    params = variables.params
    chex.assert_trees_all_close(vmapped(params), jax.jit(looped)(params), atol=1e-6)
    g_vmapped = jax.jit(jax.grad(lambda p: vmapped(p).sum()))(params)
    g_looped = jax.jit(jax.grad(lambda p: looped(p).sum()))(params)
    chex.assert_trees_all_close(g_vmapped, g_looped, atol=1e-6)


def test_bp_gradients_cross_modules(mlp_net, batch):
    """BP's last-module loss reaches module 0; SID's last local loss does not."""
    network, variables = mlp_net
    x, y = batch
    (_, _), bp_grads = grads_of(network, variables, x, y, method="bp")
    assert tree_max_abs(_module_block(bp_grads.units, 0)) > 1e-6
    sid_last = jax.jit(
        jax.grad(lambda p: local_losses(network, with_params(variables, p), x, y, LOSS)[0][-1])
    )(variables.params)
    assert tree_max_abs(_module_block(sid_last.units, 0)) == 0.0
    (_, _), sid_grads = grads_of(network, variables, x, y)
    assert tree_max_abs(jax.tree.map(jnp.subtract, bp_grads.units, sid_grads.units)) > 1e-4


def _train(seed, steps=3, method="sid", fixed_batch=False):
    network, variables = tiny_network("mlp", seed=seed)
    learner = make_learner(network, optax.adam(1e-2), method, LOSS)
    state = learner.init(variables)
    history = []
    for t in range(steps):
        batch = tiny_batch(seed=100 if fixed_batch else 100 + t)
        state, metrics = learner.step(state, batch, jax.random.key(seed))
        history.append(metrics)
    return state, history


def test_same_seed_same_numbers_other_seed_other_numbers():
    s1, h1 = _train(seed=3)
    s2, h2 = _train(seed=3)
    chex.assert_trees_all_equal(h1, h2)
    chex.assert_trees_all_equal(s1.params, s2.params)
    _, h3 = _train(seed=4)
    assert float(h1[-1]["loss"]) != float(h3[-1]["loss"])


def test_step_compiles_once_and_keeps_per_module_optimizer_state(mlp_net):
    network, variables = mlp_net
    learner = make_learner(network, optax.adam(1e-2), "sid", LOSS)
    state = learner.init(variables)
    state, _ = learner.step(state, tiny_batch(seed=0), jax.random.key(0))
    with count_compiles() as compiles:
        for t in range(1, 4):
            state, _ = learner.step(state, tiny_batch(seed=t), jax.random.key(0))
    assert compiles.count == 0  # no recompilation across steps
    assert int(state.step) == 4
    counts = state.opt_state.units[0].count  # Adam's step count, one per module
    chex.assert_trees_all_equal(counts, jnp.full((NUM_MODULES,), 4, jnp.int32))


@pytest.mark.parametrize("method", ["sid", "bp"])
def test_training_fits_a_fixed_batch(method):
    _, history = _train(seed=0, steps=40, method=method, fixed_batch=True)
    assert float(history[-1]["loss"]) < 0.5 * float(history[0]["loss"])
    assert float(history[-1]["accuracy"]) == 1.0
