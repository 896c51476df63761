"""LeNet as biotorch benchmarks it on (Fashion-)MNIST, for checking FA and DFA against their published figures.

Three 5x5 convolutions (6, 16, 120 channels; ReLU; 2x2 max-pooling after the
first two), then ``Linear(120 -> 84)`` and ``Linear(84 -> N)`` with nothing
in between, as in biotorch's ``LeNetMNIST``. biotorch resizes the 28x28
images to 32x32; here the first convolution pads by 2 instead (the classic
LeNet-5 way to the same 28x28 first feature map). One unit: the whole
network, its two linear layers the head.
"""

from __future__ import annotations

import jax
from flax import nnx

import sidjax
from sidjax.methods.readout import freeze


class Features(nnx.Module):
    """``[B, 28, 28, 1] -> [B, 120]``."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 6, (5, 5), padding=2, rngs=rngs)
        self.conv2 = nnx.Conv(6, 16, (5, 5), padding="VALID", rngs=rngs)
        self.conv3 = nnx.Conv(16, 120, (5, 5), padding="VALID", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        pool = lambda h: nnx.max_pool(h, (2, 2), strides=(2, 2))  # noqa: E731
        h = pool(nnx.relu(self.conv1(x)))
        h = pool(nnx.relu(self.conv2(h)))
        return nnx.relu(self.conv3(h)).reshape(x.shape[0], -1)


class Classifier(nnx.Module):
    """``Linear(120 -> 84)`` then ``Linear(84 -> N)``; reads no belief."""

    def __init__(self, num_classes: int, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(120, 84, rngs=rngs)
        self.fc2 = nnx.Linear(84, num_classes, rngs=rngs)

    def __call__(self, h: jax.Array, log_belief: jax.Array) -> jax.Array:
        del log_belief
        return self.fc2(self.fc1(h))


def lenet(
    key: jax.Array, num_classes: int = 10, random_convolutions: bool = False
) -> tuple[sidjax.Network, sidjax.Variables]:
    """LeNet on 28x28x1 images as one blockwise unit (``sidjax.run(config, model=lenet)``).

    ``random_convolutions``: the convolutions keep their initialisation (``Frozen``, so no optimizer or weight
    decay moves them) and only the two dense layers learn: what a learning rule gets from LeNet if its
    convolutions learn nothing. The same key gives the same initial network either way."""
    rngs = nnx.Rngs(key)
    features = Features(rngs)
    if random_convolutions:
        freeze(features)
    return sidjax.blockwise([features], num_classes=num_classes, input_shape=(28, 28, 1), rngs=rngs,
                            heads=[Classifier(num_classes, rngs)], belief_input="none",
                            name="lenet_random_convolutions" if random_convolutions else "lenet")  # fmt: skip


def lenet_random_convolutions(
    key: jax.Array, num_classes: int = 10
) -> tuple[sidjax.Network, sidjax.Variables]:
    """LeNet whose convolutions stay as initialised; only its dense layers learn (``lenet``)."""
    return lenet(key, num_classes, random_convolutions=True)
