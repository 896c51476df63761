"""Evaluation and prediction: one scan over padded batches gives exactly the per-example values, per unit."""

import jax
import numpy as np
from conftest import NUM_MODULES

from sidjax import evaluate, kl_to_target, predict
from sidjax.data import Dataset
from sidjax.evaluation import make_split_predictor


def _arrays(num=23):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (num, 8, 8, 1), dtype=np.uint8), rng.integers(0, 5, num)
    return Dataset.from_arrays(images, labels, images, labels, num_classes=5), images, labels


def test_evaluate_matches_a_direct_computation(mlp_net):
    network, variables = mlp_net
    dataset, images, labels = _arrays()
    result = evaluate(network, variables, dataset, batch_size=10)  # 3 batches, the last one padded
    x, y = dataset.normalise(images), labels
    logits = network.apply(variables, x)  # [L, B, N]
    expected_acc = (logits.argmax(-1) == y[None]).mean(-1)
    expected_kl = jax.vmap(lambda lg: kl_to_target(lg, y))(logits).mean(-1)
    assert len(result["per_unit_accuracy"]) == NUM_MODULES
    np.testing.assert_allclose(result["per_unit_accuracy"], expected_acc, atol=1e-6)
    np.testing.assert_allclose(result["per_unit_kl"], expected_kl, rtol=1e-5)
    assert result["accuracy"] == result["per_unit_accuracy"][-1]


def test_predictions_are_the_last_units_softmax_in_any_batching(mlp_net):
    network, variables = mlp_net
    dataset, images, _ = _arrays()
    x = dataset.normalise(images)
    logits = network.apply(variables, x)
    probabilities = predict(network, variables, x, batch_size=10)  # batches of 10, 10 and 3
    np.testing.assert_allclose(probabilities, jax.nn.softmax(logits[-1]), atol=1e-6)
    per_unit = predict(network, variables, x, per_unit=True, batch_size=7)
    assert per_unit.shape == (NUM_MODULES, 23, 5)
    np.testing.assert_allclose(per_unit, jax.nn.softmax(logits), atol=1e-6)
    classes = jax.jit(make_split_predictor(network, dataset, batch_size=10))(variables, images)
    np.testing.assert_array_equal(classes, logits[-1].argmax(-1))  # the padded last batch is cut off
