"""What a training method is, and the rules of what it can train how: one table, one home per rule.

A method is a ``Method`` record of behaviour: what each unit of the network
(a stem and K units) is given and minimises (its ``objective``), where
gradients may flow, what it changes in the network (``prepare``) and how the
trained network predicts (``inference``). The built-in ones:

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
* ``fa`` / ``dfa``: feedback alignment (Lillicrap et al. 2016) and direct
  feedback alignment (Noekland 2016) (``sidjax.feedback``).
* ``ff``: Forward-Forward (Hinton 2022) (``sidjax.forward_forward``).
* ``hsic``: the HSIC bottleneck (Ma, Lewis & Kleijn 2020) (``sidjax.hsic``).
* ``readout``: a fresh linear read-out on the last unit of a frozen network
  (``sidjax.readout``): the HSIC bottleneck's post-training, or a linear
  probe, started from a trained run with ``init_from``.

Your own rule is a ``Method`` too: ``register_method`` it, or name it as
``"module:attribute"`` wherever a method's name is taken.

The rules below are the only place each is checked and worded; the
configuration calls them with its settings, ``sidjax.make_learner`` with
the network it is given. Each raises ``ConfigError`` naming the setting.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import chex

from sidjax.errors import ConfigError
from sidjax.feedback import dfa_objective, direct_feedback, feedback_alignment
from sidjax.forward_forward import Goodness, ff_objective
from sidjax.hsic import hsic_objective, probe_heads
from sidjax.losses import SIDLoss
from sidjax.network import Network, Variables
from sidjax.noprop import Denoise, noprop_objective
from sidjax.objectives import bp_objective, local_objective
from sidjax.readout import fresh_readout, readout_objective

MODES: tuple[str, ...] = ("trunk", "blockwise")
EXECUTIONS: tuple[str, ...] = ("auto", "vmap", "fused", "sequential")
# "auto" execution of a local method, chosen from measurements (experiments/bench_memory.py,
# experiments/bench_step.py; numbers in RESULTS.md): the shared trunk vmaps its stacked units, as
# fast as BP's step; blockwise networks walk their units in one program, the mode with a memory
# saving. Same choice on every backend until an accelerator measurement says otherwise
# (experiments/device_check.sh measures all three there).
AUTO_EXECUTION: dict[str, str] = {"trunk": "vmap", "blockwise": "sequential"}


Objective = Callable[..., tuple[chex.Array, tuple[chex.Array, chex.Array, Any]]]
ObjectiveFactory = Callable[[Network, SIDLoss, str], Objective]
Prepare = Callable[[Network, Variables, chex.PRNGKey], tuple[Network, Variables]]
GRADIENTS: tuple[str, ...] = ("local", "global", "feedback")


@dataclasses.dataclass(frozen=True)
class Method:
    """One training method as a record of behaviour: what its units are given and minimise, where
    gradients flow, how the trained network predicts.

    Attributes:
      name: its key in ``METHODS``.
      summary: one line for ``--help``.
      objective: ``objective(network, loss, execution) -> fn`` with ``fn(params,
        stats, x [B, ...], labels [B], key) -> (value, (unit_losses [K],
        logits [K, B, N], stats))``: the one differentiable function a step
        takes the gradient of. It builds what every unit is given (a belief, a
        noisy label code, a label-embedded image, ...) and what each minimises;
        ``logits`` are what the step reports accuracy from; ``stats`` the
        stats after the forward pass. ``loss`` is the run's ``SIDLoss``,
        ``execution`` a resolved execution (only SID's objectives read it).
      gradients: where gradients may flow: ``"local"`` (no gradient crosses a
        unit boundary), ``"global"`` (end-to-end backprop) or ``"feedback"``
        (an error reaches each layer through fixed random matrices).
      modes: the network kinds it trains: ``"trunk"`` and/or ``"blockwise"``.
      belief_input: its units read the previous unit's belief (False: heads
        without belief input, as DGL, FF and HSIC need); or the modes in which
        they do (DFA's ``("trunk",)``).
      unit_input: how units read their second input by default when it is not
        a belief (NoProp's raw code: ``"log"``); None: from ``belief_input``.
      inference: how the trained network predicts, ``inference(network,
        variables, x) -> [K, B, N]`` (row -1 predicts), set on the network as
        ``Network.inference``; None: the chain of beliefs.
      prepare: ``prepare(network, variables, key) -> (network, variables)``:
        what the method changes in a network before training (FA's fixed
        feedback, drawn from ``key``, the seed's); None: nothing.
      sid_units: its units minimise SID's local loss (``SIDLoss.unit_loss``),
        so the unit walk, the pipelined schedule and stages can run it.
      alpha: a fixed fidelity weight (DGL's 1.0), or None to use the run's.
      remat: rematerialise every unit in the backward pass (``bp_remat``).
    """

    name: str
    summary: str
    objective: ObjectiveFactory
    gradients: str = "local"
    modes: tuple[str, ...] = MODES
    belief_input: bool | tuple[str, ...] = True
    unit_input: str | None = None
    inference: Callable | None = None
    prepare: Prepare | None = None
    sid_units: bool = False
    alpha: float | None = None
    remat: bool = False

    def __post_init__(self):
        if self.gradients not in GRADIENTS:
            raise ConfigError(
                f"method {self.name!r}: gradients must be one of {GRADIENTS}, got {self.gradients!r}"
            )
        if not callable(self.objective):
            raise ConfigError(
                f"method {self.name!r}: objective must be objective(network, loss, execution) -> fn"
            )

    @property
    def local(self) -> bool:
        """Each unit minimises its own loss and no gradient crosses a unit boundary."""
        return self.gradients == "local"

    def reads_belief(self, mode: str) -> bool:
        """Its units read the previous unit's belief in networks of this mode."""
        return mode in self.belief_input if isinstance(self.belief_input, tuple) else bool(self.belief_input)

    def default_belief_input(self, mode: str) -> str:
        """The ``belief_input`` a network of this mode is built with for this method unless one is given."""
        return self.unit_input or ("prob" if self.reads_belief(mode) else "none")

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

    def make_objective(self, network: Network, loss: SIDLoss, execution: str = "fused") -> Objective:
        """The step's differentiable objective for ``network`` (see ``objective``)."""
        return self.objective(network, self.loss(loss), execution)

    def adapt(self, network: Network, variables: Variables, key: chex.PRNGKey) -> tuple[Network, Variables]:
        """``network`` and ``variables`` as this method trains and predicts them (``prepare``, then ``inference``)."""
        if self.prepare is not None:
            network, variables = self.prepare(network, variables, key)
        network = dataclasses.replace(network, inference=self.inference, method=self.name)
        return network, variables


def _sid(network, loss, execution):
    return local_objective(network, loss, execution)


def _bp(network, loss, execution):
    return bp_objective(network, loss)


def _bp_remat(network, loss, execution):
    return bp_objective(network, loss, remat=True)


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Adds your own method to ``METHODS`` (so ``run``, the CLI and ``load_run`` find it by name); returns it."""
    if not isinstance(method, Method):
        raise ConfigError(f"register_method takes a sidjax.Method, got {type(method).__name__}", "method")
    METHODS[method.name] = method
    return method


for _method in (
    Method("sid", "local SID losses, no gradient between units", _sid, sid_units=True),
    Method("dgl", "greedy local learning: alpha = 1, heads without belief input", _sid, belief_input=False,
           alpha=1.0, modes=("blockwise",), sid_units=True),
    Method("bp", "end-to-end backprop of the last unit's cross-entropy", _bp, gradients="global"),
    Method("bp_remat", "bp with jax.checkpoint at every unit boundary", _bp_remat, gradients="global",
           remat=True),
    Method("noprop", "NoProp (the SID authors' form): each unit denoises a noisy label code; predicts from noise",
           lambda network, loss, execution: noprop_objective(network), modes=("trunk",), unit_input="log",
           inference=Denoise()),
    Method("fa", "feedback alignment: backprop of the last unit's cross-entropy, errors through fixed random "
           "matrices", _bp, gradients="feedback", prepare=feedback_alignment),
    Method("dfa", "direct feedback alignment: the output error reaches every layer through its own fixed random "
           "matrix", dfa_objective, gradients="feedback", belief_input=("trunk",), prepare=direct_feedback),
    Method("ff", "Forward-Forward: each unit separates label-embedded positives from negatives by goodness",
           ff_objective, modes=("blockwise",), belief_input=False, inference=Goodness()),
    Method("hsic", "HSIC bottleneck: each unit keeps little of the input and much of the label; read-out heads",
           hsic_objective, modes=("blockwise",), belief_input=False, prepare=probe_heads),
    Method("readout", "a fresh linear read-out on the last unit of a trained network (start from its run), every "
           "other parameter frozen", readout_objective, prepare=fresh_readout),
):  # fmt: skip
    register_method(_method)


def get_method(name: str | Method) -> Method:
    """The method called ``name``, a ``Method`` itself, or ``"module:attribute"`` naming a ``Method``
    (imported and registered); ``ConfigError`` listing the known ones."""
    if isinstance(name, Method):
        return name
    if isinstance(name, str) and ":" in name and name not in METHODS:
        return register_method(_imported(name))
    if name not in METHODS:
        raise ConfigError(
            f"method must be one of {tuple(METHODS)} or 'module:attribute' of your own sidjax.Method, got {name!r}",
            "method",
        )
    return METHODS[name]


def _imported(path: str) -> Method:
    module, _, attribute = path.partition(":")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"method {path!r}: cannot import it ({e})", "method") from None
    if not isinstance(found, Method):
        raise ConfigError(f"method {path!r} is a {type(found).__name__}, not a sidjax.Method", "method")
    return dataclasses.replace(found, name=path)


def check_adapted(spec: Method, network: Network) -> None:
    """A method that changes the network or how it predicts is given the network its ``adapt`` returned."""
    if (spec.prepare is not None or spec.inference is not None) and network.method != spec.name:
        raise ConfigError(
            f"method {spec.name!r} trains the network its adapt returns: network, variables = "
            f"sidjax.METHODS[{spec.name!r}].adapt(network, variables, key)",
            "method",
        )


def check_mode(spec: Method, mode: str) -> None:
    """The method trains networks of this kind (``"trunk"`` or ``"blockwise"``)."""
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}", "mode")
    if mode not in spec.modes:
        raise ConfigError(
            f"method {spec.name!r} trains {' or '.join(spec.modes)} networks, not {mode!r}: "
            f"use mode {spec.modes[0]!r}",
            "method",
        )


def check_belief_input(spec: Method, mode: str, reads_belief: bool, belief_input: str | None = None) -> None:
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
    if reads_belief and not spec.reads_belief(mode):
        raise ConfigError(
            f"method {spec.name!r} needs heads without belief input: belief_input 'none' "
            "(sidjax.make_blockwise_network(..., belief_input='none'))",
            "belief_input",
        )


def check_pipelined(spec: Method, mode: str) -> None:
    """The pipelined schedule needs blockwise units that each learn alone."""
    if not (spec.sid_units and mode == "blockwise"):
        raise ConfigError(
            "pipelined needs mode blockwise and a method whose units minimise SID's loss (sid or dgl): "
            "a shared trunk or backprop has a backward pass across units",
            "pipelined",
        )


def check_stages(spec: Method, mode: str) -> None:
    """Units in stages (one program each) need blockwise units that each learn alone."""
    if not (spec.sid_units and mode == "blockwise"):
        raise ConfigError(
            "placement stages needs mode blockwise and a method whose units minimise SID's loss (sid or dgl): "
            "a shared trunk or backprop has one backward pass across units; use a mesh",
            "placement",
        )


def resolve_execution(spec: Method, mode: str, execution: str, stacked: bool | None = None) -> str:
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
    if not spec.sid_units:
        return "fused"  # one objective, one gradient: backprop and every method that is not SID's loss
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
    spec: Method,
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
    check_belief_input(spec, mode, reads_belief, belief_input)
    if pipelined:
        check_pipelined(spec, mode)
    if stages:
        check_stages(spec, mode)
    return resolve_execution(spec, mode, execution, stacked)
