"""Direct tests of the properties that define each method and each data transformation.

Each test fails on its own when its property breaks, and each assertion names the property. The
pinned reference runs (tests/test_run.py) stay as a last net behind these.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import NUM_CLASSES, tiny_batch, tiny_blockwise, tiny_network, tree_max_abs

from sidjax import METHODS, SIDLoss, UnitInput, Variables, local_losses
from sidjax.data import Dataset, epoch_order, symmetric_label_noise
from sidjax.heads import HEADS, adaptive_avg_pool
from sidjax.losses import uniform_log_belief
from sidjax.methods import Method
from sidjax.train.epoch import epoch_chunks, prepare_data
from sidjax.train.members import Members
from sidjax.train.plan import make_plan
from sidjax.train.programs import make_programs

LOSS = SIDLoss(0.5)
# What each method is, to be checked: the mode its test network has, whether its units read the
# belief, and what its objective is (a function of the forward pass's logits [K, B, N] and the labels).
EXPECTED = {
    "sid": ("trunk", True, "local"),
    "dgl": ("blockwise", False, "local"),
    "bp": ("trunk", True, "last_ce"),
    "bp_remat": ("trunk", True, "last_ce"),
}


TESTED_ELSEWHERE = {
    "noprop": "tests/test_noprop.py",
    **dict.fromkeys(("fa", "dfa", "ff", "ff_hinton", "hsic"), "tests/test_baselines.py"),
    "readout": "tests/test_readout.py",
}  # methods whose units are given something else than a belief, or minimise something else


def test_every_method_is_specified_here():
    assert set(EXPECTED) | set(TESTED_ELSEWHERE) == set(METHODS), (
        "a method without its defining properties tested: add it to EXPECTED"
    )


def _network(method: str):
    mode, reads, _ = EXPECTED[method]
    if mode == "trunk":
        return tiny_network("mlp", belief_input="prob" if reads else "none")
    return tiny_blockwise("simplecnn", 3, belief_input="prob" if reads else "none")


def _expected_objective(spec: Method, logits, labels):
    """The objective computed by hand from the logits: SID's local losses from the uniform prior, or BP's CE."""
    if EXPECTED[spec.name][2] == "last_ce":
        return optax.softmax_cross_entropy_with_integer_labels(logits[-1], labels).mean(), None
    alpha = spec.loss(LOSS).alpha
    prev = jnp.full(logits.shape[1:], 1.0 / NUM_CLASSES)  # p_0 is uniform
    losses = []
    for lg in logits:
        p = jax.nn.softmax(lg)
        ce = -jnp.log(p[jnp.arange(len(labels)), labels])
        kl = (prev * (jnp.log(prev) - jnp.log(p))).sum(-1)
        losses.append((alpha * ce + (1 - alpha) * kl).mean())
        prev = p
    return sum(losses), jnp.stack(losses)


@pytest.mark.parametrize("method", list(EXPECTED))
def test_each_method_optimises_what_defines_it(method):
    spec, (network, variables) = METHODS[method], _network(method)
    x, y = tiny_batch()
    objective = spec.make_objective(network, LOSS, "fused")
    (value, (unit_losses, logits, _)), _ = jax.value_and_grad(objective, has_aux=True)(
        variables.params, variables.stats, x, y, None
    )
    chex.assert_trees_all_close(logits, network.apply(variables, x), atol=1e-6)  # no dropout or BN here
    expected, per_unit = _expected_objective(spec, logits, y)
    np.testing.assert_allclose(value, expected, rtol=1e-5, err_msg=f"{method}: the objective it optimises")
    if per_unit is not None:
        np.testing.assert_allclose(
            unit_losses, per_unit, rtol=1e-5, err_msg=f"{method}: each unit's local loss"
        )


@pytest.mark.parametrize("method", list(EXPECTED))
def test_each_method_reads_the_belief_or_not(method):
    network, variables = _network(method)
    x, y = tiny_batch()
    h, _ = network.apply_stem(variables.params.stem, variables.stats.stem, x)
    params, stats = (network.unit_values(t.units, 1) for t in variables)
    beliefs = [
        jax.nn.log_softmax(jax.random.normal(jax.random.key(s), (x.shape[0], NUM_CLASSES))) for s in (0, 1)
    ]
    if network.cut_features:  # unit 2 of a blockwise network reads unit 1's feature maps
        h = network.apply_unit(
            0, *(network.unit_values(t.units, 0) for t in variables), UnitInput(h, beliefs[0], y)
        )[0][0]
    logits = [network.apply_unit(1, params, stats, UnitInput(h, b, y), train=False)[0][1] for b in beliefs]
    reads = tree_max_abs(logits[0] - logits[1]) > 0
    assert reads == EXPECTED[method][1], f"{method}: whether its units read the previous belief"


@pytest.mark.parametrize("method", list(EXPECTED))
def test_what_reaches_each_unit_and_the_stem(method):
    """Local methods: unit k's gradient is L_k's alone; the trunk's extractor gets every L_k, a blockwise
    stem only L_1's. BP: the last unit's loss reaches every unit and the stem."""
    network, variables = _network(method)
    x, y = tiny_batch()
    spec = METHODS[method]
    grads = jax.grad(
        lambda p: spec.make_objective(network, LOSS, "fused")(p, variables.stats, x, y, None)[0]
    )(variables.params)
    if not spec.local:
        for k in range(network.num_units):
            assert tree_max_abs(network.unit_values(grads.units, k)) > 0, (
                f"{method}: the loss reaches unit {k + 1}"
            )
        assert tree_max_abs(grads.stem) > 0, f"{method}: the loss reaches the stem"
        return
    jac = jax.jacrev(
        lambda p: local_losses(
            network, Variables(p, variables.stats), x, y, spec.loss(LOSS), execution="fused"
        )[0]
    )(variables.params)
    for k in range(network.num_units):
        own = jax.tree.map(lambda a, k=k: a[k], jac)
        chex.assert_trees_all_close(
            network.unit_values(grads.units, k), network.unit_values(own.units, k), atol=1e-6,
            custom_message=f"{method}: unit {k + 1}'s gradient is its own local loss's",
        )  # fmt: skip
    stem_expected = (
        jax.tree.map(lambda a: a.sum(0), jac.stem)
        if not network.cut_features
        else jax.tree.map(lambda a: a[0], jac.stem)
    )
    chex.assert_trees_all_close(grads.stem, stem_expected, atol=1e-6,
                                custom_message=f"{method}: what reaches the stem")  # fmt: skip


def test_the_chain_stop_gradient_is_the_guard_a_loss_without_its_own_still_isolates_the_units():
    """Network.next_input stops the belief (as input and as target); SIDLoss's own stop-gradient only
    protects callers that pass a belief of their own (tests/test_losses.py)."""

    class Unstopped(SIDLoss):
        def unit_loss(self, logits, prev_log_belief, labels, alpha):
            log_p = jax.nn.log_softmax(logits)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            kl = (jnp.exp(prev_log_belief) * (prev_log_belief - log_p)).sum(-1)  # no stop-gradient here
            return (alpha * ce + (1 - alpha) * kl).mean()

    network, variables = tiny_network("mlp")
    x, y = tiny_batch()
    jac = jax.jacrev(lambda p: local_losses(network, Variables(p, variables.stats), x, y, Unstopped(0.5),
                                            execution="fused")[0])(variables.params).units  # fmt: skip
    for i in range(network.num_units):
        for j in range(network.num_units):
            if i != j:
                block = tree_max_abs(jax.tree.map(lambda a, i=i, j=j: a[i, j], jac))
                assert block == 0.0, f"the chain's stop-gradient keeps unit {i + 1}'s loss off unit {j + 1}"


def test_the_initial_belief_is_uniform():
    network, _ = tiny_network("mlp")
    first = network.first_input(jnp.zeros((4, 8)), jnp.zeros((4,), jnp.int32))
    np.testing.assert_array_equal(first.log_belief, uniform_log_belief(4, NUM_CLASSES))
    np.testing.assert_allclose(jnp.exp(first.log_belief), 1.0 / NUM_CLASSES, err_msg="p_0 is uniform")


# --- data ---


def _plan(label_noise=0.3, validation=16, seeds=(0, 1)):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (96, 8, 8, 1), dtype=np.uint8), rng.integers(0, 5, 96)
    dataset = Dataset.from_arrays(images, labels, images[:16], labels[:16], name="toy")
    from conftest import tiny_config

    config = tiny_config(dataset="toy", limit_train=None, limit_test=None, batch_size=16, label_noise=label_noise,
                         validation=validation, seed=seeds)  # fmt: skip
    return make_plan(config, dataset), dataset


def test_the_training_labels_are_the_seeds_noisy_labels_at_the_requested_rate():
    plan, dataset = _plan()
    data = prepare_data(plan, dataset, Members.of_seeds((0, 1)), resident=False)
    for i, seed in enumerate((0, 1)):
        noisy, _ = symmetric_label_noise(dataset.train_labels, 0.3, dataset.num_classes, seed)
        np.testing.assert_array_equal(
            data.train_labels[i], noisy[:80], err_msg=f"seed {seed} trains on its noise"
        )
        np.testing.assert_array_equal(
            data.val_labels[i], noisy[80:], err_msg="validation keeps the same noise"
        )
        flipped = noisy[:80] != dataset.train_labels[:80]
        assert data.realised_noise[i] == pytest.approx(flipped.mean()), "the realised rate is reported"
    assert not np.array_equal(data.train_labels[0], data.train_labels[1]), "each seed draws its own noise"
    np.testing.assert_array_equal(
        data.dataset.train_labels, dataset.train_labels[:80], "the clean labels are kept"
    )
    big = np.random.default_rng(1).integers(0, 10, 100_000)
    for rate in (0.2, 0.4, 0.6):
        assert abs((symmetric_label_noise(big, rate, 10, 3)[0] != big).mean() - rate) < 0.01, (
            "the requested rate"
        )


def test_each_epoch_has_its_own_order_the_same_for_the_same_seed():
    plan, dataset = _plan(label_noise=0.0, seeds=(0, 1))
    data = prepare_data(plan, dataset, Members.of_seeds((0, 1)), resident=True)
    orders = {}
    for epoch in (1, 2):
        (images, labels, order, start, length), *_ = epoch_chunks(plan, data, Members.of_seeds((0, 1)), epoch)
        orders[epoch] = np.asarray(order)
        for i, seed in enumerate((0, 1)):
            np.testing.assert_array_equal(orders[epoch][i], epoch_order(80, 16, seed, epoch),
                                          err_msg=f"epoch {epoch}'s order comes from (seed, epoch)")  # fmt: skip
    assert not np.array_equal(orders[1], orders[2]), "the order differs from epoch to epoch"
    assert not np.array_equal(orders[1][0], orders[1][1]), "the order differs from seed to seed"
    assert make_programs(plan, dataset, Members.of_seeds((0, 1))).members == Members.of_seeds((0, 1))


# --- heads ---


def test_adaptive_average_pool_bins_cover_the_map_as_pytorch_does():
    h = jnp.arange(2 * 7 * 7 * 3, dtype=jnp.float32).reshape(2, 7, 7, 3)
    pooled = adaptive_avg_pool(h, 2)
    bins = [(0, 4), (3, 7)]  # floor(i * 7 / 2) .. ceil((i + 1) * 7 / 2)
    for i, (a, b) in enumerate(bins):
        for j, (c, d) in enumerate(bins):
            np.testing.assert_allclose(
                pooled[:, i, j], h[:, a:b, c:d].mean((1, 2)), err_msg=f"bin ({i}, {j})"
            )


@pytest.mark.parametrize("head", list(HEADS))
def test_heads_read_the_belief_as_asked(head):
    from flax import nnx

    h = jax.random.normal(jax.random.key(0), (4, 6, 6, 8))
    log_beliefs = [jax.nn.log_softmax(jax.random.normal(jax.random.key(s), (4, 5))) for s in (1, 2)]
    outs = {}
    for belief_input in ("prob", "log", "none"):
        module = HEADS[head]((6, 6, 8), 5, 16, belief_input, rngs=nnx.Rngs(0))
        outs[belief_input] = [module(h, lb) for lb in log_beliefs]
        assert outs[belief_input][0].shape == (4, 5), f"{head}: logits [B, N]"
    assert tree_max_abs(outs["none"][0] - outs["none"][1]) == 0, f"{head}: 'none' ignores the belief"
    assert tree_max_abs(outs["prob"][0] - outs["prob"][1]) > 0, f"{head}: 'prob' reads it"
    # the same weights read probabilities or log-probabilities: equal inputs give equal logits
    prob = HEADS[head]((6, 6, 8), 5, 16, "prob", rngs=nnx.Rngs(0))
    log = HEADS[head]((6, 6, 8), 5, 16, "log", rngs=nnx.Rngs(0))
    lb = log_beliefs[0]
    chex.assert_trees_all_close(prob(h, jnp.log(jnp.exp(lb))), log(h, jnp.exp(lb)), atol=1e-5,
                                custom_message=f"{head}: 'prob' reads exp(log_belief), 'log' reads log_belief")  # fmt: skip
