"""sidjax: Synergistic Information Distillation (SID) in JAX and Flax NNX.

The library: networks of units built from your NNX modules or the built-in
architectures (``blockwise``, ``trunk``, ``from_units``, ``make_network``,
``make_blockwise_network``), the local loss (``SIDLoss``), one record that
trains a network with any method, execution, schedule and placement
(``make_learner`` -> ``Learner``), evaluation and prediction. The
application on top (``sidjax.train``): ``TrainConfig``, ``run`` and
``load_run``, and the ``sidjax`` command line.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from sidjax._version import __version__

if TYPE_CHECKING:  # what the names below are, for type checkers and editors
    from sidjax.architectures import ARCHITECTURES, Backbone
    from sidjax.builders import blockwise, from_units, make_blockwise_network, make_network, trunk
    from sidjax.data import Dataset, DatasetUnavailableError, load_dataset
    from sidjax.errors import ConfigError
    from sidjax.evaluation import evaluate, predict
    from sidjax.heads import HEADS, DGLHead, InfoProHead, MLPHead
    from sidjax.learner import make_learner
    from sidjax.losses import (
        SIDLoss,
        forward_minimiser,
        kl_to_target,
        label_distribution,
        reverse_minimiser,
        sid_local_loss,
        uniform_log_belief,
    )
    from sidjax.methods import EXECUTIONS, METHODS, LocalMethod, Method, UnitSeen, register_method
    from sidjax.methods.check import check_method
    from sidjax.methods.sid import local_losses
    from sidjax.models import BeliefModule, BlockUnit
    from sidjax.network import Modules, Network, Parts, UnitInput, Variables
    from sidjax.placement import Placement
    from sidjax.state import Learner, TrainState
    from sidjax.train.config import TrainConfig
    from sidjax.train.runner import RunInterrupted, RunResult, RunStopped, TrainingDiverged, load_run, run


_EXPORTS: dict[str, str] = {  # name -> the module that defines it; imported on first use
    "ARCHITECTURES": "sidjax.architectures",
    "Backbone": "sidjax.architectures",
    "blockwise": "sidjax.builders",
    "from_units": "sidjax.builders",
    "make_blockwise_network": "sidjax.builders",
    "make_network": "sidjax.builders",
    "trunk": "sidjax.builders",
    "Dataset": "sidjax.data",
    "DatasetUnavailableError": "sidjax.data",
    "load_dataset": "sidjax.data",
    "ConfigError": "sidjax.errors",
    "evaluate": "sidjax.evaluation",
    "predict": "sidjax.evaluation",
    "HEADS": "sidjax.heads",
    "DGLHead": "sidjax.heads",
    "InfoProHead": "sidjax.heads",
    "MLPHead": "sidjax.heads",
    "make_learner": "sidjax.learner",
    "SIDLoss": "sidjax.losses",
    "forward_minimiser": "sidjax.losses",
    "kl_to_target": "sidjax.losses",
    "label_distribution": "sidjax.losses",
    "reverse_minimiser": "sidjax.losses",
    "sid_local_loss": "sidjax.losses",
    "uniform_log_belief": "sidjax.losses",
    "EXECUTIONS": "sidjax.methods",
    "METHODS": "sidjax.methods",
    "LocalMethod": "sidjax.methods",
    "Method": "sidjax.methods",
    "UnitSeen": "sidjax.methods",
    "register_method": "sidjax.methods",
    "check_method": "sidjax.methods.check",
    "local_losses": "sidjax.methods.sid",
    "BeliefModule": "sidjax.models",
    "BlockUnit": "sidjax.models",
    "Modules": "sidjax.network",
    "Network": "sidjax.network",
    "Parts": "sidjax.network",
    "UnitInput": "sidjax.network",
    "Variables": "sidjax.network",
    "Placement": "sidjax.placement",
    "Learner": "sidjax.state",
    "TrainState": "sidjax.state",
    "TrainConfig": "sidjax.train.config",
    "RunInterrupted": "sidjax.train.runner",
    "RunResult": "sidjax.train.runner",
    "RunStopped": "sidjax.train.runner",
    "TrainingDiverged": "sidjax.train.runner",
    "load_run": "sidjax.train.runner",
    "run": "sidjax.train.runner",
}


def __getattr__(name: str):
    """The package's public names, each imported from its module when first used: importing one part of
    sidjax (the configuration, the methods) does not load the data readers or the evaluation."""
    if name not in _EXPORTS:
        if importlib.util.find_spec(f"sidjax.{name}") is None:
            raise AttributeError(f"module 'sidjax' has no attribute {name!r}")
        return importlib.import_module(f"sidjax.{name}")  # a submodule: sidjax.train, sidjax.methods
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "ARCHITECTURES",
    "EXECUTIONS",
    "HEADS",
    "METHODS",
    "Backbone",
    "BeliefModule",
    "BlockUnit",
    "ConfigError",
    "DGLHead",
    "Dataset",
    "DatasetUnavailableError",
    "InfoProHead",
    "Learner",
    "LocalMethod",
    "MLPHead",
    "Method",
    "Modules",
    "Network",
    "Parts",
    "Placement",
    "RunInterrupted",
    "RunResult",
    "RunStopped",
    "SIDLoss",
    "TrainConfig",
    "TrainState",
    "TrainingDiverged",
    "UnitInput",
    "UnitSeen",
    "Variables",
    "__version__",
    "blockwise",
    "check_method",
    "evaluate",
    "forward_minimiser",
    "from_units",
    "kl_to_target",
    "label_distribution",
    "load_dataset",
    "load_run",
    "local_losses",
    "make_blockwise_network",
    "make_learner",
    "make_network",
    "predict",
    "register_method",
    "reverse_minimiser",
    "run",
    "sid_local_loss",
    "trunk",
    "uniform_log_belief",
]
