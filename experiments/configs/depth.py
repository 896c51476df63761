"""Depth: does the belief improve at every module, and does accuracy grow with depth?

Trunk mode: L = 1, 2, 4, 8, 16 belief modules on the MLP extractor, SID and
BP, 10 epochs on full Fashion-MNIST (authors' recipe otherwise). Each run
records per-module test accuracy and KL(target || p_i) of its last epoch.
Blockwise mode: K = 1, 2, 4, 8 blocks of VGG-11, SID and DGL, on
Fashion-MNIST (20 epochs) and CIFAR-10 (50 epochs), for an accelerator (no
architecture here allows K = 16: VGG-11 has 8 conv layers, ViT-Tiny 12
blocks).

Command:  python -m experiments.run depth --only 'trunk/*'      (here)
          bash experiments/gpu_sweep.sh depth 'blockwise/fashion_mnist/*'  (GPU; not run yet)
Hardware: trunk: 2-core x86_64 CPU: 10 runs, each with its 2 seeds trained
together (1.9 s per epoch for both at L = 1, 8.9 s at L = 16), ~8 min in all.
Expected: the theory (closed-form minimiser iterated from uniform) says
KL(target || p_i) falls at every module; the paper says accuracy grows
monotonically with depth.
"""

import dataclasses

from experiments.configs import Experiment
from sidjax.train.config import TrainConfig

TRUNK = TrainConfig(model="mlp", epochs=10)
BLOCKWISE = {
    "fashion_mnist": TrainConfig(mode="blockwise", model="vgg11", epochs=20),
    "cifar10": TrainConfig(mode="blockwise", model="vgg11", dataset="cifar10", epochs=50),
}

EXPERIMENT = Experiment(
    name="depth",
    doc=__doc__,
    runs={
        **{
            f"trunk/L{depth:02d}/{method}": dataclasses.replace(TRUNK, method=method, num_modules=depth)
            for depth in (1, 2, 4, 8, 16)
            for method in ("sid", "bp")
        },
        **{
            f"blockwise/{dataset}/K{depth}/{method}": dataclasses.replace(
                base, method=method, num_blocks=depth
            )
            for dataset, base in BLOCKWISE.items()
            for depth in (1, 2, 4, 8)
            for method in ("sid", "dgl")
        },
    },
    seeds=(0, 1),
    smoke_runs=("trunk/L16/*",),
)
