"""sidjax: Synergistic Information Distillation (SID) in JAX and Flax NNX."""

from sidjax.architectures import ARCHITECTURES, Backbone
from sidjax.data import load_dataset
from sidjax.evaluation import evaluate, make_eval_step
from sidjax.experiment import TrainConfig, run
from sidjax.losses import (
    forward_minimiser,
    kl_to_target,
    label_distribution,
    reverse_minimiser,
    sid_local_loss,
    uniform_log_belief,
)
from sidjax.models import BeliefHead, BeliefModule, BlockUnit
from sidjax.network import NetParams, Network, make_blockwise_network, make_network, unstack_modules
from sidjax.ops import conv2d, max_pool
from sidjax.pipeline import BlockPipeline
from sidjax.steps import (
    EXECUTIONS,
    METHODS,
    SIDLoss,
    TrainState,
    apply_gradients,
    init_train_state,
    local_losses,
    make_grad_fn,
    make_train_step,
    step_temp_bytes,
)

__all__ = [
    "ARCHITECTURES",
    "EXECUTIONS",
    "METHODS",
    "Backbone",
    "BeliefHead",
    "BlockPipeline",
    "BeliefModule",
    "BlockUnit",
    "NetParams",
    "Network",
    "SIDLoss",
    "TrainConfig",
    "TrainState",
    "apply_gradients",
    "conv2d",
    "evaluate",
    "forward_minimiser",
    "init_train_state",
    "kl_to_target",
    "label_distribution",
    "load_dataset",
    "local_losses",
    "make_blockwise_network",
    "make_eval_step",
    "make_grad_fn",
    "make_network",
    "make_train_step",
    "max_pool",
    "reverse_minimiser",
    "run",
    "sid_local_loss",
    "step_temp_bytes",
    "uniform_log_belief",
    "unstack_modules",
]
