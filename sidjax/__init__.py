"""sidjax: Synergistic Information Distillation (SID) in JAX and Flax NNX."""

from sidjax.evaluation import evaluate, make_eval_step
from sidjax.losses import (
    forward_minimiser,
    kl_to_target,
    label_distribution,
    reverse_minimiser,
    sid_local_loss,
    uniform_log_belief,
)
from sidjax.models import EXTRACTORS, BeliefModule, MLPExtractor, SimpleCNN
from sidjax.network import SIDNetwork, SIDParams, make_network, unstack_modules
from sidjax.ops import conv2d, max_pool
from sidjax.steps import (
    METHODS,
    SIDLoss,
    TrainState,
    apply_gradients,
    init_train_state,
    make_grad_fn,
    make_train_step,
    sid_local_losses,
)

__all__ = [
    "EXTRACTORS",
    "METHODS",
    "BeliefModule",
    "MLPExtractor",
    "SIDLoss",
    "SIDNetwork",
    "SIDParams",
    "SimpleCNN",
    "TrainState",
    "apply_gradients",
    "conv2d",
    "evaluate",
    "forward_minimiser",
    "init_train_state",
    "kl_to_target",
    "label_distribution",
    "make_eval_step",
    "make_grad_fn",
    "make_network",
    "make_train_step",
    "max_pool",
    "reverse_minimiser",
    "sid_local_loss",
    "sid_local_losses",
    "uniform_log_belief",
    "unstack_modules",
]
