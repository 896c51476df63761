"""What a training method is, and the rules of what it can train how: one home per rule.

A method is a record of pure functions, as an optax transformation is:

* ``Method``: one objective over the whole network, one gradient (backprop,
  feedback alignment, NoProp, a read-out). It runs as one program
  (execution ``"fused"``).
* ``LocalMethod`` (a ``Method``): a loss per unit (``unit_loss``), computed
  from what that unit sees (``sidjax.units.UnitSeen``); no gradient crosses
  a unit boundary. Every execution (``"vmap"``, ``"fused"``,
  ``"sequential"``), the pipelined schedule, stages and meshes call that one
  function, for SID, DGL, Forward-Forward, the HSIC bottleneck and your rule.

The rules below are the only place each is checked and worded; the
configuration calls them with its settings, ``sidjax.make_learner`` with
the network it is given. Each raises ``ConfigError`` naming the setting and
what the method can run instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import chex

from sidjax.errors import ConfigError
from sidjax.heads import check_belief_input as _one_of_belief_inputs
from sidjax.losses import SIDLoss
from sidjax.network import Network, UnitInput, Variables
from sidjax.units import UnitSeen, local_objective

MODES: tuple[str, ...] = ("trunk", "blockwise")
EXECUTIONS: tuple[str, ...] = ("auto", "vmap", "fused", "sequential")
# "auto" execution of a local method, chosen from measurements (experiments/bench_memory.py,
# experiments/bench_step.py; numbers in RESULTS.md): the shared trunk vmaps its stacked units, as
# fast as BP's step; blockwise networks walk their units in one program, the mode with a memory
# saving. Same choice on every backend until an accelerator measurement says otherwise
# (experiments/device_check.sh measures all three there).
AUTO_EXECUTION: dict[str, str] = {"trunk": "vmap", "blockwise": "sequential"}
GRADIENTS: tuple[str, ...] = ("local", "global")

Objective = Callable[..., tuple[chex.Array, tuple[chex.Array, chex.Array, Any]]]
ObjectiveFactory = Callable[[Network, SIDLoss, str], Objective]
Prepare = Callable[[Network, Variables, chex.PRNGKey], tuple[Network, Variables]]
UnitLoss = Callable[[UnitSeen], tuple[chex.Array, chex.Array]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Method:
    """A training method with one objective over the whole network (``docs/methods.md``).

    Attributes:
      name: its key in ``METHODS``.
      summary: one line for ``--help``.
      objective: ``objective(network, loss, execution) -> fn`` with
        ``fn(params, stats, x [B, ...], labels [B], key) -> (value,
        (unit_losses [K], logits [K, B, N], stats))``: the one differentiable
        function a step takes the gradient of. ``logits`` are what the step
        reports accuracy from, ``stats`` the stats after the forward pass;
        ``loss`` is the run's ``SIDLoss``.
      gradients: ``"global"`` (its gradient may cross unit boundaries:
        backprop, feedback alignment) or ``"local"`` (you declare that no
        gradient crosses one; ``sidjax.check_method`` tests it).
      modes: the network kinds it trains: ``"trunk"`` and/or ``"blockwise"``.
      belief_input: how its units read the previous belief (``"prob"``,
        ``"log"`` or ``"none"``), for every mode or per mode (``{"trunk":
        "prob", "blockwise": "none"}``). ``"prob"``: a network built for it
        reads probabilities, and a network that reads the belief otherwise
        (or not at all) is accepted; ``"log"`` or ``"none"``: its units must
        read exactly that (NoProp feeds a raw code, DGL's heads read none).
      inference: how the trained network predicts, ``inference(network,
        variables, x) -> [K, B, N]`` (row -1 predicts), set on the network as
        ``Network.inference``; None: the chain of beliefs.
      prepare: ``prepare(network, variables, key) -> (network, variables)``:
        what the method changes in a network before training (FA's fixed
        feedback, drawn from ``key``, the seed's); None: nothing.
      alpha: a fixed fidelity weight that replaces the run's (DGL's 1.0), or
        None to use the run's.
      uses_alpha: its loss reads alpha (the run's ``SIDLoss.alpha``; a local
        rule's ``seen.alpha``): the run records alpha only then.
      default_lr: the learning rate a run of it takes where none is given
        (``TrainConfig.lr`` None): one its defaults learn with on Fashion-MNIST
        (``docs/methods.md`` gives the budget).
    """

    name: str
    summary: str
    objective: ObjectiveFactory | None = None
    gradients: str = "global"
    modes: tuple[str, ...] = MODES
    belief_input: str | Mapping[str, str] = "prob"
    inference: Callable | None = None
    prepare: Prepare | None = None
    alpha: float | None = None
    uses_alpha: bool = False
    default_lr: float = 1e-3

    def __post_init__(self):
        if self.gradients not in GRADIENTS:
            raise ConfigError(
                f"method {self.name!r}: gradients must be one of {GRADIENTS}, got {self.gradients!r}"
            )
        if not (self.modes and set(self.modes) <= set(MODES)):
            raise ConfigError(f"method {self.name!r}: modes must be some of {MODES}, got {self.modes!r}")
        given = self.belief_input
        values = dict.fromkeys(self.modes, given) if isinstance(given, str) else dict(given)
        if set(values) != set(self.modes):
            raise ConfigError(
                f"method {self.name!r}: belief_input per mode needs exactly its modes {self.modes}, got {given!r}"
            )
        for value in values.values():
            _one_of_belief_inputs(value)
        object.__setattr__(self, "belief_input", values)  # one form: mode -> one of BELIEF_INPUTS
        self._check_own()

    def _check_own(self) -> None:
        if not callable(self.objective):
            raise ConfigError(
                f"method {self.name!r}: objective must be objective(network, loss, execution) -> fn "
                "(a loss per unit: sidjax.LocalMethod(unit_loss=...))"
            )

    @property
    def local(self) -> bool:
        """Each unit minimises its own loss and no gradient crosses a unit boundary."""
        return self.gradients == "local"

    @property
    def executions(self) -> tuple[str, ...]:
        """The executions it can run: one objective, one program."""
        return ("fused",)

    def reads_belief(self, mode: str) -> bool:
        """Its units read the previous unit's belief in networks of this mode."""
        return self.default_belief_input(mode) != "none"

    def default_belief_input(self, mode: str) -> str:
        """The ``belief_input`` a network of this mode is built with for this method unless one is given
        (for a mode it does not train, its first mode's: ``check_mode`` refuses that mode)."""
        return self.belief_input.get(mode, self.belief_input[self.modes[0]])

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

    def identity(self) -> dict[str, Any]:
        """What names this rule in a run's record: its name, and for every function it holds its
        ``module:qualname``, with one fingerprint of their code (and closed-over values) and its settings."""
        functions = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                     if callable(getattr(self, f.name)) and f.name != "name"}  # fmt: skip
        settings = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in functions
        }
        code = hashlib.sha256(repr(sorted((k, _code_of(fn)) for k, fn in functions.items())).encode())
        code.update(
            repr(sorted((k, repr(v)) for k, v in settings.items() if k not in ("name", "summary"))).encode()
        )
        return {"name": self.name, "functions": {k: _qualname(fn) for k, fn in functions.items()},
                "fingerprint": code.hexdigest()[:16]}  # fmt: skip

    def adapt(self, network: Network, variables: Variables, key: chex.PRNGKey) -> tuple[Network, Variables]:
        """``network`` and ``variables`` as this method trains and predicts them (``prepare``, then ``inference``)."""
        if self.prepare is not None:
            network, variables = self.prepare(network, variables, key)
        network = dataclasses.replace(network, inference=self.inference, method=self.name)
        return network, variables


def _qualname(fn: Any) -> str:
    fn = fn if hasattr(fn, "__qualname__") else type(fn)
    return f"{getattr(fn, '__module__', '?')}:{fn.__qualname__}"


def _code_of(fn: Any) -> str:
    """A function's source (its bytecode where there is none) and the values it closes over; an object's
    class source and its fields."""
    target = fn if inspect.isfunction(fn) else type(fn)
    try:
        text = inspect.getsource(target)
    except (OSError, TypeError):
        text = repr(getattr(getattr(target, "__code__", None), "co_code", target))
    cells = getattr(fn, "__closure__", None) or ()
    closed = [
        repr(c.cell_contents) if not callable(c.cell_contents) else _code_of(c.cell_contents) for c in cells
    ]
    return text + repr(closed) + ("" if inspect.isfunction(fn) else repr(fn))


def _give_nothing(network: Network, x: chex.Array, labels: chex.Array, key) -> tuple[chex.Array, Any]:
    return x, ()


def _hand_on_cut(network: Network, inp: UnitInput, h_out: chex.Array, logits: chex.Array) -> UnitInput:
    return network.next_input(inp, h_out, logits)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalMethod(Method):
    """A method whose every unit minimises its own loss: no gradient crosses a unit boundary.

    Attributes (besides ``Method``'s; ``gradients`` is ``"local"``, and the
    objective is the sum of the unit losses, built for every execution):
      unit_loss: ``unit_loss(seen: UnitSeen) -> (loss, logits [B, N])``:
        one unit's scalar loss from what it sees, and the logits its step
        reports accuracy from (usually ``seen.logits``). The one function
        every execution, schedule and placement calls.
      give: ``give(network, x, labels, key) -> (x, given)``: the batch the
        stem (or unit 1) reads, and what every unit is given besides
        (``UnitInput.given``; ``key`` is the step's). Default: the batch as
        it is, nothing given.
      hand_on: ``hand_on(network, inp, h_out, logits) -> UnitInput``: what a
        unit hands the next (its features and belief, stopped: no gradient
        may cross). Default: ``Network.next_input``, SID's cut.
    """

    unit_loss: UnitLoss
    give: Callable = _give_nothing
    hand_on: Callable = _hand_on_cut
    gradients: str = "local"

    def _check_own(self) -> None:
        if self.gradients != "local":
            raise ConfigError(f"method {self.name!r}: a LocalMethod's gradients are 'local'")
        if self.objective is not None:
            raise ConfigError(
                f"method {self.name!r}: a LocalMethod's objective is the sum of its unit losses; give "
                "unit_loss, or use sidjax.Method for one objective over the whole network"
            )
        for name in ("unit_loss", "give", "hand_on"):
            if not callable(getattr(self, name)):
                raise ConfigError(f"method {self.name!r}: {name} must be a function (see sidjax.LocalMethod)")

    @property
    def executions(self) -> tuple[str, ...]:
        return ("vmap", "fused", "sequential")

    def make_objective(self, network: Network, loss: SIDLoss, execution: str = "fused") -> Objective:
        return local_objective(network, self, self.loss(loss), execution)


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


def check_belief_input(spec: Method, mode: str, belief_input: str) -> None:
    """The network's ``belief_input`` is one the method trains (``Method.belief_input``)."""
    _one_of_belief_inputs(belief_input)
    wanted = spec.default_belief_input(mode)
    if wanted == "prob" or belief_input == wanted:
        return
    if wanted == "log":
        raise ConfigError(
            f"method {spec.name!r} feeds each unit a vector it reads as it is: belief_input must be 'log' (or "
            f"left unset), got {belief_input!r}",
            "belief_input",
        )
    builder = "sidjax.make_blockwise_network" if mode == "blockwise" else "sidjax.make_network"
    raise ConfigError(
        f"method {spec.name!r} needs heads without belief input: belief_input 'none', got {belief_input!r} "
        f"({builder}(..., belief_input='none'))",
        "belief_input",
    )


def _local_blockwise(spec: Method, mode: str, what: str, setting: str) -> None:
    if not isinstance(spec, LocalMethod):
        raise ConfigError(
            f"{what} needs a local method (a sidjax.LocalMethod: sid, dgl, ff, hsic or your own); "
            f"method {spec.name!r} has one objective over the whole network and runs as one program",
            setting,
        )
    if mode != "blockwise":
        raise ConfigError(f"{what} needs mode blockwise: on a shared trunk every unit's gradient reaches the "
                          "extractor", setting)  # fmt: skip


def check_pipelined(spec: Method, mode: str) -> None:
    """The pipelined schedule needs blockwise units that each learn alone."""
    _local_blockwise(spec, mode, "pipelined", "pipelined")


def check_stages(spec: Method, mode: str) -> None:
    """Units in stages (one program each) need blockwise units that each learn alone."""
    _local_blockwise(spec, mode, "placement stages", "placement")


def check_refresh(spec: Method, mode: str, execution: str, pipelined: bool) -> None:
    """Units updated in turn (each reads its predecessor's updated output) walk a local method's blockwise
    units one after another, synchronously."""
    _local_blockwise(spec, mode, "refresh", "refresh")
    if pipelined or execution not in ("auto", "sequential"):
        raise ConfigError("refresh updates the units in turn: execution 'sequential' (or 'auto'), not pipelined",
                          "refresh")  # fmt: skip


def resolve_execution(spec: Method, mode: str, execution: str, stacked: bool | None = None) -> str:
    """The execution a step uses: ``"auto"`` from ``AUTO_EXECUTION`` for a local method, ``"fused"`` for
    one objective; one the method cannot run is refused, naming those it can.

    ``stacked`` is whether the units are identical (unknown before the network
    is built: None skips that rule).
    """
    if execution not in EXECUTIONS:
        raise ConfigError(f"execution must be one of {EXECUTIONS}, got {execution!r}", "execution")
    if execution == "auto":
        if not isinstance(spec, LocalMethod):
            return "fused"
        execution = AUTO_EXECUTION[mode]
        return "fused" if execution == "vmap" and stacked is False else execution
    if execution not in spec.executions:
        raise ConfigError(
            f"method {spec.name!r} runs execution {' or '.join(map(repr, spec.executions))} (one objective over "
            f"the whole network), not {execution!r}: use 'auto' or 'fused'",
            "execution",
        )
    if execution == "sequential" and mode != "blockwise":
        raise ConfigError(
            "execution 'sequential' needs mode blockwise: in the shared trunk every module's "
            "gradient reaches the extractor; use 'vmap' or 'fused'",
            "execution",
        )
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
    belief_input: str,
    execution: str,
    pipelined: bool = False,
    stages: bool = False,
    stacked: bool | None = None,
    refresh: bool = False,
) -> str:
    """Every rule above for one way of training: the configuration calls it with its settings,
    ``sidjax.make_learner`` with the network's. Returns the execution the step uses."""
    check_mode(spec, mode)
    check_belief_input(spec, mode, belief_input)
    if pipelined:
        check_pipelined(spec, mode)
    if stages:
        check_stages(spec, mode)
    if refresh:
        check_refresh(spec, mode, execution, pipelined)
    return resolve_execution(spec, mode, execution, stacked)
