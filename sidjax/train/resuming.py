"""What a resume may change: a run continues with the rule, the recipe and the settings it started with."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from sidjax.errors import ConfigError
from sidjax.methods import changed_rule, get_method
from sidjax.train.config import TrainConfig
from sidjax.train.recipe import describe_recipe

# Fields that may differ when a run is resumed: they change neither the numbers nor the files.
RESUMABLE = ("checkpoint_every", "checkpoint_steps", "steps_per_chunk", "device_data_mb", "eval_batch_size")


def check_same_run(
    path: str,
    config: TrainConfig,
    recipe: dict[str, Any],
    run_info: dict[str, Any],
    allow_changed_method: bool,
    log: Callable[[str], None],
) -> None:
    """Refuses in one line a resume of the run in ``path`` (its ``run.json``: ``run_info``) with another
    rule, recipe or setting than it started with; another rule only warns where ``allow_changed_method``."""
    saved = _saved_config(path)
    changed = changed_rule(run_info.get("network", {}).get("method"), get_method(config.method))
    if changed and not allow_changed_method:
        raise ConfigError(f"resume: {path}: {changed}; resume it with the same rule, or give "
                          "allow_changed_method=True to go on with this one", "method")  # fmt: skip
    if changed:
        log(f"warning: {path}: {changed}; going on with it as asked (allow_changed_method)")
    trained_with = run_info.get("recipe", {})
    if trained_with != recipe:
        raise ConfigError(
            f"resume: {path} was trained with {describe_recipe(trained_with)}, and this run is given "
            f"{describe_recipe(recipe)}; resume it with the same (run's tx and alpha arguments)",
            "resume",
        )
    now = config.record()
    constant = config.schedule == "constant" and "tx" not in recipe  # your tx may decay over the epochs
    free = set(RESUMABLE) | ({"epochs"} if constant else set())
    different = [k for k in now if k not in free and saved.get(k) != now[k]]
    if different:
        raise ConfigError(
            f"resume: {path} holds a run with other settings "
            f"({', '.join(f'{k}={saved.get(k)!r}' for k in different)}); use the same settings or another out",
            "resume",
        )


def _saved_config(path: str) -> dict[str, Any]:
    file = os.path.join(path, "config.json")
    try:
        with open(file) as f:
            return TrainConfig.from_record(json.load(f)).record()
    except FileNotFoundError:
        raise ConfigError(f"resume: {path} has no config.json; it was not written by sidjax") from None
    except (json.JSONDecodeError, ConfigError, TypeError) as err:
        raise ConfigError(
            f"resume: {file} is damaged ({err}); use overwrite=True to start again", "resume"
        ) from None
