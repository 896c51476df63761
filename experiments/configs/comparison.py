"""SID against the methods the paper compares it with, on the networks each can train.

The paper claims SID "strongly outperforms" feedback alignment,
Forward-Forward, the HSIC bottleneck and NoProp. sidjax implements NoProp as
the SID authors ran it (``--method noprop``: each unit of the shared trunk
denoises a noisy label code; prediction from noise with a fixed key), so the
comparison here is SID, NoProp and BP on the shared trunk, same network,
data, optimizer (Adam 1e-3, batch 128), alpha 0.5 and seeds:
- mlp_trunk: MLP extractor, L = 10 units, full Fashion-MNIST, 20 epochs;
- simplecnn_trunk: the authors' SimpleCNN extractor, L = 10, the first 4 000
  training examples and 2 000 test examples, 10 epochs.

Command:  python -m experiments.run comparison --only 'mlp_trunk/*'
          python -m experiments.run comparison --only 'simplecnn_trunk/*'
Hardware: 2-core x86_64 CPU, 3 seeds trained together per run: the MLP runs
took 7-8 min each and the SimpleCNN runs 15-23 min each (the test suite ran
beside both); at 10 epochs the SimpleCNN curves are still rising.
Expected: the paper's claim is that SID is well above NoProp; a published
NoProp figure for this simplified form on Fashion-MNIST does not exist, so
NoProp is checked against its own formulas in the tests, not a number.
"""

import dataclasses

from experiments.configs import Experiment
from sidjax.train.config import TrainConfig

MLP = TrainConfig(model="mlp", num_modules=10, epochs=20)
CNN = TrainConfig(model="simplecnn", num_modules=10, epochs=10, limit_train=4000, limit_test=2000)
METHODS = ("sid", "noprop", "bp")

EXPERIMENT = Experiment(
    name="comparison",
    doc=__doc__,
    runs={
        **{f"mlp_trunk/{m}": dataclasses.replace(MLP, method=m) for m in METHODS},
        **{f"simplecnn_trunk/{m}": dataclasses.replace(CNN, method=m) for m in METHODS},
    },
    seeds=(0, 1, 2),
    smoke_runs=("mlp_trunk/noprop",),
)
