"""Evaluation: padded batches give exactly the per-example mean, per module."""

import jax
import numpy as np
import pytest
from conftest import NUM_MODULES, tiny_batch

from sidjax import evaluate, kl_to_target, make_eval_step


def test_evaluate_matches_a_direct_computation(mlp_net):
    network, params = mlp_net
    x, y = tiny_batch(batch=23)
    result = evaluate(make_eval_step(network), params, np.asarray(x), np.asarray(y), batch_size=10)
    logits = network.apply(params, x)  # [L, B, N]
    expected_acc = (logits.argmax(-1) == y[None]).mean(-1)
    expected_kl = jax.vmap(lambda lg: kl_to_target(lg, y))(logits).mean(-1)
    assert len(result["per_module_accuracy"]) == NUM_MODULES
    np.testing.assert_allclose(result["per_module_accuracy"], expected_acc, atol=1e-6)
    np.testing.assert_allclose(result["per_module_kl"], expected_kl, rtol=1e-5)
    assert result["accuracy"] == result["per_module_accuracy"][-1]


def test_evaluate_refuses_an_empty_split(mlp_net):
    network, params = mlp_net
    with pytest.raises(ValueError, match="empty split"):
        evaluate(make_eval_step(network), params, np.zeros((0, 8, 8, 1)), np.zeros((0,), np.int32))
