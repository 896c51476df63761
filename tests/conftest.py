"""Test set-up: 8 simulated CPU devices (set before jax is imported) and tiny models."""

import fcntl
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import pytest  # noqa: E402

from sidjax import make_network  # noqa: E402

NUM_CLASSES = 5
NUM_MODULES = 3
INPUT_SHAPE = (8, 8, 1)


def tiny_network(model: str = "mlp", num_modules: int = NUM_MODULES, seed: int = 0, **kwargs):
    """A small network (8x8x1 inputs, 5 classes) whose compiles take well under a second."""
    return make_network(
        model,
        INPUT_SHAPE,
        NUM_CLASSES,
        num_modules,
        jax.random.key(seed),
        feature_dim=8,
        module_hidden=16,
        tiny=True,
        **kwargs,
    )


def tiny_batch(batch: int = 16, seed: int = 1):
    kx, ky = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, (batch, *INPUT_SHAPE)), jax.random.randint(ky, (batch,), 0, NUM_CLASSES)


@pytest.fixture
def mlp_net():
    return tiny_network("mlp")


@pytest.fixture
def batch():
    return tiny_batch()


def tree_max_abs(tree) -> float:
    return max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(tree))


@pytest.fixture(scope="session")
def fashion_mnist():
    """Real Fashion-MNIST (offline from Debian's files where TFDS has not prepared it).

    A file lock keeps parallel test workers (pytest -n) from preparing it at the same time.
    """
    from sidjax.data import load_dataset

    with open(os.path.join(tempfile.gettempdir(), "sidjax-fashion-mnist.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return load_dataset("fashion_mnist")
