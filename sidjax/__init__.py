"""sidjax: Synergistic Information Distillation (SID) in JAX and Flax NNX."""

from sidjax.architectures import ARCHITECTURES, Backbone
from sidjax.config import TrainConfig
from sidjax.data import Dataset, DatasetUnavailableError, load_dataset
from sidjax.errors import ConfigError
from sidjax.evaluation import evaluate
from sidjax.losses import (
    SIDLoss,
    forward_minimiser,
    kl_to_target,
    label_distribution,
    reverse_minimiser,
    sid_local_loss,
    uniform_log_belief,
)
from sidjax.methods import METHODS, MethodSpec
from sidjax.models import BeliefHead, BeliefModule, BlockUnit
from sidjax.network import (
    NetParams,
    Network,
    make_blockwise_network,
    make_network,
    stack_units,
    unstack_units,
)
from sidjax.ops import conv2d, max_pool
from sidjax.pipeline import BlockPipeline
from sidjax.pipelined import init_slots
from sidjax.runner import RunInterrupted, TrainingDiverged, run
from sidjax.state import TrainState, apply_gradients, init_train_state
from sidjax.steps import (
    EXECUTIONS,
    local_losses,
    make_grad_fn,
    make_train_step,
    memory_beyond_arguments,
    step_memory_bytes,
)

__all__ = [
    "ARCHITECTURES",
    "EXECUTIONS",
    "METHODS",
    "Backbone",
    "BeliefHead",
    "BeliefModule",
    "BlockPipeline",
    "BlockUnit",
    "ConfigError",
    "Dataset",
    "DatasetUnavailableError",
    "MethodSpec",
    "NetParams",
    "Network",
    "RunInterrupted",
    "SIDLoss",
    "TrainConfig",
    "TrainState",
    "TrainingDiverged",
    "apply_gradients",
    "conv2d",
    "evaluate",
    "forward_minimiser",
    "init_slots",
    "init_train_state",
    "kl_to_target",
    "label_distribution",
    "load_dataset",
    "local_losses",
    "make_blockwise_network",
    "make_grad_fn",
    "make_network",
    "make_train_step",
    "max_pool",
    "reverse_minimiser",
    "run",
    "sid_local_loss",
    "stack_units",
    "step_memory_bytes",
    "memory_beyond_arguments",
    "uniform_log_belief",
    "unstack_units",
]
