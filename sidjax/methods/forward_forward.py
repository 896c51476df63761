"""Forward-Forward (Hinton 2022): every unit learns alone to tell real (image, label) pairs from false ones.

On a blockwise network (dense or convolutional blocks; the heads are not
used):

* Given: the image with its label embedded (the first N values of the
  flattened image replaced by the one-hot label times the image's largest
  absolute value): the true label for a *positive*, a wrong one drawn
  uniformly for its *negative*. Unit 1 (and the stem) reads the embedded
  image; unit k > 1 reads unit k-1's output normalised per example (divided
  by the root of its mean square, as Hinton's code does) and stopped, so only
  its direction passes on.
* Minimised, by each unit alone: ``softplus(theta - G(h+)) + softplus(G(h-)
  - theta)``, averaged over the positives and negatives of the batch, with
  goodness ``G(h)`` the mean of ``h**2`` over the unit's output and
  ``theta = 1``: Hinton's own rule (the sum of squares against the layer's
  width) written per feature. The widely used PyTorch port's ``theta = 2``
  on the mean learned little here (37 % after 3 epochs on 10 000
  Fashion-MNIST examples, against 75 % with ``theta = 1``).
* Prediction (``Goodness``): every label is embedded in turn (the N passes
  vectorised), and the label whose goodness summed over every unit is
  largest wins. Hinton sums every unit but the first (``skip_first``); on
  short budgets the first unit is often the only one that has learned (it
  alone was at 73 % where the others' sum was at 37 %), so sidjax counts
  it.

The training accuracy a step reports is the fraction of examples whose true
label's goodness beats the drawn wrong label's (the step sees no others).
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from sidjax.methods._record import LocalMethod
from sidjax.network import Network, UnitInput, Variables, sg
from sidjax.units import UnitSeen

THRESHOLD = 1.0
NEG = -1e9


def embed_labels(
    x: chex.Array, labels: chex.Array, num_classes: int, strength: float | None = None
) -> chex.Array:
    """``x [B, ...]`` with the first ``num_classes`` values of each flattened example replaced by its
    one-hot label times ``strength`` (None: the example's largest absolute value)."""
    flat = x.reshape(x.shape[0], -1)
    scale = jnp.max(jnp.abs(flat), axis=1, keepdims=True) if strength is None else strength
    flat = flat.at[:, :num_classes].set(jax.nn.one_hot(labels, num_classes) * scale)
    return flat.reshape(x.shape)


@dataclasses.dataclass(frozen=True)
class Embedding:
    """How a label is written into an image, in training and in prediction alike.

    Attributes:
      strength: the one-hot label's value (None: the example's largest absolute value).
      normalise: divide each example by its root mean square first (Hinton's code does).
    """

    strength: float | None = None
    normalise: bool = False

    def __call__(self, x: chex.Array, labels: chex.Array, num_classes: int) -> chex.Array:
        return embed_labels(normalised(x) if self.normalise else x, labels, num_classes, self.strength)


def wrong_labels(labels: chex.Array, num_classes: int, key: chex.PRNGKey) -> chex.Array:
    """``[B]``: for each label, another one drawn uniformly from the other ``num_classes - 1``."""
    shift = jax.random.randint(key, labels.shape, 1, num_classes)
    return (labels + shift) % num_classes


def goodness(h: chex.Array) -> chex.Array:
    """``[B]``: the mean of ``h**2`` over each example's features."""
    return jnp.mean(jnp.square(h.reshape(h.shape[0], -1)), axis=1)


def normalised(h: chex.Array) -> chex.Array:
    """Each example divided by the root of its mean square: its direction, at unit scale per feature."""
    rms = jnp.sqrt(goodness(h))
    return h / (rms.reshape((-1,) + (1,) * (h.ndim - 1)) + 1e-4)


def unit_goodness(network: Network, variables: Variables, x: chex.Array, key=None, *, train: bool):
    """Every unit's goodness on label-embedded ``x``: ``(G [K, B], stats)``; unit k>1 reads the previous
    output normalised and stopped."""
    params, stats = variables.params, variables.stats
    h, stem_stats = network.apply_stem(params.stem, stats.stem, x, key, train=train)
    belief = jnp.zeros((x.shape[0], network.num_classes))
    labels = jnp.zeros(x.shape[:1], jnp.int32)
    found, unit_stats = [], []
    for k in range(network.num_units):
        p, s = network.unit_values(params.units, k), network.unit_values(stats.units, k)
        (h, _), s = network.apply_unit(k, p, s, UnitInput(h, belief, labels), key, train=train)
        found.append(goodness(h))
        unit_stats.append(s)
        h = sg(normalised(h))
    return jnp.stack(found), stats._replace(stem=stem_stats, units=network.join_units(unit_stats))


def make_give(embed: Embedding = Embedding()):
    """``give(network, x, labels, key) -> (both [2B, ...], wrong [B])``: the positives (each image with its
    label) then the negatives (the same images with a wrong label drawn from ``fold_in(key, K + 1)``)."""

    def give(network: Network, x: chex.Array, labels: chex.Array, key) -> tuple[chex.Array, chex.Array]:
        if key is None:
            raise ValueError("ff draws its negative labels from the step's key: give a key")
        n = network.num_classes
        wrong = wrong_labels(labels, n, jax.random.fold_in(key, network.num_units + 1))
        return jnp.concatenate([embed(x, labels, n), embed(x, wrong, n)]), wrong

    return give


def hand_on_direction(network: Network, inp: UnitInput, h_out: chex.Array, logits: chex.Array) -> UnitInput:
    """The next unit reads this one's output normalised per example and stopped: its direction only."""
    return inp._replace(h=sg(normalised(h_out)))


def make_ff_loss(threshold: float = THRESHOLD):
    """Unit k's Forward-Forward loss at ``threshold`` (``unit_loss(seen) -> (loss, logits)``)."""

    def unit_loss(seen: UnitSeen) -> tuple[chex.Array, chex.Array]:
        """``softplus(theta - G(h+)) + softplus(G(h-) - theta)`` averaged over the batch's positives and negatives.

        ``logits [B, N]``: the true label's and the drawn wrong label's goodness, every other label far
        below (what the step's accuracy reads).
        """
        labels, wrong = seen.input.labels, seen.input.given
        batch = labels.shape[0]
        g = goodness(seen.output)
        positive, negative = g[:batch], g[batch:]
        value = jnp.mean(jax.nn.softplus(jnp.concatenate([threshold - positive, negative - threshold])))
        rows = jnp.arange(batch)
        logits = jnp.full((batch, seen.logits.shape[-1]), NEG)
        return value, logits.at[rows, labels].set(positive).at[rows, wrong].set(negative)

    return unit_loss


def forward_forward(
    name: str = "ff",
    threshold: float = THRESHOLD,
    skip_first: bool = False,
    embed: Embedding = Embedding(),
    summary: str = "Forward-Forward: each unit separates label-embedded positives from negatives by goodness",
) -> LocalMethod:
    """Forward-Forward as a ``LocalMethod``: ``threshold`` on the mean of squares, the prediction's sum over
    every unit (``skip_first``: every unit but the first, Hinton's rule), labels written as ``embed`` says."""
    return LocalMethod(
        name=name, summary=summary, unit_loss=make_ff_loss(threshold), give=make_give(embed),
        hand_on=hand_on_direction, modes=("blockwise",), belief_input="none", inference=Goodness(skip_first, embed),
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Goodness:
    """How a Forward-Forward network predicts: the label with the most goodness summed over the units.

    Attributes:
      skip_first: leave the first unit out of the sum (Hinton's rule).
    """

    skip_first: bool = False
    embed: Embedding = Embedding()

    def __call__(self, network: Network, variables: Variables, x: chex.Array) -> chex.Array:
        """``[K, B, N]``: row k sums units 1..k+1's goodness for every label (``skip_first``: units 2..k+1,
        row 0 unit 1's alone); row 0 is the first unit alone, row -1 predicts."""
        n = network.num_classes

        def for_label(label):
            embedded = self.embed(x, jnp.full(x.shape[:1], label), n)
            return unit_goodness(network, variables, embedded, train=False)[0]

        g = jax.vmap(for_label)(jnp.arange(n))  # [N, K, B]
        counted = g.at[:, 0].set(0.0) if self.skip_first and network.num_units > 1 else g
        return jnp.cumsum(counted, axis=1).transpose(1, 2, 0).at[0].set(g[:, 0].T)


FF = forward_forward()
# Hinton's own code (ffcode): goodness the sum of squares against the layer's width (the mean against 1),
# each example normalised to unit root mean square with its label at strength 1, the prediction summed over
# every unit but the first. Its hardest-negative sampling is not built: negatives are drawn uniformly.
FF_HINTON = forward_forward("ff_hinton", 1.0, skip_first=True, embed=Embedding(strength=1.0, normalise=True),
                            summary="Forward-Forward with Hinton's own settings (normalised input, label at "
                            "strength 1, the first unit left out of the prediction)")  # fmt: skip
