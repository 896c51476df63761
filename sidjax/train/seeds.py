"""The seeds a run trains together: the one place that knows one seed has no seed axis.

S seeds train in one program: their states, labels, batch orders and keys
carry a leading ``[S]`` axis. One seed carries none, so that a run of one
seed is exactly the program a single run compiles.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from sidjax.network import stack, unstack


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(init_key, train_key)`` of one seed: one root key, split once per concern."""
    init_key, train_key = jax.random.split(jax.random.key(seed))
    return init_key, train_key


@dataclasses.dataclass(frozen=True)
class Seeds:
    """The seeds trained together, in order.

    Attributes:
      values: the seeds.
    """

    values: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[int]:
        return iter(self.values)

    @property
    def together(self) -> bool:
        """Several seeds: every per-seed value has a leading seed axis."""
        return len(self.values) > 1

    def stack(self, trees: list[Any]) -> Any:
        """One value per seed -> the run's form: the value itself for one seed, stacked ``[S, ...]`` else."""
        return stack(trees) if self.together else trees[0]

    def stack_host(self, arrays: list[np.ndarray]) -> np.ndarray:
        """``stack`` for host arrays, kept on the host."""
        return np.stack(arrays) if self.together else arrays[0]

    def split(self, tree: Any) -> list[Any]:
        """The run's form -> one value per seed (the inverse of ``stack``)."""
        return unstack(tree, len(self.values)) if self.together else [tree]

    def train_keys(self) -> jax.Array:
        """Each seed's train key, in the run's form."""
        return self.stack([seed_keys(s)[1] for s in self.values])

    def init_keys(self) -> list[jax.Array]:
        """Each seed's init key."""
        return [seed_keys(s)[0] for s in self.values]
