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
# # sidjax quickstart: SID vs backprop on Fashion-MNIST
#
# [![Open in Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/sidjax/sidjax/blob/main/notebooks/01_quickstart.ipynb)
#
# Synergistic Information Distillation (SID) trains a network as a chain of
# belief modules, each with its own local loss: fidelity to the label plus
# consistency with the previous module's belief. No gradient crosses from one
# module to the next. Here SID and end-to-end backprop (BP) train the same
# network (an MLP extractor and L = 10 belief modules) on the same data, two
# seeds each, trained together in one program.
#
# Set `SIDJAX_NOTEBOOK_TINY=1` for a tiny budget (what CI runs).

# %%
import importlib.util
import os
import subprocess
import sys

TINY = os.environ.get("SIDJAX_NOTEBOOK_TINY", "0") == "1"
if importlib.util.find_spec("sidjax") is None:  # e.g. on Colab: install this repository
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "sidjax @ git+https://github.com/sidjax/sidjax"],
                   check=True)  # fmt: skip

import jax  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import sidjax  # noqa: E402

print("jax", jax.__version__, "on", jax.default_backend(), "| tiny budget:", TINY)

# %% [markdown]
# ## Data
# Fashion-MNIST is read from its original files, checked against their
# published checksums (offline from Debian's `dataset-fashion-mnist` where it
# is installed; otherwise through TFDS). Images stay uint8 and are normalised
# on the device.

# %%
dataset = sidjax.load_dataset("fashion_mnist")
print(dataset.train_images.shape, dataset.test_images.shape, dataset.num_classes, "classes")

# %% [markdown]
# ## Train SID and BP on the same network
# `TrainConfig` holds every setting (the defaults are the authors'); `run`
# trains, evaluates every module's belief on the test set after each epoch,
# and returns, per seed, its summary, the network and the trained state.
# `seed=(0, 1)` trains both seeds together (`jax.vmap` over whole runs), each
# exactly as a separate run would.

# %%
budget = dict(epochs=2, limit_train=2_000, limit_test=1_000) if TINY else dict(epochs=5)
histories, summaries, results = {}, {}, {}
for method in ("sid", "bp"):
    config = sidjax.TrainConfig(method=method, model="mlp", num_modules=10, seed=(0, 1), **budget)
    histories[method] = []
    results[method] = sidjax.run(config, dataset=dataset, progress=False, on_epoch=histories[method].append)
    summaries[method] = [r.summary for r in results[method]]
    finals = [s["final_test_accuracy"] for s in summaries[method]]
    print(f"{method.upper()}: final test accuracy {np.mean(finals):.4f} (seeds: {', '.join(f'{a:.4f}' for a in finals)}), "
          f"{summaries[method][0]['time_per_epoch_s']:.1f} s/epoch for both seeds")  # fmt: skip

# %% [markdown]
# ## Training curves and what each module's belief knows
# SID trains every module to predict the label, so each intermediate belief
# is a usable classifier; BP trains only the last one.

# %%
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for method, history in histories.items():
    for seed in (0, 1):
        curve = [r for r in history if r["seed"] == seed]
        left.plot([r["epoch"] for r in curve], [100 * r["test_accuracy"] for r in curve], "o-",
                  label=f"{method.upper()}, seed {seed}")  # fmt: skip
    acc = np.mean([s["per_unit_accuracy"] for s in summaries[method]], axis=0)
    right.plot(range(1, len(acc) + 1), 100 * acc, "o-", label=f"{method.upper()} (mean of the seeds)")
left.set(title="Test accuracy per epoch", xlabel="epoch", ylabel="test accuracy (%)")
right.set(
    title="Accuracy of each module's belief (last epoch)", xlabel="module i", ylabel="test accuracy (%)"
)
for ax in (left, right):
    ax.grid(alpha=0.3)
    ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The trained network
# `run` gives the trained network back; `sidjax.predict` returns the last
# module's class probabilities (every module's with `per_unit=True`).

# %%
trained = results["sid"][0]
probabilities = sidjax.predict(trained.network, trained.variables, dataset.normalise(dataset.test_images[:8]))
print("predicted:", probabilities.argmax(-1), "\nlabels:   ", dataset.test_labels[:8])

# %% [markdown]
# Next: `02_beliefs_and_depth` (how the belief sharpens with depth and what
# alpha does), `03_parallel_modules` (the same step on many devices) and
# `04_your_own_model` (SID on a network you write).
