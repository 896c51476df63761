"""Training methods: the record (``Method``, ``LocalMethod``), its rules, and the table of built-in ones.

A method says what each unit of a network (a stem and K units) is given and
minimises, where gradients may flow, what it changes in the network
(``prepare``) and how the trained network predicts (``inference``)
(``docs/methods.md``). The built-in ones, one module each:

* ``sid`` and ``dgl`` (``sidjax.methods.sid``): SID's local loss per unit;
  greedy local learning (alpha = 1, heads without belief input).
* ``bp`` and ``bp_remat`` (``sidjax.methods.backprop``): end-to-end backprop.
* ``noprop`` (``sidjax.methods.noprop``): NoProp as the SID authors ran it.
* ``fa`` and ``dfa`` (``sidjax.methods.feedback``): feedback alignment and
  direct feedback alignment.
* ``ff`` and ``ff_hinton`` (``sidjax.methods.forward_forward``): Forward-Forward, and with Hinton's
  own settings.
* ``hsic`` (``sidjax.methods.hsic``): the HSIC bottleneck.
* ``readout`` (``sidjax.methods.readout``): a fresh linear read-out on a
  frozen network (the HSIC bottleneck's post-training, a linear probe).

Your own rule is a ``LocalMethod`` (a loss per unit) or a ``Method`` (one
objective): ``register_method`` it, or name it as ``"module:attribute"``
wherever a method's name is taken.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys

from sidjax.errors import ConfigError
from sidjax.methods._record import (
    AUTO_EXECUTION,
    EXECUTIONS,
    GRADIENTS,
    MODES,
    LocalMethod,
    Method,
    check_adapted,
    check_belief_input,
    check_mode,
    check_pipelined,
    check_refresh,
    check_stages,
    check_training,
    resolve_execution,
)
from sidjax.methods.backprop import BP, BP_REMAT
from sidjax.methods.feedback import DFA, FA
from sidjax.methods.forward_forward import FF, FF_HINTON
from sidjax.methods.hsic import HSIC
from sidjax.methods.noprop import NOPROP
from sidjax.methods.readout import READOUT
from sidjax.methods.sid import DGL, SID
from sidjax.units import UnitSeen

__all__ = [
    "AUTO_EXECUTION",
    "BUILTIN",
    "EXECUTIONS",
    "GRADIENTS",
    "METHODS",
    "MODES",
    "LocalMethod",
    "Method",
    "UnitSeen",
    "check_adapted",
    "check_belief_input",
    "check_mode",
    "check_pipelined",
    "check_refresh",
    "check_stages",
    "changed_rule",
    "check_training",
    "get_method",
    "register_method",
    "resolve_execution",
]

BUILTIN: tuple[Method, ...] = (SID, DGL, BP, BP_REMAT, NOPROP, FA, DFA, FF, FF_HINTON, HSIC, READOUT)
METHODS: dict[str, Method] = {method.name: method for method in BUILTIN}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Adds your own method to ``METHODS`` (so ``run``, the CLI and ``load_run`` find it by name); returns it.

    A name already taken by another method is refused unless ``replace`` is
    True (a built-in's name then means your rule wherever it is used).
    """
    if not isinstance(method, Method):
        raise ConfigError(f"register_method takes a sidjax.Method, got {type(method).__name__}", "method")
    taken = METHODS.get(method.name)
    if taken is not None and taken is not method and not replace:
        what = "the built-in method" if any(taken is b for b in BUILTIN) else "another method"
        raise ConfigError(
            f"register_method: {method.name!r} is {what} {taken.summary!r}; give your method another name, or "
            "register_method(method, replace=True) to replace it",
            "method",
        )
    METHODS[method.name] = method
    return method


def changed_rule(recorded: dict | None, method: Method) -> str | None:
    """How ``method`` differs from the rule a run recorded (``Method.identity``), or None where it is that
    rule (or the run recorded none). A built-in is its name: sidjax's version is recorded beside it."""
    if not recorded:
        return None
    if any(method is builtin for builtin in BUILTIN) and recorded.get("name") == method.name:
        return None
    now = method.identity()
    if recorded.get("fingerprint") == now["fingerprint"]:
        return None
    was = ", ".join(f"{k} {v}" for k, v in recorded.get("functions", {}).items())
    return (f"its method {method.name!r} is not the rule it trained (recorded: {was or 'no functions'}, code "
            f"{recorded.get('fingerprint')}; now {now['fingerprint']})")  # fmt: skip


def get_method(name: str | Method) -> Method:
    """The method called ``name``, a ``Method`` itself, or ``"module:attribute"`` naming a ``Method``
    (imported from the current directory or the environment, and registered); ``ConfigError`` listing
    the known ones."""
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
    if os.getcwd() not in sys.path and "" not in sys.path:  # as --model and python -m do
        sys.path.insert(0, os.getcwd())
    try:
        found = getattr(importlib.import_module(module), attribute)
    except Exception as e:  # a missing module, a syntax error, an error its own code raises on import
        raise ConfigError(f"method {path!r}: cannot import it ({type(e).__name__}: {e})", "method") from None
    if not isinstance(found, Method):
        raise ConfigError(f"method {path!r} is a {type(found).__name__}, not a sidjax.Method", "method")
    return dataclasses.replace(found, name=path)
