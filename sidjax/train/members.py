"""The runs trained together: the seeds at every grid point; the one place that knows one run has no axis.

A config's *members* are its grid points times its seeds (``TrainConfig.seed``
a tuple, ``lr`` or ``weight_decay`` several values). They train in one
program: their states, labels, batch orders and keys carry a leading ``[M]``
axis. One member carries none, so that a run of one seed at one point is
exactly the program a single run compiles. Members of one seed share its
initial network, batch order and label noise, whatever their point, so the
points of a grid are compared on the same draws.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import numpy as np

from sidjax.network import stack, unstack
from sidjax.train.config import Point, TrainConfig


def seed_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(init_key, train_key)`` of one seed: one root key, split once per concern."""
    init_key, train_key = jax.random.split(jax.random.key(seed))
    return init_key, train_key


class Member(NamedTuple):
    """One run of a config: a seed at a grid point.

    Attributes:
      seed: the seed.
      point: the grid's values, ``(("lr", 1e-4), ...)``; ``()`` without a grid.
    """

    seed: int
    point: Point = ()

    def describe(self) -> str:
        """``"seed 0"``, or ``"lr 0.0001, seed 0"`` at a grid point."""
        return ", ".join([*(f"{name} {value:g}" for name, value in self.point), f"seed {self.seed}"])


def point_name(point: Point) -> str:
    """The directory of a grid point: ``lr0.0001``, ``lr0.001_weight_decay0``."""
    return "_".join(f"{name}{value:g}" for name, value in point)


@dataclasses.dataclass(frozen=True)
class Members:
    """The members trained together, in order (the grid's points outermost, then the seeds).

    Attributes:
      values: the members.
    """

    values: tuple[Member, ...]

    @classmethod
    def of(cls, config: TrainConfig) -> Members:
        """Every member of ``config``: each grid point with each seed."""
        return cls(tuple(Member(s, p) for p in config.points() for s in config.seeds))

    @classmethod
    def of_seeds(cls, seeds: tuple[int, ...]) -> Members:
        """Seeds alone, without a grid."""
        return cls(tuple(Member(s) for s in seeds))

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Member]:
        return iter(self.values)

    @property
    def seeds(self) -> tuple[int, ...]:
        """Each member's seed, in order."""
        return tuple(m.seed for m in self.values)

    @property
    def together(self) -> bool:
        """Several members: every per-member value has a leading member axis."""
        return len(self.values) > 1

    def only(self, kept) -> Members:
        """The members in ``kept``, in this order."""
        return Members(tuple(m for m in self.values if m in kept))

    def stack(self, trees: list[Any]) -> Any:
        """One value per member -> the run's form: the value itself for one member, stacked ``[M, ...]`` else."""
        return stack(trees) if self.together else trees[0]

    def stack_host(self, arrays: list[np.ndarray]) -> np.ndarray:
        """``stack`` for host arrays, kept on the host."""
        return np.stack(arrays) if self.together else arrays[0]

    def split(self, tree: Any) -> list[Any]:
        """The run's form -> one value per member (the inverse of ``stack``)."""
        return unstack(tree, len(self.values)) if self.together else [tree]

    def train_keys(self) -> jax.Array:
        """Each member's train key (its seed's), in the run's form."""
        return self.stack([seed_keys(m.seed)[1] for m in self.values])

    def init_keys(self) -> list[jax.Array]:
        """Each member's init key (its seed's)."""
        return [seed_keys(m.seed)[0] for m in self.values]


def member_path(out_dir: str, config: TrainConfig, member: Member) -> str:
    """A member's run directory: ``out_dir`` for one seed without a grid, else ``<point>/`` for a grid point
    and ``seed<k>/`` where ``config.seed`` is a tuple, in that order."""
    parts = [point_name(member.point)] if config.grid else []
    if not isinstance(config.seed, int):
        parts.append(f"seed{member.seed}")
    return os.path.join(out_dir, *parts)


def member_config(config: TrainConfig, member: Member) -> TrainConfig:
    """What a separate run of ``member`` would be: one seed, one point."""
    return config.for_point(member.point).for_seed(member.seed)
