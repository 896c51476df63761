"""A finished run's summary (``summary.json``): its config, final, late and best epoch, speed, machine."""

from __future__ import annotations

import os
import platform
from typing import Any

import jax

from sidjax.train.members import Member, member_config
from sidjax.train.provenance import provenance
from sidjax.train.records import diverged_epoch
from sidjax.train.selection import late_mean
from sidjax.train.session import Session


def summarize(session: Session, member: Member) -> dict[str, Any]:
    """A finished run of one member of ``session``: its config, final, late and best epoch, depth
    diagnostics, speed, machine."""
    plan, history, data = session.plan, session.histories[member], session.data
    config = member_config(plan.config, member)
    window = config.late_epochs
    train_time = sum(r["epoch_time_s"] for r in history)
    best = max(history, key=lambda r: r["test_accuracy"])
    validated = {}
    if "val_accuracy" in history[-1]:  # the epoch a validation split would choose (early stopping)
        chosen = max(history, key=lambda r: r["val_accuracy"])
        validated = {"final_val_accuracy": history[-1]["val_accuracy"],
                     "late_val_accuracy": late_mean(history, "val_accuracy", window),
                     "best_val_epoch": chosen["epoch"],
                     "test_accuracy_at_best_val": chosen["test_accuracy"]}  # fmt: skip
    diverged = diverged_epoch(plan, history)
    return {
        **config.record(),
        "final_test_accuracy": history[-1]["test_accuracy"],
        "late_test_accuracy": late_mean(history, "test_accuracy", window),
        "best_test_accuracy": best["test_accuracy"],
        "best_epoch": best["epoch"],
        **validated,
        **({"diverged_in_epoch": diverged} if diverged is not None else {}),
        "per_unit_accuracy": history[-1]["per_unit_accuracy"],
        "per_unit_kl": history[-1]["per_unit_kl"],
        "network": session.network,
        "train_time_s": train_time,
        "time_per_epoch_s": train_time / config.epochs,
        "examples_per_s": plan.steps_per_epoch * config.batch_size * config.epochs / train_time,
        "seeds_trained_together": len(session.members),
        "compile_time_s": session.compile_time,
        "num_train": len(data.dataset.train_labels),
        "num_test": len(data.dataset.test_labels),
        "realised_label_noise": data.realised_noise[session.members.values.index(member)],
        "data_on_device": bool(data.resident),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "host": f"{platform.machine()}, {os.cpu_count()} cpus",
        "jax_version": jax.__version__,
        "num_processes": jax.process_count(),
        **provenance(),
    }
