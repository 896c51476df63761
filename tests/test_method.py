"""Properties of SID's training step, all on jitted functions."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import NUM_MODULES, count_compiles, tiny_batch, tiny_network, tree_max_abs

from sidjax import (
    SIDLoss,
    init_train_state,
    local_losses,
    make_grad_fn,
    make_train_step,
    sid_local_loss,
    uniform_log_belief,
    unstack_units,
)

LOSS = SIDLoss(alpha=0.5)


def _module_block(tree, i):
    return jax.tree.map(lambda a: a[i], tree)


@pytest.mark.parametrize("model", ["mlp", "simplecnn"])
def test_gradient_isolation_between_modules(model, batch):
    """d L_i / d theta_j == 0 exactly for j != i; nonzero for j == i."""
    network, params = tiny_network(model)
    x, y = batch

    @jax.jit
    def jac(params):
        return jax.jacrev(lambda p: local_losses(network, p, x, y, LOSS)[0])(params)

    jac_modules = jac(params).units  # leaves [L (loss i), L (module j), ...]
    for i in range(NUM_MODULES):
        for j in range(NUM_MODULES):
            block = _module_block(_module_block(jac_modules, i), j)
            if i == j:
                assert tree_max_abs(block) > 0
            else:
                assert tree_max_abs(block) == 0.0, (i, j)


def test_extractor_gets_the_sum_of_local_gradients(mlp_net, batch):
    network, params = mlp_net
    x, y = batch
    (_, _), grads = jax.jit(make_grad_fn(network, "sid", LOSS))(params, x, y)
    per_loss = jax.jit(jax.jacrev(lambda p: local_losses(network, p, x, y, LOSS)[0]))(params).stem
    summed = jax.tree.map(lambda a: a.sum(0), per_loss)
    chex.assert_trees_all_close(grads.stem, summed, atol=1e-6)
    assert all(tree_max_abs(jax.tree.map(lambda a, i=i: a[i], per_loss)) > 0 for i in range(NUM_MODULES))


@pytest.mark.parametrize("model", ["mlp", "simplecnn"])
@pytest.mark.parametrize("loss", [SIDLoss(0.5), SIDLoss((0.9, 0.5, 0.1)), SIDLoss(0.3, "reverse", 0.1)])
def test_two_phase_step_equals_fused_step(model, loss, batch):
    network, params = tiny_network(model)
    x, y = batch
    (_, (l1, _)), g1 = jax.jit(make_grad_fn(network, "sid", loss))(params, x, y)
    (_, (l2, _)), g2 = jax.jit(make_grad_fn(network, "sid", loss, "fused"))(params, x, y)
    chex.assert_trees_all_close(l1, l2, atol=1e-6)
    chex.assert_trees_all_close(g1, g2, atol=1e-6)
    # Params after one update. SGD, because Adam's first step ~ lr * sign(g) turns
    # float round-off in a near-zero gradient into a full-size step.
    tx = optax.sgd(0.1)
    state = init_train_state(params, tx)
    key = jax.random.key(0)
    s1, m1 = make_train_step(network, tx, "sid", loss)(state, batch, key)
    s2, m2 = make_train_step(network, tx, "sid", loss, execution="fused")(state, batch, key)
    chex.assert_trees_all_close(m1, m2, atol=1e-6)
    chex.assert_trees_all_close(s1.params, s2.params, atol=1e-6)
    # the update really moved the params
    assert tree_max_abs(jax.tree.map(jnp.subtract, s1.params, params)) > 1e-4


def test_vmapped_modules_equal_a_python_loop(mlp_net, batch):
    """The stacked/vmapped losses and grads equal a loop over unstacked modules."""
    network, params = mlp_net
    x, y = batch
    loss = SIDLoss((0.2, 0.5, 0.8))

    def looped(params):
        z = network.stem(params.stem, x)
        prev = uniform_log_belief(x.shape[0], network.num_classes)
        losses = []
        for i, module_params in enumerate(unstack_units(params.units)):
            _, logits = network.unit(i, module_params, z, jax.lax.stop_gradient(prev))
            losses.append(sid_local_loss(logits, prev, y, loss.alphas(NUM_MODULES)[i]).mean())
            prev = jax.nn.log_softmax(logits)
        return jnp.stack(losses)

    vmapped = jax.jit(lambda p: local_losses(network, p, x, y, loss)[0])
    chex.assert_trees_all_close(vmapped(params), jax.jit(looped)(params), atol=1e-6)
    g_vmapped = jax.jit(jax.grad(lambda p: vmapped(p).sum()))(params)
    g_looped = jax.jit(jax.grad(lambda p: looped(p).sum()))(params)
    chex.assert_trees_all_close(g_vmapped, g_looped, atol=1e-6)


def test_bp_gradients_cross_modules(mlp_net, batch):
    """BP's last-module loss reaches module 0; SID's last local loss does not."""
    network, params = mlp_net
    x, y = batch
    (_, _), bp_grads = jax.jit(make_grad_fn(network, "bp", LOSS))(params, x, y)
    assert tree_max_abs(_module_block(bp_grads.units, 0)) > 1e-6
    sid_last = jax.jit(jax.grad(lambda p: local_losses(network, p, x, y, LOSS)[0][-1]))(params)
    assert tree_max_abs(_module_block(sid_last.units, 0)) == 0.0
    (_, _), sid_grads = jax.jit(make_grad_fn(network, "sid", LOSS))(params, x, y)
    assert tree_max_abs(jax.tree.map(jnp.subtract, bp_grads.units, sid_grads.units)) > 1e-4


def _train(seed, steps=3, method="sid", fixed_batch=False):
    network, params = tiny_network("mlp", seed=seed)
    tx = optax.adam(1e-2)
    state = init_train_state(params, tx)
    step = make_train_step(network, tx, method, LOSS)
    history = []
    for t in range(steps):
        batch = tiny_batch(seed=100 if fixed_batch else 100 + t)
        state, metrics = step(state, batch, jax.random.key(seed))
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
    network, params = mlp_net
    tx = optax.adam(1e-2)
    step = make_train_step(network, tx, "sid", LOSS)
    state = init_train_state(params, tx)
    state, _ = step(state, tiny_batch(seed=0), jax.random.key(0))
    with count_compiles() as compiles:
        for t in range(1, 4):
            state, _ = step(state, tiny_batch(seed=t), jax.random.key(0))
    assert compiles.count == 0  # no recompilation across steps
    assert int(state.step) == 4
    counts = state.opt_state.units[0].count  # Adam's step count, one per module
    chex.assert_trees_all_equal(counts, jnp.full((NUM_MODULES,), 4, jnp.int32))


@pytest.mark.parametrize("method", ["sid", "bp"])
def test_training_fits_a_fixed_batch(method):
    _, history = _train(seed=0, steps=40, method=method, fixed_batch=True)
    assert float(history[-1]["loss"]) < 0.5 * float(history[0]["loss"])
    assert float(history[-1]["accuracy"]) == 1.0
