# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Your own model: SID on a network you write in Flax NNX
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sidjax/sidjax/blob/main/notebooks/04_your_own_model.ipynb)
#
# Write your blocks as ordinary NNX modules (BatchNorm and Dropout included),
# hand them to `sidjax.blockwise`, and train them with SID, without any
# gradient crossing a block. `sidjax.run` gives the whole engine (data on the
# device, seeds together, checkpoints, resume, metrics) and the trained
# network back; `sidjax.load_run` reads it again from its directory.
# `SIDJAX_NOTEBOOK_TINY=1` runs a tiny budget (what CI runs).

# %%
import importlib.util
import os
import subprocess
import sys
import tempfile

TINY = os.environ.get("SIDJAX_NOTEBOOK_TINY", "0") == "1"
if importlib.util.find_spec("sidjax") is None:  # e.g. on Colab: install this repository
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "sidjax @ git+https://github.com/sidjax/sidjax"],
                   check=True)  # fmt: skip

import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import sidjax  # noqa: E402

print("jax", jax.__version__, "on", jax.default_backend(), "| tiny budget:", TINY)

# %% [markdown]
# ## Your blocks
# Each block maps features to features (`h -> h`). Nothing here knows about
# SID: the same modules would train end to end.


# %%
class ConvBlock(nnx.Module):
    """3x3 conv, BatchNorm, ReLU, dropout, 2x2 average pool."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (3, 3), rngs=rngs)
        self.norm = nnx.BatchNorm(cout, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)

    def __call__(self, x):
        x = self.drop(jax.nn.relu(self.norm(self.conv(x))))
        return nnx.avg_pool(x, (2, 2), strides=(2, 2))


def my_network(key, belief_input="prob"):
    """A factory: each seed builds its own initial network from its key."""
    rngs = nnx.Rngs(params=key, dropout=jax.random.fold_in(key, 1))
    blocks = [ConvBlock(1, 16, rngs=rngs), ConvBlock(16, 32, rngs=rngs), ConvBlock(32, 64, rngs=rngs)]
    return sidjax.blockwise(blocks, num_classes=10, input_shape=(28, 28, 1), rngs=rngs, head="dgl",
                            belief_input=belief_input, name="my_cnn")  # fmt: skip


network, variables = my_network(jax.random.key(0))
print(network.num_units, "units; BatchNorm statistics carried per block:",
      [list(network.unit_values(variables.stats.units, k)["layers"][0]["norm"]) for k in range(3)])  # fmt: skip

# %% [markdown]
# ## Train it with SID and with DGL through `run`
# The config holds the training settings; the network's kind and depth come
# from the network. Each block's head reads the previous block's belief
# (SID) or not (DGL, `belief_input="none"`).

# %%
budget = dict(epochs=1, limit_train=2_000, limit_test=1_000) if TINY else dict(epochs=5, limit_train=20_000)
dataset = sidjax.load_dataset("fashion_mnist")
out = tempfile.mkdtemp()
results = {}
for method in ("sid", "dgl"):
    config = sidjax.TrainConfig(method=method, mode="blockwise", batch_size=128, **budget)
    model = my_network if method == "sid" else (lambda key: my_network(key, belief_input="none"))
    results[method] = sidjax.run(config, f"{out}/{method}", model=model, dataset=dataset, progress=False)
    print(f"{method.upper()}: final test accuracy {results[method].summary['final_test_accuracy']:.4f}, "
          f"per block {[round(a, 3) for a in results[method].summary['per_unit_accuracy']]}")  # fmt: skip

# %% [markdown]
# ## The trained network back, from `run` and from its directory
# Evaluation runs every module in its `eval()` mode: no dropout, BatchNorm's
# running statistics.

# %%
loaded = sidjax.load_run(f"{out}/sid", model=my_network)
same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded.variables),
                                                jax.tree.leaves(results["sid"].variables), strict=True))  # fmt: skip
x = dataset.normalise(dataset.test_images[:1000])
beliefs = sidjax.predict(loaded.network, loaded.variables, x, per_unit=True)  # [K, 1000, 10]
accuracy = (beliefs.argmax(-1) == dataset.test_labels[:1000]).mean(-1)
print("loaded == returned:", same, "| accuracy of each block's belief:", np.round(accuracy, 3))

fig, ax = plt.subplots(figsize=(6, 4))
for method, result in results.items():
    ax.plot(range(1, 4), 100 * np.array(result.summary["per_unit_accuracy"]), "o-", label=method.upper())
ax.set(title="Test accuracy of each block's belief", xlabel="block k", ylabel="test accuracy (%)")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The unit contract, heads, and the rules for state and randomness are in
# `docs/models.md`; a shared-trunk network from your extractor is
# `sidjax.trunk(extractor, ...)`.
