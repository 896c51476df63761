"""The shared-trunk step sharded over a (data, module) mesh equals the single-device step."""

import chex
import jax
import optax
import pytest
from conftest import count_compiles, needs_devices, tiny_network

from sidjax import SIDLoss, make_learner
from sidjax.parallel import make_mesh, shard_batch, shard_state

NUM_MODULES = 8


def _batches():
    keys = jax.random.split(jax.random.key(7), 2)
    return [
        (jax.random.normal(k, (16, 8, 8, 1)), jax.random.randint(jax.random.fold_in(k, 1), (16,), 0, 5))
        for k in keys
    ]


def _train(network, variables, placement="single"):
    learner = make_learner(network, optax.adam(1e-2), "sid", SIDLoss(0.5), placement=placement, batch_size=16)
    state = learner.init(variables)
    first, *rest = _batches()
    state, metrics = learner.step(state, first, jax.random.key(0))
    with count_compiles() as compiles:
        for batch in rest:
            state, metrics = learner.step(state, batch, jax.random.key(0))
    return state, metrics, compiles.count


@pytest.mark.parametrize("data,unit", [(8, 1), (1, 8), (2, 4)])
@needs_devices(8)
def test_sharded_step_equals_single_device(data, unit):
    network, variables = tiny_network("mlp", num_modules=NUM_MODULES)
    reference, ref_metrics, _ = _train(network, variables)
    sharded, metrics, compiles = _train(network, variables, f"mesh:{data},{unit}")
    chex.assert_trees_all_close(sharded.params, reference.params, atol=1e-5)
    chex.assert_trees_all_close(metrics, ref_metrics, atol=1e-5)
    assert compiles == 0  # no recompilation across steps
    leaf = jax.tree.leaves(sharded.params.units)[0]
    assert len(leaf.sharding.device_set) == data * unit


@needs_devices(8)
def test_meshes_that_do_not_divide_fail_clearly():
    network, variables = tiny_network("mlp", num_modules=3)
    state = make_learner(network, optax.adam(1e-3)).init(variables)
    with pytest.raises(ValueError, match=r"unit axis \(2\) must divide the number of units \(3\)"):
        shard_state(state, network, make_mesh(1, 2))
    with pytest.raises(ValueError, match=r"unit axis \(2\) must divide the number of units \(3\)"):
        make_learner(network, optax.adam(1e-3), placement="mesh:1,2")
    with pytest.raises(ValueError, match=r"data axis \(3\) must divide the batch size \(16\)"):
        shard_batch(_batches()[0], network, make_mesh(3, 1))
    with pytest.raises(ValueError, match="needs 16 devices"):
        make_mesh(4, 4)
