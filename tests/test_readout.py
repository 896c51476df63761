"""The ``readout`` method (a fresh linear read-out on a frozen network) and warm starts (``init_from``)."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import NUM_CLASSES, tiny_batch, tiny_config, tiny_network
from flax import nnx

import sidjax
from sidjax.errors import ConfigError
from sidjax.methods import METHODS
from sidjax.methods.readout import Frozen, ReadOut
from sidjax.train.runner import load_run, run

KEY = jax.random.key(3)
READOUT = METHODS["readout"]


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def _frozen_values(stats):
    """Every ``Frozen`` array of ``stats`` (the parameters the read-out holds fixed), in order."""
    found = jax.tree.leaves(stats, is_leaf=lambda v: isinstance(v, Frozen))
    return [np.asarray(v[...]) for v in found if isinstance(v, Frozen)]


def bn_cnn(key):
    rngs = nnx.Rngs(key)
    blocks = [[nnx.Conv(1, 4, (3, 3), rngs=rngs), nnx.BatchNorm(4, rngs=rngs), nnx.relu],
              [nnx.Conv(4, 8, (3, 3), rngs=rngs), nnx.BatchNorm(8, rngs=rngs), nnx.relu]]  # fmt: skip
    return sidjax.blockwise(blocks, num_classes=NUM_CLASSES, input_shape=(8, 8, 1), rngs=rngs, head_hidden=16)


def test_the_read_out_is_one_linear_layer_on_the_last_blocks_pooled_output_and_nothing_else_trains():
    plain = bn_cnn(KEY)  # BatchNorm: the read-out reads the running statistics, not the batch's
    network, variables = READOUT.adapt(*plain, KEY)
    x, y = tiny_batch()
    objective = READOUT.make_objective(network, sidjax.SIDLoss())
    (value, (losses, logits, stats)), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(
        variables.params, variables.stats, x, y, KEY
    )
    # by hand: the trained network's last block output in evaluation mode, pooled, one linear layer
    h = jax.jit(lambda v, x: plain[0].forward(v, x, train=False, cut=True).outputs[-1])(plain[1], x)
    pooled = h.mean(axis=(1, 2))
    head = network.unit_values(variables.params.units, 1)["head"]["linear"]
    w, b = head["kernel"][...], head["bias"][...]
    assert w.shape == (h.shape[-1], NUM_CLASSES)
    expected = optax.softmax_cross_entropy_with_integer_labels(pooled @ w + b, y).mean()
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(losses, [0.0, expected], rtol=1e-5)
    np.testing.assert_allclose(logits[-1], jax.jit(network.apply)(variables, x)[-1], atol=1e-6)
    # its gradient: (softmax - onehot)^T pooled / B, and no other parameter exists to train
    delta = (jax.nn.softmax(pooled @ w + b) - jax.nn.one_hot(y, NUM_CLASSES)) / len(y)
    got = network.unit_values(grads.units, 1)["head"]["linear"]
    np.testing.assert_allclose(got["kernel"][...], pooled.T @ delta, atol=1e-6)
    np.testing.assert_allclose(got["bias"][...], delta.sum(0), atol=1e-6)
    assert [len(jax.tree.leaves(grads.stem))] + [
        len(jax.tree.leaves(network.unit_values(grads.units, 0)))
    ] == [0, 0]
    # the frozen parameters are the trained network's own, and the stats come back as they were
    trained = _leaves(plain[1].params.stem) + _leaves(network.unit_values(plain[1].params.units, 0))
    frozen = _frozen_values(variables.stats.stem) + _frozen_values(
        network.unit_values(variables.stats.units, 0)
    )
    assert len(frozen) == len(trained) and all(
        np.array_equal(a, b) for a, b in zip(frozen, trained, strict=True)
    )
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(stats), _leaves(variables.stats), strict=True))


def test_sgd_with_momentum_and_weight_decay_moves_the_read_out_only():
    network, variables = READOUT.adapt(*tiny_network("simplecnn"), KEY)
    tx = optax.chain(optax.add_decayed_weights(0.1), optax.sgd(0.1, momentum=0.9))
    learner = sidjax.make_learner(network, tx, "readout")
    state = learner.init(variables)
    for i in range(3):
        state, _ = learner.step(state, tiny_batch(seed=i), KEY)
    assert all(
        np.array_equal(a, b) for a, b in zip(_leaves(state.stats), _leaves(variables.stats), strict=True)
    )
    moved = network.unit_values(state.params.units, network.num_units - 1)["head"]
    before = network.unit_values(variables.params.units, network.num_units - 1)["head"]
    assert all(not np.array_equal(a, b) for a, b in zip(_leaves(moved), _leaves(before), strict=True))
    assert isinstance(network.modules(state.variables).units[-1].head, ReadOut)
    assert len(_leaves(state.params)) == 2  # the read-out's kernel and bias: nothing else is a parameter


def test_a_unit_without_a_head_is_refused_in_one_line():
    class Plain(nnx.Module):
        def __init__(self, features, num_classes, rngs):
            self.linear = nnx.Linear(features + num_classes, num_classes, rngs=rngs)

        def __call__(self, z, log_belief):
            return z, self.linear(jnp.concatenate([z, log_belief], -1))

    extractor = nnx.Sequential(lambda x: x.reshape(len(x), -1), nnx.Linear(64, 16, rngs=nnx.Rngs(0)))
    own = sidjax.trunk(extractor, num_classes=NUM_CLASSES, input_shape=(8, 8, 1), num_modules=2, key=KEY,
                       module=Plain)  # fmt: skip
    with pytest.raises(
        ConfigError, match="replaces the last unit's head attribute; your unit Plain has none"
    ):
        READOUT.adapt(*own, KEY)


@pytest.fixture(scope="module")
def hsic_runs(tmp_path_factory):
    """``(config, results, directory)`` of an HSIC run of two seeds that the tests here start from."""
    path = tmp_path_factory.mktemp("source") / "hsic"
    config = tiny_config(
        model="mlp4", mode="blockwise", num_blocks=3, method="hsic", batch_size=64, seed=(0, 1)
    )
    return config, run(config, str(path), progress=False), str(path)


def test_a_warm_start_takes_each_seeds_trained_network_and_the_read_out_is_trained_on_it(hsic_runs, tmp_path):
    source_config, trained, source = hsic_runs
    config = tiny_config(method="readout", init_from=source, optimizer="sgd", lr=0.005,
                         momentum=0.0, weight_decay=0.001, seed=(0, 1))  # fmt: skip
    results = run(config, str(tmp_path / "readout"), progress=False)
    for given_run, result in zip(trained, results, strict=True):
        network = result.network
        # the network is the source's: its blocks' parameters are held at their trained values
        blocks = [network.unit_values(result.variables.stats.units, k) for k in range(network.num_units)]
        frozen = [a for block in blocks for a in _frozen_values(block["layers"])]
        given = [
            a for k in range(network.num_units)
            for a in _leaves(given_run.network.unit_values(given_run.variables.params.units, k)["layers"])
        ]  # fmt: skip
        assert len(frozen) == len(given) > 0
        assert all(np.array_equal(a, b) for a, b in zip(frozen, given, strict=True))
        assert result.summary["init_from"] == source
        for field in ("model", "mode", "num_blocks", "belief_input"):
            assert result.summary[field] == getattr(source_config, field)
    # each seed from its own: the two seeds' frozen blocks differ
    firsts = [_frozen_values(r.variables.stats.units[0]["layers"])[0] for r in results]
    assert not np.array_equal(*firsts)
    # the read-out learned (5 classes: chance 0.2) and the run loads back as it ended
    again = load_run(str(tmp_path / "readout" / "seed1"))
    assert again.summary["final_test_accuracy"] == results[1].summary["final_test_accuracy"]
    assert all(np.array_equal(a, b) for a, b in
               zip(_leaves(again.variables), _leaves(results[1].variables), strict=True))  # fmt: skip


def test_init_from_is_refused_in_one_line_where_it_cannot_start(hsic_runs, tmp_path):
    with pytest.raises(ConfigError, match="init_from: .*holds no run: no such directory"):
        run(tiny_config(method="readout", init_from=str(tmp_path / "nothing")), progress=False)
    source = hsic_runs[2]
    with pytest.raises(ConfigError, match=r"trained seed0, seed1, not seed2: .*seed0\) for every seed"):
        run(tiny_config(method="readout", init_from=source, seed=2), progress=False)
    with pytest.raises(ConfigError, match="was trained on fashion_mnist, not mnist"):
        run(tiny_config(method="readout", init_from=source, dataset="mnist"), progress=False)
    with pytest.raises(ConfigError, match="init_from must be a run's directory, got ''"):
        tiny_config(method="readout", init_from="")
    # a run still training (or stopped) is started from its newest checkpoint, with a warning
    unfinished = tmp_path / "unfinished"
    shutil.copytree(os.path.join(source, "seed0"), unfinished)
    os.remove(unfinished / "summary.json")
    with pytest.warns(
        UserWarning, match="that run has not finished; starting from its checkpoint of epoch 2"
    ):
        run(tiny_config(method="readout", init_from=unfinished, epochs=1), progress=False)
    # one seed's directory starts every seed
    one = tiny_config(method="readout", init_from=os.path.join(source, "seed1"), seed=(4, 5), epochs=1)
    results = run(one, progress=False)
    firsts = [_frozen_values(r.variables.stats.units[0]["layers"])[0] for r in results]
    assert np.array_equal(*firsts)


def own_mlp(key):
    rngs = nnx.Rngs(key)
    blocks = [[Flatten(), nnx.Linear(64, 32, rngs=rngs), nnx.relu], [nnx.Linear(32, 32, rngs=rngs), nnx.relu]]
    return sidjax.blockwise(blocks, num_classes=10, input_shape=(8, 8, 1), rngs=rngs, head_hidden=16,
                            belief_input="none", name="own_mlp")  # fmt: skip


class Flatten(nnx.Module):
    def __call__(self, x):
        return x.reshape(len(x), -1)


def test_a_warm_start_from_your_own_model_is_given_that_model(tmp_path):
    arrays = np.random.default_rng(0).random((96, 8, 8, 1), np.float32), np.arange(96) % 10
    data = sidjax.Dataset.from_arrays(*arrays, *arrays, name="mine")
    config = sidjax.TrainConfig(dataset="mine", epochs=1, batch_size=32, method="dgl", mode="blockwise")
    source = run(config, str(tmp_path / "dgl"), model=own_mlp, dataset=data, progress=False)
    post = dataclasses.replace(config, method="readout", init_from=str(tmp_path / "dgl"))
    with pytest.raises(
        ConfigError, match="init_from: .*trained with your own model 'own_mlp': give .* the same model"
    ):
        run(post, dataset=data, progress=False)
    result = run(post, str(tmp_path / "readout"), model=own_mlp, dataset=data, progress=False)
    frozen = _frozen_values(result.variables.stats.units[0]["layers"])
    assert all(np.array_equal(a, b) for a, b in
               zip(frozen, _leaves(source.variables.params.units[0]["layers"]), strict=True))  # fmt: skip
    again = load_run(str(tmp_path / "readout"), model=own_mlp)
    assert all(
        np.array_equal(a, b) for a, b in zip(_leaves(again.variables), _leaves(result.variables), strict=True)
    )


def test_the_cli_trains_a_read_out_from_a_run(hsic_runs, tmp_path):
    from sidjax.train.cli import train

    summaries = train([
        "--method", "readout", "--init-from", hsic_runs[2], "--limit-train", "512", "--limit-test",
        "256", "--epochs", "1", "--batch-size", "64", "--out", str(tmp_path / "cli"), "--no-progress",
    ])  # fmt: skip
    recorded = json.load(open(os.path.join(tmp_path, "cli", "config.json")))
    assert recorded["method"] == "readout" and recorded["model"] == "mlp4" and recorded["mode"] == "blockwise"
    assert summaries[0]["num_blocks"] == 3
    assert dataclasses.asdict(sidjax.TrainConfig.from_record(recorded))["init_from"] == hsic_runs[2]
