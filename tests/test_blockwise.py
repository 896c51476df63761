"""Blockwise SID: no gradient crosses a block boundary; execution modes agree; baselines."""

import chex
import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import NUM_CLASSES, tiny_blockwise, tree_max_abs
from flax import nnx

from sidjax import ARCHITECTURES, METHODS, SIDLoss, Variables, local_losses, make_learner, make_network

LOSS = SIDLoss(0.5)


def batch_for(input_shape, size=6, seed=1):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (size, *input_shape)), jax.random.randint(ky, (size,), 0, NUM_CLASSES)


def learnable_batch(input_shape, size=16, seed=2):
    """A fixed image per class plus noise: learnable through global average pooling."""
    kt, kn, ky = jax.random.split(jax.random.key(seed), 3)
    templates = 2.0 * jax.random.uniform(kt, (NUM_CLASSES, *input_shape))
    labels = jnp.arange(size) % NUM_CLASSES
    return templates[labels] + 0.3 * jax.random.normal(kn, (size, *input_shape)), labels


CASES = [
    ("simplecnn", 4, (8, 8, 1)),
    ("vgg11", 3, (8, 8, 1)),
    ("resnet18", 4, (8, 8, 3)),
    ("vit_tiny", 2, (8, 8, 1)),
]


@pytest.mark.parametrize("model,k,shape", CASES)
def test_no_gradient_crosses_a_block_boundary(model, k, shape):
    network, variables = tiny_blockwise(model, k, shape)
    x, y = batch_for(shape)

    def losses(params):
        return local_losses(network, Variables(params, variables.stats), x, y, LOSS, execution="fused")[0]

    jac = jax.jit(jax.jacrev(losses))(variables.params)
    for i in range(k):  # loss of block i
        row = jax.tree.map(lambda a, i=i: a[i], jac)
        for j in range(k):  # params (block layers and head) of block j
            block = network.unit_values(row.units, j)
            assert (tree_max_abs(block) > 0) if i == j else (tree_max_abs(block) == 0.0), (i, j)
        if network.stem is not None:  # the stem trains with block 1 only
            assert (tree_max_abs(row.stem) > 0) if i == 0 else (tree_max_abs(row.stem) == 0.0), i


def _one_update(network, variables, batch, execution, method="sid", loss=LOSS):
    tx = optax.sgd(0.1)  # linear in the gradient, so round-off is not amplified as in Adam's first step
    learner = make_learner(network, tx, method, loss, execution=execution)
    return learner.step(learner.init(variables), batch, jax.random.key(0))


@pytest.mark.parametrize("model,k,shape", CASES)
def test_fused_and_sequential_execution_agree(model, k, shape):
    network, variables = tiny_blockwise(model, k, shape)
    batch = batch_for(shape)
    s_fused, m_fused = _one_update(network, variables, batch, "fused")
    s_seq, m_seq = _one_update(network, variables, batch, "sequential")
    chex.assert_trees_all_close(m_fused, m_seq, atol=1e-5)
    chex.assert_trees_all_close(s_fused.params, s_seq.params, atol=1e-5)
    chex.assert_trees_all_close(s_fused.stats, s_seq.stats, atol=1e-5)
    assert tree_max_abs(jax.tree.map(jnp.subtract, s_fused.params, variables.params)) > 1e-4


def test_vmap_execution_agrees_on_identical_blocks():
    network, variables = tiny_blockwise("vit_tiny", 4)  # 4 identical one-layer blocks: stacked
    assert network.stacked
    batch = batch_for((8, 8, 1))
    s_vmap, m_vmap = _one_update(network, variables, batch, "vmap")
    s_fused, m_fused = _one_update(network, variables, batch, "fused")
    s_seq, _ = _one_update(network, variables, batch, "sequential")
    chex.assert_trees_all_close(m_vmap, m_fused, atol=1e-5)
    chex.assert_trees_all_close(s_vmap.params, s_fused.params, atol=1e-5)
    chex.assert_trees_all_close(s_vmap.params, s_seq.params, atol=1e-5)


def test_vmap_execution_refuses_blocks_of_different_structure():
    network, variables = tiny_blockwise("simplecnn", 2)
    with pytest.raises(ValueError, match="needs identical"):
        _one_update(network, variables, batch_for((8, 8, 1)), "vmap")


def test_sequential_execution_refuses_the_shared_trunk():
    network, variables = make_network("mlp", (8, 8, 1), NUM_CLASSES, 2, jax.random.key(0), tiny=True)
    with pytest.raises(ValueError, match="needs mode blockwise"):
        _one_update(network, variables, batch_for((8, 8, 1)), "sequential")


@pytest.mark.parametrize("model,k,shape", [CASES[0], CASES[3]])
def test_bp_remat_gives_bp_gradients(model, k, shape):
    network, variables = tiny_blockwise(model, k, shape)
    x, y = batch_for(shape)

    def grads(method):
        objective = METHODS[method].make_objective(network, LOSS)
        return jax.jit(jax.value_and_grad(objective, has_aux=True))(
            variables.params, variables.stats, x, y, None
        )

    bp, remat = grads("bp"), grads("bp_remat")
    chex.assert_trees_all_close(bp, remat, atol=1e-6)
    # and backprop's gradient does reach the first block from the last head
    assert tree_max_abs(network.unit_values(bp[1].units, 0)) > 0


def test_dgl_is_sid_with_alpha_one_and_no_belief_input():
    network, variables = tiny_blockwise("simplecnn", 3, belief_input="none")
    batch = batch_for((8, 8, 1))
    s_dgl, m_dgl = _one_update(network, variables, batch, "fused", method="dgl", loss=SIDLoss(0.3))
    s_sid, m_sid = _one_update(network, variables, batch, "fused", method="sid", loss=SIDLoss(1.0))
    chex.assert_trees_all_equal(s_dgl.params, s_sid.params)
    chex.assert_trees_all_equal(m_dgl, m_sid)
    # each block's DGL loss is its own head's cross-entropy
    x, y = batch
    losses, logits, _ = local_losses(network, variables, x, y, SIDLoss(1.0), execution="fused")
    ce = jax.vmap(lambda lg: optax.softmax_cross_entropy_with_integer_labels(lg, y).mean())(logits)
    chex.assert_trees_all_close(losses, ce, atol=1e-6)
    with pytest.raises(ValueError, match="needs heads without belief input: belief_input 'none'"):
        _one_update(*tiny_blockwise("simplecnn", 3), batch, "fused", method="dgl")


ALLOWED = {"mlp": [1], "simplecnn": [1, 2, 3, 4], "vgg11": list(range(1, 9)), "resnet18": [1, 2, 4, 8],
           "resnet18_gn": [1, 2, 4, 8]}  # fmt: skip


@pytest.mark.parametrize("model", list(ARCHITECTURES))
def test_cuts_cover_every_layer_exactly_once(model):
    backbone = ARCHITECTURES[model]((32, 32, 3), False, "xla", nnx.Rngs(0))
    num = len(backbone.layers)
    assert (
        num
        == {"mlp": 1, "mlp4": 4, "simplecnn": 4, "vgg11": 8, "resnet18": 8, "resnet18_gn": 8, "vit_tiny": 12}[
            model
        ]
    )
    for k in ALLOWED.get(model, range(1, num + 1)):
        groups = backbone.cut(k)
        assert len(groups) == k and all(groups)
        assert sum(groups, []) == list(range(num))  # contiguous, in order, each once
    with pytest.raises(ValueError, match=f"{model} can be cut into K in"):
        backbone.cut(num + 1)
    with pytest.raises(ValueError, match=f"{model} can be cut into K in"):
        backbone.cut(0)


def test_invalid_block_counts_fail_clearly():
    with pytest.raises(ValueError, match=r"resnet18 can be cut into K in \[1, 2, 4, 8\] blocks, not 3"):
        tiny_blockwise("resnet18", 3)
    with pytest.raises(ValueError, match="num_blocks must be >= 1"):
        tiny_blockwise("vgg11", 0)


@pytest.mark.parametrize("model", ["simplecnn", "vgg11", "resnet18", "vit_tiny"])
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_architectures_in_all_three_uses(model, shape):
    x, _ = batch_for(shape, size=2)
    network, variables = tiny_blockwise(model, 2, shape)
    assert network.apply(variables, x).shape == (2, 2, NUM_CLASSES)
    trunk, trunk_variables = make_network(
        model, shape, NUM_CLASSES, 3, jax.random.key(0), feature_dim=8, tiny=True
    )
    assert trunk.apply(trunk_variables, x).shape == (3, 2, NUM_CLASSES)


@pytest.mark.parametrize("model,k,shape", CASES)
@pytest.mark.parametrize("method", ["sid", "bp"])
def test_tiny_variants_train_with_the_objective_going_down(model, k, shape, method):
    network, variables = tiny_blockwise(model, k, shape)
    learner = make_learner(network, optax.adam(1e-2), method, LOSS, execution="fused")
    state = learner.init(variables)
    batch = learnable_batch(shape)
    history = []
    for _ in range(30):
        state, metrics = learner.step(state, batch, jax.random.key(0))
        history.append(float(metrics["loss"]))  # the method's own objective
    # measured: 0.33-0.87 (SID, sum of local losses) and 0.0-0.77 (BP) of the start
    assert history[-1] < 0.9 * history[0], history
