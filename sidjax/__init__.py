"""sidjax: Synergistic Information Distillation (SID) in JAX and Flax NNX.

The library: networks of units built from your NNX modules or the built-in
architectures (``blockwise``, ``trunk``, ``from_units``, ``make_network``,
``make_blockwise_network``), the local loss (``SIDLoss``), one record that
trains a network with any method, execution, schedule and placement
(``make_learner`` -> ``Learner``), evaluation and prediction. The
application on top (``sidjax.train``): ``TrainConfig``, ``run`` and
``load_run``, and the ``sidjax`` command line.
"""

from sidjax._version import __version__
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
from sidjax.methods import EXECUTIONS, METHODS, Method, register_method
from sidjax.models import BeliefModule, BlockUnit
from sidjax.network import Modules, Network, Parts, UnitInput, Variables
from sidjax.objectives import local_losses
from sidjax.placement import Placement
from sidjax.state import Learner, TrainState
from sidjax.train.config import TrainConfig
from sidjax.train.runner import RunInterrupted, RunResult, RunStopped, TrainingDiverged, load_run, run

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
    "Variables",
    "__version__",
    "blockwise",
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
