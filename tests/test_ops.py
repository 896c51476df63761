"""Convolution implementations agree; the reshape max-pool equals reduce_window."""

import chex
import jax
import jax.numpy as jnp
import pytest

from sidjax.ops import conv2d, max_pool


@pytest.mark.parametrize("cin,cout,k", [(1, 4, 3), (3, 5, 3), (4, 2, 5)])
def test_shifted_conv_matches_xla_values_and_gradients(cin, cout, k):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (2, 7, 6, cin))
    w = jax.random.normal(kw, (k, k, cin, cout))
    g = jax.random.normal(kg, (2, 7, 6, cout))

    def objective(impl):
        return jax.jit(jax.value_and_grad(lambda x, w: (conv2d(x, w, impl) * g).sum(), argnums=(0, 1)))

    chex.assert_trees_all_close(objective("shifted")(x, w), objective("xla")(x, w), rtol=1e-5, atol=1e-4)


def test_unknown_conv_impl_is_refused():
    with pytest.raises(ValueError, match="conv_impl must be one of"):
        conv2d(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), "fast")


def test_max_pool_matches_reduce_window_and_its_gradient():
    x = jax.random.normal(jax.random.key(1), (2, 7, 6, 3))  # odd height: last row dropped

    def reference(x):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    chex.assert_trees_all_close(max_pool(x), reference(x))
    chex.assert_trees_all_close(
        jax.grad(lambda x: (max_pool(x) ** 2).sum())(x), jax.grad(lambda x: (reference(x) ** 2).sum())(x)
    )
