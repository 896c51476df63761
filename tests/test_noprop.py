"""NoProp as the SID authors run it, against formulas written here: the codes each unit is given, its
loss, the gradients it receives, and the prediction from noise; then through run, resume and predict."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import NUM_CLASSES, tiny_batch, tiny_config, tiny_network

import sidjax
from experiments.noprop_draws import draw_accuracies
from sidjax.errors import ConfigError
from sidjax.methods import get_method
from sidjax.methods.noprop import Denoise

T = 3


def _noprop_network():
    network, variables = tiny_network(num_modules=T, belief_input="log")
    return get_method("noprop").adapt(network, variables, jax.random.key(0))


def _hand_written_losses(network, variables, x, y, key):
    """Each unit on its own noisy code, by the formulas: a = linspace(1, 0.1, T), v = sqrt(a) u + sqrt(1-a) eps."""
    modules = network.modules(variables, train=True, key=key)  # no dropout in these modules: train == eval
    z = modules.stem(x)
    u = jax.nn.one_hot(y, NUM_CLASSES)
    eps = jax.random.normal(jax.random.fold_in(key, T + 1), (T, len(y), NUM_CLASSES))
    losses = []
    for t, a in enumerate(np.linspace(1.0, 0.1, T)):
        v = np.sqrt(a) * u + np.sqrt(1.0 - a) * eps[t]
        _, out = modules.units[t](z, v)
        losses.append(float(((out - u) ** 2).mean()))
    return np.array(losses)


def test_each_units_loss_is_the_mse_of_denoising_its_own_noisy_label_code():
    network, variables = _noprop_network()
    x, y = tiny_batch()
    key = jax.random.key(7)
    objective = jax.jit(get_method("noprop").make_objective(network, sidjax.SIDLoss()))
    value, (losses, _, _) = objective(variables.params, variables.stats, x, y, key)
    expected = _hand_written_losses(network, variables, x, y, key)
    np.testing.assert_allclose(
        np.asarray(losses), expected, rtol=1e-5, err_msg="unit t's loss, by its formula"
    )
    np.testing.assert_allclose(float(value), expected.sum(), rtol=1e-5, err_msg="the objective is their sum")


def test_no_gradient_crosses_a_unit_and_the_extractor_gets_the_sum():
    network, variables = _noprop_network()
    x, y = tiny_batch()
    objective = get_method("noprop").make_objective(network, sidjax.SIDLoss())

    def unit_loss(t):
        return lambda params: objective(params, variables.stats, x, y, jax.random.key(3))[1][0][t]

    grads = [jax.jit(jax.grad(unit_loss(t)))(variables.params) for t in range(T)]
    for t in range(T):
        for s in range(T):
            block = jax.tree.map(lambda g, s=s: g[s], grads[t].units)
            size = max(float(jnp.abs(a).max()) for a in jax.tree.leaves(block))
            assert (size > 0) == (s == t), f"unit {t}'s loss reaches unit {s}'s parameters: {size}"
    total = jax.grad(lambda p: objective(p, variables.stats, x, y, jax.random.key(3))[0])(variables.params)
    chex.assert_trees_all_close(total.stem, jax.tree.map(lambda *g: sum(g), *(g.stem for g in grads)), atol=1e-6,
                                custom_message="the extractor's gradient is the sum of the units'")  # fmt: skip


@pytest.mark.parametrize("draw", [0, 3])
def test_prediction_iterates_the_units_from_noise_drawn_from_a_fixed_key(draw):
    network, variables = _noprop_network()
    network = dataclasses.replace(network, inference=Denoise(draw))
    x, _ = tiny_batch()
    modules = network.modules(variables)
    z = modules.stem(x)
    v = jax.random.normal(jax.random.fold_in(jax.random.key(0), draw), (len(x), NUM_CLASSES))
    steps = []
    for t in reversed(range(T)):  # the noisiest unit first
        _, v = modules.units[t](z, v)
        steps.append(v)
    np.testing.assert_allclose(np.asarray(network.apply(variables, x)), np.stack(steps), rtol=1e-5, atol=1e-6)
    probabilities = sidjax.predict(network, variables, x)
    np.testing.assert_allclose(probabilities, jax.nn.softmax(steps[-1]), rtol=1e-5, atol=1e-6)
    assert np.array_equal(probabilities, sidjax.predict(network, variables, x)), "a fixed key: the same twice"


def test_every_step_draws_fresh_codes_and_moves_every_unit():
    network, variables = _noprop_network()
    objective = jax.jit(get_method("noprop").make_objective(network, sidjax.SIDLoss()))
    x, y = tiny_batch()
    losses = [objective(variables.params, variables.stats, x, y, jax.random.fold_in(jax.random.key(0), step))[1][0]
              for step in (0, 1)]  # fmt: skip
    assert not np.allclose(losses[0], losses[1]), "the same parameters, other codes: other losses"
    learner = sidjax.make_learner(network, optax.adam(1e-2), "noprop")
    state, _ = learner.step(learner.init(variables), (x, y), jax.random.key(0))
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params.units, variables.params.units)
    assert min(jax.tree.leaves(moved)) > 0, "every unit's parameters moved"


def test_noprop_trains_through_run_resumes_and_predicts(tmp_path, fashion_mnist):
    config = tiny_config(method="noprop", num_modules=4, epochs=2, limit_train=2048, limit_test=512)
    whole = sidjax.run(config, dataset=fashion_mnist, progress=False)
    assert whole.summary["final_test_accuracy"] > 0.5, "chance is 0.1"
    assert whole.summary["network"]["alpha"] is None
    out = tmp_path / "run"
    sidjax.run(dataclasses.replace(config, epochs=1), str(out), dataset=fashion_mnist, progress=False)
    resumed = sidjax.run(config, str(out), dataset=fashion_mnist, progress=False, resume=True)
    chex.assert_trees_all_close(
        resumed.state, whole.state, atol=1e-6, custom_message="resume == uninterrupted"
    )
    loaded = sidjax.load_run(str(out))
    x = fashion_mnist.normalise(fashion_mnist.test_images[:64])
    np.testing.assert_array_equal(sidjax.predict(loaded.network, loaded.variables, x),
                                  sidjax.predict(whole.network, whole.variables, x))  # fmt: skip


@pytest.mark.parametrize(
    "settings,words",
    [
        (dict(mode="blockwise"), "trains trunk networks"),
        (dict(belief_input="prob"), "belief_input must be 'log'"),
        (dict(pipelined=True), "pipelined needs a local method"),
    ],
)
def test_what_noprop_cannot_train_is_refused_in_one_line(settings, words):
    with pytest.raises(ConfigError, match=words):
        tiny_config(method="noprop", **settings)


def test_unit_outputs_are_reported_per_unit_in_training():
    network, variables = _noprop_network()
    learner = sidjax.make_learner(network, optax.adam(1e-3), "noprop")
    x, y = tiny_batch()
    _, metrics = learner.step(learner.init(variables), (x, y), jax.random.key(0))
    key = jax.random.fold_in(jax.random.key(0), 0)  # the step key of step 0
    expected = _hand_written_losses(network, variables, x, y, key)
    np.testing.assert_allclose(np.asarray(metrics["unit_loss"]), expected, rtol=1e-5)


def test_draw_accuracies_are_each_draws_accuracy_on_the_test_split():
    network, variables = _noprop_network()
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (48, 8, 8, 1), dtype=np.uint8), rng.integers(0, NUM_CLASSES, 48)
    dataset = sidjax.Dataset.from_arrays(images, labels, images[:40], labels[:40], name="toy")
    x = dataset.normalise(dataset.test_images)
    expected = []
    for draw in (0, 1):
        drawn = dataclasses.replace(network, inference=Denoise(draw))
        expected.append(
            float((sidjax.predict(drawn, variables, x, batch_size=16).argmax(-1) == labels[:40]).mean())
        )
    found = draw_accuracies(network, variables, dataset, draws=2, batch_size=16)
    np.testing.assert_allclose(found, expected, atol=1e-6)
