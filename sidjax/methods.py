"""What a training method is: one table, read wherever a method matters.

Every method trains the same network (a stem and K units); they differ in
which loss each part minimises and where gradients may flow:

* ``sid``: every unit minimises its own local SID loss; no gradient crosses
  from one unit to the next (``docs/method.md``).
* ``dgl``: greedy local learning (Belilovsky et al. 2020): SID with alpha = 1
  and heads that do not read the previous belief. Blockwise only.
* ``bp``: end-to-end backprop of the last unit's cross-entropy.
* ``bp_remat``: ``bp`` with ``jax.checkpoint`` at every unit boundary (less
  memory, one extra forward pass).
"""

from __future__ import annotations

import dataclasses

from sidjax.errors import ConfigError
from sidjax.losses import SIDLoss


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One training method.

    Attributes:
      name: its key in ``METHODS``.
      local: each unit minimises its own local loss (SID, DGL); False for one
        global loss (BP), which cannot be split into per-unit programs.
      belief_input: heads read the previous unit's belief.
      alpha: a fixed fidelity weight (DGL's 1.0), or None to use the config's.
      remat: rematerialise every unit in the backward pass (BP only).
      modes: the network kinds it trains: ``"trunk"`` and/or ``"blockwise"``.
      summary: one line for ``--help``.
    """

    name: str
    local: bool
    belief_input: bool = True
    alpha: float | None = None
    remat: bool = False
    modes: tuple[str, ...] = ("trunk", "blockwise")
    summary: str = ""

    def loss(self, loss: SIDLoss) -> SIDLoss:
        """The local loss this method trains with (DGL overrides alpha; BP uses only the smoothing)."""
        if self.alpha is None:
            return loss
        return SIDLoss(self.alpha, "forward", loss.label_smoothing)

    def check_mode(self, mode: str) -> None:
        if mode not in self.modes:
            raise ConfigError(
                f"method {self.name!r} trains {' or '.join(self.modes)} networks, not {mode!r}: "
                f"use mode {self.modes[0]!r}",
                "method",
            )


METHODS: dict[str, MethodSpec] = {
    "sid": MethodSpec("sid", local=True, summary="local SID losses, no gradient between units"),
    "dgl": MethodSpec(
        "dgl",
        local=True,
        belief_input=False,
        alpha=1.0,
        modes=("blockwise",),
        summary="greedy local learning: alpha = 1, heads without belief input",
    ),
    "bp": MethodSpec("bp", local=False, summary="end-to-end backprop of the last unit's cross-entropy"),
    "bp_remat": MethodSpec(
        "bp_remat", local=False, remat=True, summary="bp with jax.checkpoint at every unit boundary"
    ),
}


def get_method(name: str) -> MethodSpec:
    """The method called ``name`` (``ConfigError`` listing the known ones)."""
    if name not in METHODS:
        raise ConfigError(f"method must be one of {tuple(METHODS)}, got {name!r}", "method")
    return METHODS[name]
