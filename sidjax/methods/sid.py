"""SID and greedy local learning (DGL): each unit's loss is SID's local loss (``sidjax.losses``).

* ``sid``: unit k minimises ``alpha CE(y, p_k) + (1 - alpha) KL(sg(p_{k-1}) ||
  p_k)`` (or the paper's reverse form); no gradient crosses from one unit to
  the next (``docs/method.md``).
* ``dgl``: greedy local learning (Belilovsky et al. 2020): the same loss at
  alpha = 1 (each head's cross-entropy) and heads that read no belief.
  Blockwise only.
"""

from __future__ import annotations

import chex

from sidjax.losses import SIDLoss
from sidjax.methods._record import LocalMethod
from sidjax.network import Network, Parts, Variables
from sidjax.units import UnitSeen
from sidjax.units import local_losses as _local_losses


def sid_unit_loss(seen: UnitSeen) -> tuple[chex.Array, chex.Array]:
    """Unit k's SID loss: the run's ``SIDLoss`` at the unit's alpha, on its logits and stopped belief input."""
    return seen.loss.unit_loss(seen.logits, seen.input.log_belief, seen.input.labels, seen.alpha), seen.logits


SID = LocalMethod(name="sid", summary="local SID losses, no gradient between units", unit_loss=sid_unit_loss,
                  uses_alpha=True)  # fmt: skip
DGL = LocalMethod(name="dgl", summary="greedy local learning: alpha = 1, heads without belief input",
                  unit_loss=sid_unit_loss, uses_alpha=True, alpha=1.0, belief_input="none",
                  modes=("blockwise",))  # fmt: skip


def local_losses(
    network: Network,
    variables: Variables,
    x: chex.Array,
    labels: chex.Array,
    loss: SIDLoss,
    *,
    key: chex.PRNGKey | None = None,
    execution: str = "vmap",
) -> tuple[chex.Array, chex.Array, Parts]:
    """All K local SID losses of the synchronous schedule in one differentiable function.

    Args:
      network, variables: the model.
      x: ``[B, ...]``; labels: ``[B]``.
      loss: local-loss hyperparameters (``docs/method.md``, equation 1).
      key: the step's key (for dropout), or None.
      execution: ``"vmap"`` (two-phase; stacked units) or ``"fused"``.

    Returns:
      ``(losses [K], logits [K, B, N], stats)``; ``losses[k]`` is unit k's
      batch mean, ``stats`` the variables' stats after this forward pass.
    """
    return _local_losses(network, SID, variables, x, labels, loss, key=key, execution=execution)
