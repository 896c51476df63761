"""Evaluation and prediction: one scan over padded batches gives exactly the per-example values, per unit."""

import jax
import numpy as np
import pytest
from conftest import INPUT_SHAPE, NUM_CLASSES, NUM_MODULES, tiny_network

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


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros(INPUT_SHAPE, np.float32), r"x is one example of shape \(8, 8, 1\); give a batch"),
        (
            np.zeros((4, 16, 16, 1), np.float32),
            r"x has shape \(4, 16, 16, 1\); this network takes a batch of",
        ),
        (np.zeros((4, *INPUT_SHAPE), np.uint8), r"x is uint8: raw images; normalise them"),
    ],
)
def test_predict_refuses_inputs_the_network_cannot_take(x, message):
    network, variables = tiny_network()
    with pytest.raises(ValueError, match=message):
        predict(network, variables, x)


def test_predict_on_no_examples_gives_no_rows():
    network, variables = tiny_network()
    empty = np.zeros((0, *INPUT_SHAPE), np.float32)
    assert predict(network, variables, empty).shape == (0, NUM_CLASSES)
    assert predict(network, variables, empty, per_unit=True).shape == (
        network.num_units,
        0,
        NUM_CLASSES,
    )
