"""The local loss: closed-form minimisers, limits, and input validation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sidjax import (
    forward_minimiser,
    label_distribution,
    reverse_minimiser,
    sid_local_loss,
    uniform_log_belief,
)


def _minimise(divergence, alpha, prev, label, smoothing, steps=3000):
    """Minimises the per-example loss over a free logit vector (jitted Adam)."""
    tx = optax.adam(0.05)
    prev_log = jnp.log(prev)[None]
    labels = jnp.array([label])

    def loss_fn(logits):
        return sid_local_loss(
            logits[None], prev_log, labels, alpha, divergence=divergence, label_smoothing=smoothing
        )[0]

    @jax.jit
    def solve(logits):
        def body(carry, _):
            logits, opt_state = carry
            updates, opt_state = tx.update(jax.grad(loss_fn)(logits), opt_state)
            return (optax.apply_updates(logits, updates), opt_state), None

        (logits, _), _ = jax.lax.scan(body, (logits, tx.init(logits)), None, length=steps)
        return jax.nn.softmax(logits)

    return solve(jnp.zeros(prev.shape[-1]))


PREV = jnp.array([0.1, 0.5, 0.25, 0.15])


@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.8])
def test_forward_minimiser_is_arithmetic_mixture(alpha):
    found = _minimise("forward", alpha, PREV, label=2, smoothing=0.0)
    expected = forward_minimiser(alpha, jax.nn.one_hot(2, 4), PREV)
    chex.assert_trees_all_close(found, expected, atol=2e-3)


@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.8])
def test_reverse_minimiser_is_geometric_mixture(alpha):
    target = label_distribution(jnp.array([2]), 4, 0.1)[0]
    found = _minimise("reverse", alpha, PREV, label=2, smoothing=0.1)
    expected = reverse_minimiser(alpha, target, PREV)
    chex.assert_trees_all_close(found, expected, atol=2e-3)
    # and it is not the arithmetic mixture: the two forms really differ
    assert float(jnp.abs(expected - forward_minimiser(alpha, target, PREV)).max()) > 1e-2


def test_mixtures_close_the_gap_like_one_minus_alpha_to_the_depth():
    alpha, target = 0.3, jax.nn.one_hot(0, 4)
    p = jnp.full(4, 0.25)
    for depth in range(1, 6):
        p = forward_minimiser(alpha, target, p)
        gap = jnp.abs(p - target).sum()
        np.testing.assert_allclose(gap, (1 - alpha) ** depth * jnp.abs(0.25 - target).sum(), rtol=1e-5)


def test_alpha_limits():
    key1, key2 = jax.random.split(jax.random.key(0))
    logits = jax.random.normal(key1, (6, 4))
    prev = jax.nn.log_softmax(jax.random.normal(key2, (6, 4)))
    labels = jnp.arange(6) % 4
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    chex.assert_trees_all_close(sid_local_loss(logits, prev, labels, 1.0), ce, atol=1e-6)
    kl = (jnp.exp(prev) * (prev - jax.nn.log_softmax(logits))).sum(-1)
    chex.assert_trees_all_close(sid_local_loss(logits, prev, labels, 0.0), kl, atol=1e-6)
    # a module that copies its input belief has zero consistency loss
    chex.assert_trees_all_close(sid_local_loss(prev, prev, labels, 0.0), jnp.zeros(6), atol=1e-6)


def test_previous_belief_is_under_stop_gradient():
    logits = jnp.ones((2, 3))
    grad = jax.grad(lambda prev: sid_local_loss(logits, prev, jnp.array([0, 1]), 0.5).sum())(
        uniform_log_belief(2, 3) + 0.1
    )
    assert float(jnp.abs(grad).max()) == 0.0


def test_underflowed_belief_keeps_a_finite_loss():
    prev = jnp.array([[0.0, -200.0, -200.0]])  # exp(-200) underflows to 0 in float32
    loss = sid_local_loss(jnp.array([[3.0, 0.0, 0.0]]), prev, jnp.array([1]), 0.5)
    assert bool(jnp.isfinite(loss).all())


def test_reverse_without_smoothing_is_refused():
    with pytest.raises(ValueError, match="label_smoothing > 0"):
        sid_local_loss(jnp.zeros((1, 3)), uniform_log_belief(1, 3), jnp.array([0]), 0.5, divergence="reverse")


def test_unknown_divergence_is_refused():
    with pytest.raises(ValueError, match="divergence must be one of"):
        sid_local_loss(
            jnp.zeros((1, 3)), uniform_log_belief(1, 3), jnp.array([0]), 0.5, divergence="sideways"
        )
