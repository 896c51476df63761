"""NoProp on the shared trunk, as the SID authors ran it beside SID: each unit denoises a noisy label code.

The network is SID's shared trunk: an extractor ``z = c(x)`` and T units of
one shape, ``u_t(v, z) = MLP([v, z])``, where ``v`` is a length-N vector fed
as it is (a trunk built with ``belief_input="log"`` reads it raw). What
differs from SID is what each unit is given, what it minimises and how the
trained network predicts:

* Given: ``v_t = sqrt(a_t) * onehot(y) + sqrt(1 - a_t) * eps_t``, fresh
  Gaussian noise ``eps_t`` per unit and step, with ``a = linspace(1, 0.1, T)``
  (unit 0 sees the cleanest code, unit T-1 the noisiest). No gradient flows
  through ``v_t``.
* Minimised: ``sum_t MSE(u_t(v_t, z), onehot(y))`` on the raw outputs (the
  mean over the batch and the N classes). Unit t's parameters receive only
  their own term; the extractor receives the sum (its features are not
  stopped). The T units never read each other in training, so their
  updates are independent and vmapped.
* Prediction: ``v ~ N(0, I)``, then ``v = u_t(v, z)`` for t = T-1 down to 0;
  the class is ``argmax v``. It is random: ``Denoise`` draws ``v`` from a
  fixed key, so a trained network always predicts the same, and
  ``Denoise(draw=i)`` gives draw i for the spread over draws.

This is the simplification of NoProp-DT (Li, Teh & Pascanu 2025) in the SID
authors' code: no learned class embedding, a linear noise schedule and a
plain iteration of the units at inference.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp

from sidjax.methods._record import Method
from sidjax.network import Network, Parts, UnitInput, Variables


def noise_levels(num_units: int) -> chex.Array:
    """``a [T]``: the signal fraction of unit t's input, from 1.0 (unit 0) down to 0.1 (unit T-1)."""
    return jnp.linspace(1.0, 0.1, num_units)


def noisy_codes(labels: chex.Array, num_classes: int, num_units: int, key: chex.PRNGKey) -> chex.Array:
    """``v [T, B, N]``: every unit's noisy label code for ``labels [B]``, drawn from ``key``."""
    a = noise_levels(num_units)[:, None, None]
    eps = jax.random.normal(key, (num_units, labels.shape[0], num_classes))
    return jnp.sqrt(a) * jax.nn.one_hot(labels, num_classes) + jnp.sqrt(1.0 - a) * eps


def noise_key(key: chex.PRNGKey, network: Network) -> chex.PRNGKey:
    """The step's key of the codes' noise: beside the parts' keys (unit k: k, the stem: K)."""
    return jax.random.fold_in(key, network.num_units + 1)


def _units_on(network: Network, params, stats, z, codes, labels, key, train: bool):
    """Every unit t on ``(z, codes[t])``: ``(outputs [T, B, N], stats)``; vmapped over stacked units."""

    def one(k, p, s, v):
        (_, out), s = network.apply_unit(k, p, s, UnitInput(z, v, labels, True), key, train=train)
        return out, s

    if network.stacked:
        return jax.vmap(one)(jnp.arange(network.num_units), params, stats, codes)
    outs = [one(k, network.unit_values(params, k), network.unit_values(stats, k), codes[k])
            for k in range(network.num_units)]  # fmt: skip
    return jnp.stack([o for o, _ in outs]), network.join_units([s for _, s in outs])


def noprop_objective(network: Network):
    """``objective(params, stats, x, labels, key) -> (value, (unit_losses [T], outputs [T, B, N], stats))``.

    The sum of the T units' denoising losses; ``key`` is the step's key
    (required: the codes are drawn from it).
    """

    def objective(params: Parts, stats: Parts, x, labels, key):
        if key is None:
            raise ValueError("noprop draws its label codes' noise from the step's key: give a key")
        z, stem_stats = network.apply_stem(params.stem, stats.stem, x, key)
        codes = jax.lax.stop_gradient(
            noisy_codes(labels, network.num_classes, network.num_units, noise_key(key, network))
        )
        outputs, unit_stats = _units_on(network, params.units, stats.units, z, codes, labels, key, True)
        target = jax.nn.one_hot(labels, network.num_classes)
        losses = ((outputs - target[None]) ** 2).mean(axis=(1, 2))
        return losses.sum(), (losses, outputs, Parts(stem_stats, unit_stats))

    return objective


@dataclasses.dataclass(frozen=True)
class Denoise:
    """How a NoProp network predicts: T denoising steps from Gaussian noise drawn from a fixed key.

    Attributes:
      draw: which draw of the starting noise (``fold_in(key(0), draw)``); a
        trained network's predictions are a function of it.
    """

    draw: int = 0

    def __call__(self, network: Network, variables: Variables, x: chex.Array) -> chex.Array:
        """``[T, B, N]``: row i is ``v`` after i + 1 denoising steps (unit T-1 first); row -1 predicts."""
        params, stats = variables.params, variables.stats
        z, _ = network.apply_stem(params.stem, stats.stem, x, train=False)
        v = jax.random.normal(
            jax.random.fold_in(jax.random.key(0), self.draw), (x.shape[0], network.num_classes)
        )
        labels = jnp.zeros(x.shape[:1], jnp.int32)
        outs = []
        for t in reversed(range(network.num_units)):
            p, s = network.unit_values(params.units, t), network.unit_values(stats.units, t)
            (_, v), _ = network.apply_unit(t, p, s, UnitInput(z, v, labels, True), train=False)
            outs.append(v)
        return jnp.stack(outs)


NOPROP = Method(
    name="noprop",
    summary="NoProp (the SID authors' form): each unit denoises a noisy label code; predicts from noise",
    objective=lambda network, loss, execution: noprop_objective(network), gradients="local", modes=("trunk",),
    belief_input="log", inference=Denoise(),
)  # fmt: skip
