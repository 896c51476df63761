"""Evaluation: one scan over padded batches gives exactly the per-example means, per unit."""

import jax
import numpy as np
from conftest import NUM_MODULES

from sidjax import evaluate, kl_to_target
from sidjax.data import Dataset


def test_evaluate_matches_a_direct_computation(mlp_net):
    network, params = mlp_net
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (23, 8, 8, 1), dtype=np.uint8), rng.integers(0, 5, 23)
    dataset = Dataset.from_arrays(images, labels, images, labels, num_classes=5)
    result = evaluate(network, params, dataset, batch_size=10)  # 3 batches, the last one padded
    x, y = dataset.normalise(images), labels
    logits = network.apply(params, x)  # [L, B, N]
    expected_acc = (logits.argmax(-1) == y[None]).mean(-1)
    expected_kl = jax.vmap(lambda lg: kl_to_target(lg, y))(logits).mean(-1)
    assert len(result["per_module_accuracy"]) == NUM_MODULES
    np.testing.assert_allclose(result["per_module_accuracy"], expected_acc, atol=1e-6)
    np.testing.assert_allclose(result["per_module_kl"], expected_kl, rtol=1e-5)
    assert result["accuracy"] == result["per_module_accuracy"][-1]
