"""What a training method is, and the rules of what it can train how: one table, one home per rule.

Every method trains the same network (a stem and K units); they differ in
which loss each part minimises and where gradients may flow:

* ``sid``: every unit minimises its own local SID loss; no gradient crosses
  from one unit to the next (``docs/method.md``).
* ``dgl``: greedy local learning (Belilovsky et al. 2020): SID with alpha = 1
  and heads that do not read the previous belief. Blockwise only.
* ``bp``: end-to-end backprop of the last unit's cross-entropy.
* ``bp_remat``: ``bp`` with ``jax.checkpoint`` at every unit boundary (less
  memory, one extra forward pass).
* ``noprop``: NoProp as the SID authors ran it (``sidjax.noprop``): each unit
  of a shared trunk denoises its own noisy label code; prediction iterates
  the units from Gaussian noise. Trunk only.

The rules below are the only place each is checked and worded; the
configuration calls them with its settings, ``sidjax.make_learner`` with
the network it is given. Each raises ``ConfigError`` naming the setting.
"""

from __future__ import annotations

import dataclasses

from sidjax.errors import ConfigError
from sidjax.losses import SIDLoss

MODES: tuple[str, ...] = ("trunk", "blockwise")
EXECUTIONS: tuple[str, ...] = ("auto", "vmap", "fused", "sequential")
# "auto" execution of a local method, chosen from measurements (experiments/bench_memory.py,
# experiments/bench_step.py; numbers in RESULTS.md): the shared trunk vmaps its stacked units, as
# fast as BP's step; blockwise networks walk their units in one program, the mode with a memory
# saving. Same choice on every backend until an accelerator measurement says otherwise
# (experiments/device_check.sh measures all three there).
AUTO_EXECUTION: dict[str, str] = {"trunk": "vmap", "blockwise": "sequential"}


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
      objective: what each unit is given and minimises: ``"belief"`` (the
        previous unit's belief; SID's loss, or BP's cross-entropy of the last
        unit) or ``"noprop"`` (a noisy label code; the denoising loss).
      unit_input: how units read their second input by default
        (``belief_input``): ``"prob"``, ``"log"`` (as it is) or ``"none"``.
    """

    name: str
    local: bool
    belief_input: bool = True
    alpha: float | None = None
    remat: bool = False
    modes: tuple[str, ...] = MODES
    summary: str = ""
    objective: str = "belief"
    unit_input: str | None = None

    @property
    def default_belief_input(self) -> str:
        """The ``belief_input`` a network for this method is built with unless one is given."""
        return self.unit_input or ("prob" if self.belief_input else "none")

    @property
    def uses_alpha(self) -> bool:
        """Its units minimise SID's loss, weighted by alpha."""
        return self.local and self.objective == "belief"

    def loss(self, loss: SIDLoss) -> SIDLoss:
        """The local loss this method trains with: DGL's alpha is 1 (forward only); BP uses the smoothing."""
        if self.alpha is None:
            return loss
        if loss.divergence != "forward":
            raise ConfigError(
                f"method {self.name!r} trains the cross-entropy of each head (alpha = {self.alpha:g}): "
                f"divergence must be 'forward', got {loss.divergence!r}",
                "divergence",
            )
        return SIDLoss(self.alpha, "forward", loss.label_smoothing)


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
    "noprop": MethodSpec(
        "noprop",
        local=True,
        modes=("trunk",),
        objective="noprop",
        unit_input="log",
        summary="NoProp (the SID authors' form): each unit denoises a noisy label code; predicts from noise",
    ),
}


def get_method(name: str) -> MethodSpec:
    """The method called ``name`` (``ConfigError`` listing the known ones)."""
    if name not in METHODS:
        raise ConfigError(f"method must be one of {tuple(METHODS)}, got {name!r}", "method")
    return METHODS[name]


def check_mode(spec: MethodSpec, mode: str) -> None:
    """The method trains networks of this kind (``"trunk"`` or ``"blockwise"``)."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}", "mode")
    if mode not in spec.modes:
        raise ConfigError(
            f"method {spec.name!r} trains {' or '.join(spec.modes)} networks, not {mode!r}: "
            f"use mode {spec.modes[0]!r}",
            "method",
        )


def check_belief_input(spec: MethodSpec, reads_belief: bool, belief_input: str | None = None) -> None:
    """A method whose heads read no belief (DGL) is not given heads that do; NoProp's units read their
    label code as it is (``belief_input`` ``"log"``, where the setting is known)."""
    if spec.unit_input is not None and belief_input not in (None, spec.unit_input):
        raise ConfigError(
            f"method {spec.name!r} feeds each unit a vector it reads as it is: belief_input must be "
            f"{spec.unit_input!r} (or left unset), got {belief_input!r}",
            "belief_input",
        )
    if spec.unit_input is not None and not reads_belief:
        raise ConfigError(f"method {spec.name!r} needs units that read their second input", "belief_input")
    if reads_belief and not spec.belief_input:
        raise ConfigError(
            f"method {spec.name!r} needs heads without belief input: belief_input 'none' "
            "(sidjax.make_blockwise_network(..., belief_input='none'))",
            "belief_input",
        )


def check_pipelined(spec: MethodSpec, mode: str) -> None:
    """The pipelined schedule needs blockwise units that each learn alone."""
    if not (spec.local and mode == "blockwise"):
        raise ConfigError(
            "pipelined needs mode blockwise and a local method (sid or dgl): "
            "a shared trunk or backprop has a backward pass across units",
            "pipelined",
        )


def check_stages(spec: MethodSpec, mode: str) -> None:
    """Units in stages (one program each) need blockwise units that each learn alone."""
    if not (spec.local and mode == "blockwise"):
        raise ConfigError(
            "placement stages needs mode blockwise and a local method (sid or dgl): "
            "a shared trunk or backprop has one backward pass across units; use a mesh",
            "placement",
        )


def resolve_execution(spec: MethodSpec, mode: str, execution: str, stacked: bool | None = None) -> str:
    """The execution a local step uses: ``"auto"`` from ``AUTO_EXECUTION``; backprop is ``"fused"``.

    ``stacked`` is whether the units are identical (unknown before the network
    is built: None skips that rule).
    """
    if execution not in EXECUTIONS:
        raise ConfigError(f"execution must be one of {EXECUTIONS}, got {execution!r}", "execution")
    if execution == "sequential" and mode != "blockwise":
        raise ConfigError(
            "execution 'sequential' needs mode blockwise: in the shared trunk every module's "
            "gradient reaches the extractor; use 'vmap' or 'fused'",
            "execution",
        )
    if not spec.local:
        return "fused"  # backprop has a single global loss
    if execution == "auto":
        execution = AUTO_EXECUTION[mode]
        return "fused" if execution == "vmap" and stacked is False else execution
    if execution == "vmap" and stacked is False:
        raise ConfigError(
            "execution 'vmap' needs identical (stacked) units; this network's blocks differ in structure: "
            "use 'fused' or 'sequential'",
            "execution",
        )
    return execution


def check_training(
    spec: MethodSpec,
    mode: str,
    *,
    reads_belief: bool,
    execution: str,
    pipelined: bool = False,
    stages: bool = False,
    stacked: bool | None = None,
    belief_input: str | None = None,
) -> str:
    """Every rule above for one way of training: the configuration calls it with its settings,
    ``sidjax.make_learner`` with the network's. Returns the execution a local step uses."""
    check_mode(spec, mode)
    check_belief_input(spec, reads_belief, belief_input)
    if pipelined:
        check_pipelined(spec, mode)
    if stages:
        check_stages(spec, mode)
    return resolve_execution(spec, mode, execution, stacked)
