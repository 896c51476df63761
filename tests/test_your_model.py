"""Your own NNX model through the public API: a 3-block CNN with BatchNorm and Dropout.

It trains blockwise (SID and DGL) and as a shared-trunk extractor through ``run``, with
checkpoints, resume, seeds together and evaluation on running statistics, and comes back
from ``run`` and from ``load_run``. Its randomness and statistics follow the engine's rules
in every execution and placement.
"""

import dataclasses
import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import needs_devices, records, tiny_config, tree_max_abs
from flax import nnx

import sidjax
from sidjax import Variables
from sidjax.errors import ConfigError

NUM_CLASSES = 10


class ConvBlock(nnx.Module):
    """3x3 conv, BatchNorm, ReLU, dropout, then an optional 2x2 average pool."""

    def __init__(self, cin: int, cout: int, *, pool: bool, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
        self.norm = nnx.BatchNorm(
            cout, momentum=0.9, rngs=rngs
        )  # few steps here: statistics that settle fast
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.pool = pool

    def __call__(self, x):
        x = self.drop(jax.nn.relu(self.norm(self.conv(x))))
        return nnx.avg_pool(x, (2, 2), strides=(2, 2)) if self.pool else x


def cnn_blocks(rngs: nnx.Rngs, channels: int = 1) -> list[nnx.Module]:
    return [ConvBlock(channels, 8, pool=True, rngs=rngs), ConvBlock(8, 16, pool=True, rngs=rngs),
            ConvBlock(16, 16, pool=False, rngs=rngs)]  # fmt: skip


def blockwise_cnn(key, belief_input="prob", input_shape=(28, 28, 1)):
    rngs = nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1))
    return sidjax.blockwise(cnn_blocks(rngs, input_shape[-1]), num_classes=NUM_CLASSES, input_shape=input_shape,
                            rngs=rngs, head_hidden=32, belief_input=belief_input, name="my_cnn")  # fmt: skip


class Extractor(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.blocks = nnx.List(cnn_blocks(rngs))
        self.out = nnx.Linear(16, 32, rngs=rngs)

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return self.out(x.mean(axis=(1, 2)))


def trunk_cnn(key):
    rngs = nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1))
    return sidjax.trunk(Extractor(rngs), num_classes=NUM_CLASSES, input_shape=(28, 28, 1), num_modules=3,
                        key=jax.random.fold_in(key, 2), module_hidden=32, name="my_cnn_trunk")  # fmt: skip


MODELS = {
    "sid": blockwise_cnn,
    "dgl": functools.partial(blockwise_cnn, belief_input="none"),
    "trunk": trunk_cnn,
}


def _config(case: str, **changes):
    """A config for your network: its mode and depth come from the network (DGL's config must say blockwise)."""
    settings = {"method": "dgl", "mode": "blockwise"} if case == "dgl" else {"method": "sid"}
    return tiny_config(**{"limit_train": 512, "limit_test": 256, "batch_size": 64, **settings, **changes})


def _leaf(stats, *path):
    for p in path:
        stats = stats[p]
    return np.asarray(stats[...])


# sid in the default suite; dgl and the trunk (the same run path, another method or mode) with the slow tests
@pytest.mark.parametrize(
    "case", [c if c == "sid" else pytest.param(c, marks=pytest.mark.slow) for c in MODELS]
)
def test_your_model_trains_through_run_checkpoints_resumes_and_comes_back(case, fashion_mnist, tmp_path):
    model = MODELS[case]
    whole = sidjax.run(_config(case, epochs=2), str(tmp_path / "whole"), model=model, dataset=fashion_mnist,
                       progress=False)  # fmt: skip
    assert whole.summary["model"] == ("my_cnn_trunk" if case == "trunk" else "my_cnn")
    assert whole.summary["mode"] == ("trunk" if case == "trunk" else "blockwise")
    assert whole.summary["final_test_accuracy"] > 0.2  # chance is 0.1; 2 epochs of 512 examples
    # resume: one epoch, then grown to two, equals the uninterrupted run to the last digit
    sidjax.run(
        _config(case, epochs=1), str(tmp_path / "split"), model=model, dataset=fashion_mnist, progress=False
    )
    resumed = sidjax.run(_config(case, epochs=2), str(tmp_path / "split"), model=model, dataset=fashion_mnist,
                         progress=False, resume=True)  # fmt: skip
    assert records(tmp_path / "split" / "metrics.jsonl") == records(tmp_path / "whole" / "metrics.jsonl")
    chex.assert_trees_all_equal(resumed.state, whole.state)
    # the parameters and statistics come back from run and from the run directory alike
    loaded = sidjax.load_run(str(tmp_path / "whole"), model=model)
    chex.assert_trees_all_equal(loaded.state, whole.state)
    assert loaded.summary["final_test_accuracy"] == whole.summary["final_test_accuracy"]
    # evaluation reads the running statistics the training forward passes left
    test = fashion_mnist.subset(None, 256)
    assert (
        sidjax.evaluate(whole.network, whole.variables, test)["accuracy"]
        == whole.summary["final_test_accuracy"]
    )
    fresh = model(jax.random.key(0))[1]
    assert tree_max_abs(jax.tree.map(jnp.subtract, whole.state.stats, fresh.stats)) > 1e-3
    with_fresh_stats = Variables(whole.variables.params, fresh.stats)
    assert (
        sidjax.evaluate(whole.network, with_fresh_stats, test)["per_unit_kl"] != whole.summary["per_unit_kl"]
    )


def test_your_model_with_seeds_together_equals_separate_runs(fashion_mnist):
    together = sidjax.run(_config("sid", seed=(0, 1), epochs=1), model=blockwise_cnn, dataset=fashion_mnist,
                          progress=False)  # fmt: skip
    for seed, result in zip((0, 1), together, strict=True):
        alone = sidjax.run(_config("sid", seed=seed, epochs=1), model=blockwise_cnn, dataset=fashion_mnist,
                           progress=False)  # fmt: skip
        chex.assert_trees_all_close(result.state.params, alone.state.params, atol=1e-5)
        chex.assert_trees_all_close(result.state.stats, alone.state.stats, atol=1e-5)
    assert together[0].summary["per_unit_kl"] != together[1].summary["per_unit_kl"]


def test_a_built_network_through_run_starts_every_seed_from_it(fashion_mnist):
    built = blockwise_cnn(jax.random.key(5))
    results = sidjax.run(
        _config("sid", seed=(0, 1), epochs=1), model=built, dataset=fashion_mnist, progress=False
    )
    assert results[0].summary["final_test_accuracy"] != results[1].summary["final_test_accuracy"] or (
        results[0].summary["per_unit_kl"] != results[1].summary["per_unit_kl"]
    )  # one init, but each seed's own data order and dropout
    with pytest.raises(sidjax.ConfigError, match=r"the given model takes \(8, 8, 1\) inputs"):
        sidjax.run(_config("sid"), model=blockwise_cnn(jax.random.key(0), input_shape=(8, 8, 1)),
                   dataset=fashion_mnist, progress=False)  # fmt: skip


# --- the engine's rules for statistics and randomness, on the same model (8x8 inputs, fast) ---

SHAPE = (8, 8, 1)
TX = optax.sgd(0.1)


def _batch(seed=1, size=16):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (size, *SHAPE)), jax.random.randint(ky, (size,), 0, NUM_CLASSES)


def small(key=jax.random.key(0), belief_input="prob"):
    return blockwise_cnn(key, belief_input, input_shape=SHAPE)


def _steps(learner, variables, n=3):
    state = learner.init(variables)
    for t in range(n):
        state, metrics = learner.step(state, _batch(seed=t), jax.random.key(7))
    return state, metrics


def test_no_gradient_crosses_a_block_of_your_model_with_dropout_on():
    network, variables = small()
    x, y = _batch()

    def losses(params):
        v = Variables(params, variables.stats)
        return sidjax.local_losses(
            network, v, x, y, sidjax.SIDLoss(0.5), key=jax.random.key(3), execution="fused"
        )[0]

    jac = jax.jit(jax.jacrev(losses))(variables.params)
    for i in range(network.num_units):
        row = jax.tree.map(lambda a, i=i: a[i], jac)
        for j in range(network.num_units):
            block = tree_max_abs(network.unit_values(row.units, j))
            assert (block > 0) if i == j else (block == 0.0), (i, j)


@pytest.mark.parametrize("method", ["sid", "dgl", "bp"])
def test_executions_agree_on_params_and_statistics(method):
    network, variables = small(belief_input="none" if method == "dgl" else "prob")
    executions = ("fused", "sequential") if method != "bp" else ("fused",)
    found = {e: _steps(sidjax.make_learner(network, TX, method, execution=e), variables) for e in executions}
    for e in executions[1:]:
        chex.assert_trees_all_close(found[e][0].params, found["fused"][0].params, atol=1e-5)
        chex.assert_trees_all_close(found[e][0].stats, found["fused"][0].stats, atol=1e-5)
    state = found["fused"][0]
    # the running statistics moved (momentum 0.9, 3 steps)
    assert tree_max_abs(jax.tree.map(jnp.subtract, state.stats, variables.stats)) > 1e-3


def test_dropout_keys_are_per_step_and_per_unit_and_the_same_for_the_same_seed():
    network, variables = small()
    learner = sidjax.make_learner(network, TX, "sid")
    state = learner.init(variables)
    batch = _batch()
    one, m1 = learner.step(state, batch, jax.random.key(7))
    two, m2 = learner.step(state, batch, jax.random.key(7))
    other, m3 = learner.step(state, batch, jax.random.key(8))
    chex.assert_trees_all_equal(one.params, two.params)
    assert float(m1["loss"]) == float(m2["loss"]) != float(m3["loss"])
    # a unit's dropout mask changes from step to step: the same batch at step 1 gives another loss
    _, later = learner.step(state._replace(step=state.step + 1), batch, jax.random.key(7))
    assert float(later["loss"]) != float(m1["loss"])
    # ... and no dropout in evaluation: two predictions agree
    x = batch[0]
    np.testing.assert_array_equal(
        sidjax.predict(network, one.variables, x), sidjax.predict(network, one.variables, x)
    )


@pytest.mark.parametrize("execution", ["sequential", "fused"])
def test_pipelined_schedule_keeps_statistics_of_empty_slots(execution):
    network, variables = small()
    learner = sidjax.make_learner(network, TX, "sid", execution=execution, pipelined=True, batch_size=16)
    state = learner.init(variables)
    state, _ = learner.step(state, _batch(), jax.random.key(7))  # only unit 1 has an input yet
    moved = [tree_max_abs(jax.tree.map(jnp.subtract, network.unit_values(state.stats.units, k),
                                       network.unit_values(variables.stats.units, k)))  # fmt: skip
             for k in range(network.num_units)]  # fmt: skip
    assert moved[0] > 0 and moved[1] == moved[2] == 0.0, moved


@needs_devices(4)
def test_stages_and_a_data_mesh_give_the_single_device_statistics():
    network, variables = small()
    single = _steps(sidjax.make_learner(network, TX, "sid", batch_size=16), variables)[0]
    for placement in ("stages:3", "mesh:4,1"):
        learner = sidjax.make_learner(network, TX, "sid", placement=placement, devices=jax.devices()[:4],
                                      batch_size=16)  # fmt: skip
        placed = learner.gather(_steps(learner, variables)[0])
        chex.assert_trees_all_close(placed.params, single.params, atol=1e-5)
        chex.assert_trees_all_close(placed.stats, single.stats, atol=1e-5)


def test_seeds_together_in_one_program_equal_each_seed_alone():
    network, variables = small()
    learner = sidjax.make_learner(network, TX, "sid")
    keys = jax.random.split(jax.random.key(0), 2)
    states = jax.tree.map(lambda *a: jnp.stack(a), *[learner.init(variables)] * 2)
    batch = _batch()
    together, _ = jax.jit(jax.vmap(learner.step, in_axes=(0, None, 0)))(states, batch, keys)
    for i in range(2):
        alone, _ = learner.step(learner.init(variables), batch, keys[i])
        chex.assert_trees_all_close(jax.tree.map(lambda a, i=i: a[i], together.stats), alone.stats, atol=1e-5)
        chex.assert_trees_all_close(
            jax.tree.map(lambda a, i=i: a[i], together.params), alone.params, atol=1e-5
        )


def test_a_dgl_network_ignores_the_belief_it_is_given():
    """DGL's defining property: its heads do not read the previous belief."""
    network, variables = small(belief_input="none")
    x, y = _batch()
    h = jax.random.normal(jax.random.key(2), (16, 4, 4, 8))
    for k, h_in in ((0, x), (1, h)):
        outs = []
        for b in (0, 1):
            log_belief = jax.nn.log_softmax(jax.random.normal(jax.random.key(10 + b), (16, NUM_CLASSES)))
            params, stats = (network.unit_values(t.units, k) for t in variables)
            outs.append(
                network.apply_unit(k, params, stats, sidjax.UnitInput(h_in, log_belief, y), train=False)[0]
            )
        chex.assert_trees_all_equal(outs[0], outs[1])
    sid_network, sid_variables = small()
    params, stats = (sid_network.unit_values(t.units, 0) for t in sid_variables)
    a, b = (
        sid_network.apply_unit(0, params, stats, sidjax.UnitInput(x, jnp.full((16, 10), lb), y), train=False)[
            0
        ][1]
        for lb in (-2.3, -0.1)
    )
    assert tree_max_abs(a - b) > 0  # while SID's heads do read it


def test_config_fields_the_network_defines_are_taken_from_it(fashion_mnist):
    plan = sidjax.train.plan.make_plan(
        _config("sid", num_blocks=7, mode="blockwise"), fashion_mnist, blockwise_cnn
    )
    assert (plan.config.mode, plan.config.num_blocks, plan.config.model) == ("blockwise", 3, "my_cnn")
    with pytest.raises(sidjax.ConfigError, match="method 'dgl' needs heads without belief input"):
        sidjax.run(dataclasses.replace(_config("dgl"), epochs=1), model=blockwise_cnn, dataset=fashion_mnist,
                   progress=False)  # fmt: skip
    with pytest.raises(sidjax.ConfigError, match="method 'dgl' trains blockwise networks, not 'trunk'"):
        sidjax.run(_config("dgl"), model=trunk_cnn, dataset=fashion_mnist, progress=False)


def test_a_backbone_goes_wherever_a_model_name_goes(fashion_mnist):
    """A Backbone of your layers: built in the config's mode and cut by its rule, like a named architecture."""
    rngs = nnx.Rngs(params=0, dropout=1)
    layers = cnn_blocks(rngs)
    backbone = sidjax.Backbone(None, layers, [8, 16, 16], sidjax.architectures.even_cut(3, "mine"))
    network, _ = sidjax.make_blockwise_network(backbone, (28, 28, 1), NUM_CLASSES, 3, jax.random.key(0))
    assert (network.num_units, network.mode) == (3, "blockwise")
    trunk, _ = sidjax.make_network(backbone, (28, 28, 1), NUM_CLASSES, 2, jax.random.key(0))
    assert (trunk.num_units, trunk.mode) == (2, "trunk")
    result = sidjax.run(_config("sid", mode="blockwise", num_blocks=3, epochs=1), model=backbone,
                        dataset=fashion_mnist, progress=False)  # fmt: skip
    assert result.summary["model"] == "backbone/blockwise" and result.summary["num_blocks"] == 3
    with pytest.raises(
        sidjax.ConfigError, match=r"num_blocks 4: mine can be cut into K in \[1, 2, 3\] blocks"
    ):
        sidjax.run(_config("sid", mode="blockwise", num_blocks=4), model=backbone, dataset=fashion_mnist,
                   progress=False)  # fmt: skip


def stacked_cnn(key=jax.random.key(0)):
    """A stem and three identical blocks (BatchNorm, dropout): units that stack, so vmap applies."""
    rngs = nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1))
    stem = nnx.Conv(1, 8, (3, 3), rngs=rngs)
    blocks = [ConvBlock(8, 8, pool=False, rngs=rngs) for _ in range(3)]
    return sidjax.blockwise(blocks, num_classes=NUM_CLASSES, input_shape=SHAPE, rngs=rngs, stem=stem,
                            head_hidden=16)  # fmt: skip


@pytest.mark.parametrize("pipelined", [False, True])
def test_vmapped_units_with_statistics_and_dropout_equal_the_walk(pipelined):
    network, variables = stacked_cnn()
    assert network.stacked
    found = {
        e: _steps(
            sidjax.make_learner(network, TX, "sid", execution=e, pipelined=pipelined, batch_size=16),
            variables,
        )
        for e in ("vmap", "sequential")
    }
    chex.assert_trees_all_close(found["vmap"][0].params, found["sequential"][0].params, atol=1e-5)
    chex.assert_trees_all_close(found["vmap"][0].stats, found["sequential"][0].stats, atol=1e-5)
    assert tree_max_abs(jax.tree.map(jnp.subtract, found["vmap"][0].stats, variables.stats)) > 1e-3


@needs_devices(3)
def test_stacked_units_with_statistics_split_over_a_unit_mesh_equal_one_device():
    network, variables = stacked_cnn()
    one = _steps(
        sidjax.make_learner(network, TX, "sid", execution="vmap", pipelined=True, batch_size=16), variables
    )
    meshed = _steps(sidjax.make_learner(network, TX, "sid", execution="vmap", pipelined=True, placement="mesh:1,3",
                                        batch_size=16), variables)  # fmt: skip
    chex.assert_trees_all_close(meshed[0].params, one[0].params, atol=1e-5)
    chex.assert_trees_all_close(meshed[0].stats, one[0].stats, atol=1e-5)


@pytest.mark.parametrize("case", ["sid", "trunk"])
def test_your_modules_come_back_trained_and_reproduce_predict(case, fashion_mnist):
    """``network.modules``: your own NNX blocks, heads and extractor with the trained arrays, in either mode."""
    result = sidjax.run(_config(case, epochs=1), model=MODELS[case], dataset=fashion_mnist, progress=False)
    network, variables = result.network, result.variables
    x = fashion_mnist.normalise(fashion_mnist.test_images[:64])
    modules = network.modules(variables)
    np.testing.assert_allclose(
        jax.nn.softmax(modules(x)[-1]), sidjax.predict(network, variables, x), rtol=1e-5, atol=1e-6
    )
    if case == "sid":
        block = modules.units[0].layers[0]
        assert isinstance(block, ConvBlock) and block.norm.use_running_average and block.drop.deterministic
        np.testing.assert_array_equal(
            block.norm.mean[...], _leaf(variables.stats.units[0], "layers", 0, "norm", "mean")
        )
        features = modules.units[1].layers[0](block(x))  # your blocks, called as you wrote them
        assert features.shape == (64, 7, 7, 16)
    else:
        assert isinstance(modules.stem, Extractor) and len(modules.units) == 3
    training = network.modules(variables, train=True, key=jax.random.key(1))
    first = training.units[0] if case == "sid" else training.stem
    assert not (first.layers[0] if case == "sid" else first.blocks[0]).drop.deterministic


def wider_cnn(key):
    """The DGL network of ``MODELS`` with a wider second block."""
    rngs = nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1))
    blocks = [ConvBlock(1, 8, pool=True, rngs=rngs), ConvBlock(8, 24, pool=True, rngs=rngs),
              ConvBlock(24, 16, pool=False, rngs=rngs)]  # fmt: skip
    return sidjax.blockwise(blocks, num_classes=NUM_CLASSES, input_shape=(28, 28, 1), rngs=rngs, head_hidden=32,
                            belief_input="none", name="my_cnn")  # fmt: skip


def test_load_run_checks_the_model_against_the_checkpoint_and_records_say_what_trained(
    fashion_mnist, tmp_path
):
    out = str(tmp_path / "dgl")
    sidjax.run(_config("dgl", epochs=1), out, model=MODELS["dgl"], dataset=fashion_mnist, progress=False)
    network = json.loads((tmp_path / "dgl" / "summary.json").read_text())["network"]
    assert network == json.loads((tmp_path / "dgl" / "run.json").read_text())["network"]
    assert network["units"] == 3 and network["belief_input"] == "none" and network["alpha"] == [1.0, 1.0, 1.0]
    assert network["unit_modules"][0] == "ConvBlock + MLPHead" and network["name"] == "my_cnn"
    assert network["parameters"] == sum(
        a.size for a in jax.tree.leaves(MODELS["dgl"](jax.random.key(0))[1].params)
    )
    with pytest.raises(ConfigError, match="method 'dgl' needs heads without belief input"):
        sidjax.load_run(out, model=MODELS["sid"])
    with pytest.raises(ConfigError, match=r"20 arrays of other shapes, e.g. params.units.1.head.hidden.kernel.value: "
                                          r"\(16, 32\) saved, \(24, 32\) given"):  # fmt: skip
        sidjax.load_run(out, model=wider_cnn)
    with pytest.raises(
        ConfigError, match="trained with your own model 'my_cnn': give load_run the same model"
    ):
        sidjax.load_run(out)

    def renamed(key):
        network, variables = MODELS["dgl"](key)
        return dataclasses.replace(network, name="other_cnn"), variables

    with pytest.raises(
        ConfigError, match="trained with the model 'my_cnn'; the model given builds 'other_cnn'"
    ):
        sidjax.load_run(out, model=renamed)
    assert sidjax.load_run(out, model=MODELS["dgl"]).summary["network"] == network
