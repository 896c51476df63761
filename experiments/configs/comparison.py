"""SID against the methods the paper compares it with, on the networks each can train.

The paper claims SID "strongly outperforms" feedback alignment,
Forward-Forward, the HSIC bottleneck and NoProp. Every run uses the same
optimizer (Adam 1e-3; FA and DFA 1e-4, where they do not diverge), batch 128 (HSIC:
512, its authors'), alpha 0.5 and seeds 0, 1, 2 trained together:
- mlp_trunk: MLP extractor, L = 10 units, full Fashion-MNIST, 20 epochs
  (SID, NoProp, BP, FA, DFA);
- simplecnn_trunk: the authors' SimpleCNN extractor, L = 10, the first 4 000
  training examples and 2 000 test examples, 10 epochs (SID, NoProp, BP, FA, DFA);
- mlp4_blockwise: four dense layers of 500 ReLUs, one per unit (K = 4), full
  data, 30 epochs (SID, DGL, BP, FA, DFA, FF, HSIC), then HSIC's authors'
  post-training of a fresh output layer on the frozen HSIC network
  (hsic_readout, 5 epochs);
- simplecnn_blockwise: SimpleCNN cut into K = 4 units, 4 000 / 2 000
  examples, 10 epochs (SID, DGL, BP, FA, DFA, FF, HSIC);
- lenet: the published check of FA and DFA on biotorch's own setting, scaled
  to this machine: their LeNet (experiments/lenet.py) on full Fashion-MNIST,
  SGD with momentum 0.9, weight decay 1e-3, batch 64, as their benchmark,
  for 20 epochs with a cosine decay instead of their 100 with steps at 50
  and 75; learning rate 1e-3 (BP, FA), their CIFAR-10 LeNet setting (their
  Fashion-MNIST ones are not published). At 1e-2 FA diverged in its first
  epoch. DFA diverged at 1e-3 (within 100 steps) and at their 1e-4 (in
  epoch 3), so it runs at 1e-5 (BP, FA, DFA only). bp_random_convolutions
  is the floor for a rule whose convolutions learn nothing: LeNet with its
  convolutions held at their initialisation, backprop on its dense layers.

Command:  python -m experiments.run comparison --only 'mlp4_blockwise/*'   (and the other prefixes)
Hardware: 2-core x86_64 CPU; times per epoch are in each run's metrics.
Expected: the paper's claim is that SID is well above every one of them.
Found: on the SimpleCNN with 4 000 examples and 10 epochs (310 steps), FA,
FF and the HSIC bottleneck barely leave chance (16-27 %; FA at Adam 1e-3
reached 18 % in 3 epochs too), far from FA's published 87 % with LeNet
after 100 epochs: there the gaps measure this short budget, not the
methods. The dense networks, on the full data, are the informative cells.
On biotorch's LeNet with the full data (20 epochs), FA learns as published:
BP 85.73 %, FA 85.12 % (BP - FA +0.54 [-0.39, +1.47] at the best epoch,
published +3.86 after 100 epochs). DFA does not: at 1e-5 (it diverged at
1e-4 and 1e-3) it ends at 71.72 % (BP - DFA +13.90 [+12.20, +15.60] at the
best epoch, published +3.61). With one error projection shared by every
position of a convolution, biotorch's form, it ended at 72.46 %. That is
no better than LeNet whose convolutions never learn (74.80 +- 1.10 %; DFA -
it -3.09 [-6.48, +0.31] points, final): at the step size where DFA is
stable here its convolutions add nothing: DFA's known failure to train
convolutional layers (Launay et al. 2019; Refinetti et al. 2021). FA's
convolutions do learn (FA - it +10.32 [+7.20, +13.43]).
Published figures: feedback alignment's and direct feedback alignment's gap
below backprop on Fashion-MNIST (LeNet, 100 epochs: +3.86 and +3.61 points
of best-epoch test error, biotorch's benchmarks) is set beside their gap
below BP here. None was found for Forward-Forward (Hinton's 1.4 % error with
four layers of 2 000 ReLUs is on MNIST, which cannot be downloaded here), for
the HSIC bottleneck (its paper gives Fashion-MNIST as plots only) or for
NoProp in the SID authors' form. Each method is also checked against its
formulas (tests/test_baselines.py, tests/test_noprop.py).
"""

import dataclasses

from experiments.configs import Experiment
from sidjax.train.config import TrainConfig

MLP = TrainConfig(model="mlp", num_modules=10, epochs=20)
CNN = TrainConfig(model="simplecnn", num_modules=10, epochs=10, limit_train=4000, limit_test=2000)
MLP4 = TrainConfig(model="mlp4", mode="blockwise", num_blocks=4, epochs=30)
CNN4 = dataclasses.replace(CNN, mode="blockwise", num_blocks=4)
TRUNK = ("sid", "noprop", "bp", "fa", "dfa")
BLOCKWISE = ("sid", "dgl", "bp", "fa", "dfa", "ff", "hsic")
# The HSIC bottleneck's authors' batch. At Adam 1e-3 on mlp4 both diverged in epoch 2 (TrainingDiverged:
# the last unit's cross-entropy at 319 for FA, 349 for DFA); both learn stably at 1e-4.
OWN_SETTINGS = {"hsic": {"batch_size": 512}, "fa": {"lr": 1e-4}, "dfa": {"lr": 1e-4}}


# The HSIC bottleneck's authors then train a fresh output layer on the frozen network (their "format"
# training): 5 epochs of SGD at 0.005, weight decay 0.001, no momentum, batch 256. On the SimpleCNN cut into
# 4 units it diverged in epoch 1 (cross-entropy 643): the HSIC-trained last block's pooled features there have
# norms near 140 (near 1 on mlp4), so that step is about 100 times too long for a linear layer.
POST_TRAINING = {"method": "readout", "optimizer": "sgd", "lr": 0.005, "momentum": 0.0, "weight_decay": 0.001,
                 "batch_size": 256, "epochs": 5}  # fmt: skip


def _runs(prefix: str, base: TrainConfig, methods: tuple[str, ...]) -> dict[str, TrainConfig]:
    runs = {f"{prefix}/{m}": dataclasses.replace(base, method=m, **OWN_SETTINGS.get(m, {})) for m in methods}
    if prefix == "mlp4_blockwise":  # starts from the hsic run's trained network, seed by seed
        runs[f"{prefix}/hsic_readout"] = dataclasses.replace(
            base, init_from=f"{prefix}/hsic", **POST_TRAINING
        )
    return runs


LENET = TrainConfig(model="experiments.lenet:lenet", mode="blockwise", num_blocks=1, epochs=20, batch_size=64,
                    optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-3, schedule="cosine")  # fmt: skip
LENET_RUNS = {"lenet/bp": LENET, "lenet/fa": dataclasses.replace(LENET, method="fa"),
              "lenet/dfa": dataclasses.replace(LENET, method="dfa", lr=1e-5),
              # The floor for a rule whose convolutions learn nothing: backprop trains the dense layers only.
              "lenet/bp_random_convolutions": dataclasses.replace(
                  LENET, model="experiments.lenet:lenet_random_convolutions")}  # fmt: skip

EXPERIMENT = Experiment(
    name="comparison",
    doc=__doc__,
    runs={
        **_runs("mlp_trunk", MLP, TRUNK),
        **_runs("simplecnn_trunk", CNN, TRUNK),
        **_runs("mlp4_blockwise", MLP4, BLOCKWISE),
        **_runs("simplecnn_blockwise", CNN4, BLOCKWISE),
        **LENET_RUNS,
    },
    seeds=(0, 1, 2),
    smoke_runs=("mlp_trunk/noprop", "mlp4_blockwise/hsic", "mlp4_blockwise/hsic_readout", "lenet/fa"),
)
