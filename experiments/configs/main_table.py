"""Main table: SID (trunk and blockwise) vs BP vs DGL on four architectures.

For SimpleCNN, VGG-11, ResNet-18 (GroupNorm) and ViT-Tiny: SID trunk (the
authors' shared extractor, L = 10), SID blockwise (K = 4, no global
backprop), DGL (K = 4: alpha = 1, no belief input) and BP on the same
network; authors' recipe (Adam 1e-3, batch 128, alpha 0.5). Fashion-MNIST 20
epochs; CIFAR-10 50 epochs and CIFAR-100 100 epochs with crop + flip
augmentation (the epochs of the authors' log).

Command:  bash experiments/gpu_sweep.sh main_table 'fashion_mnist/simplecnn/*' 'fashion_mnist/resnet18/*' ...
          (or python -m experiments.run main_table --only 'fashion_mnist/*'; seeds 0 and 1 train together)
Hardware: one GPU. Not run yet: no accelerator was lent to the session that
prepared it. On the 2-core CPU one SimpleCNN epoch takes ~3.5 min (a 20-epoch
row ~70 min); an H200 measured before this version ran a SimpleCNN trunk
epoch in 1.0 s and a ResNet-18 BP epoch in 3.1 s.
Expected (paper): SID matches BP on CIFAR-10 and beats it on CIFAR-100.
"""

from experiments.configs import Experiment
from sidjax.train.config import TrainConfig

EPOCHS = {"fashion_mnist": 20, "cifar10": 50, "cifar100": 100}
METHODS = {
    "sid_trunk": {"method": "sid", "mode": "trunk"},
    "sid_blockwise": {"method": "sid", "mode": "blockwise"},
    "dgl": {"method": "dgl", "mode": "blockwise"},
    "bp": {"method": "bp", "mode": "trunk"},
}

EXPERIMENT = Experiment(
    name="main_table",
    doc=__doc__,
    runs={
        f"{dataset}/{model}/{name}": TrainConfig(
            dataset=dataset, model=model, num_modules=10, num_blocks=4, epochs=epochs, **method
        )
        for dataset, epochs in EPOCHS.items()
        for model in ("simplecnn", "vgg11", "resnet18", "vit_tiny")
        for name, method in METHODS.items()
    },
    seeds=(0, 1),
    smoke_runs=("fashion_mnist/simplecnn/sid_trunk", "fashion_mnist/simplecnn/dgl"),
)
