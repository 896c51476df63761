"""Where a network's arrays live: one device, a ``(data, module)`` mesh, or stages of units."""

from __future__ import annotations

import dataclasses
import re

from sidjax.errors import ConfigError

PLACEMENTS: tuple[str, ...] = ("single", "mesh:DATA,UNIT", "stages[:N]")


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a run's arrays live.

    Attributes:
      kind: ``"single"`` (one device), ``"mesh"`` (one program on a
        ``(data, module)`` mesh: the batch split ``data`` ways, stacked units
        ``module`` ways) or ``"stages"`` (blockwise units in contiguous
        stages, one program per stage, ``sidjax.stages``).
      mesh: ``(data, module)`` for ``"mesh"``.
      stages: the number of stages (0: one per device, at most K).
    """

    kind: str = "single"
    mesh: tuple[int, int] = (1, 1)
    stages: int = 0

    @classmethod
    def parse(cls, text: str | Placement) -> Placement:
        """``"single"``, ``"mesh:2,4"``, ``"stages"`` or ``"stages:4"`` (a ``Placement`` is returned as is)."""
        if isinstance(text, Placement):
            return text
        m = re.fullmatch(r"single|mesh:(\d+),(\d+)|stages(?::(\d+))?", text.strip())
        if not m:
            raise ConfigError(f"placement must be one of {PLACEMENTS}, got {text!r}", "placement")
        if text.startswith("mesh"):
            data, module = int(m.group(1)), int(m.group(2))
            if data < 1 or module < 1:
                raise ConfigError(f"placement mesh sizes must be >= 1, got {text!r}", "placement")
            return cls("mesh", (data, module))
        if text.startswith("stages"):
            return cls("stages", stages=int(m.group(3) or 0))
        return cls()


def check_seeds(placement: Placement, num_seeds: int) -> None:
    """Several seeds (or grid points) train together in one program on a single device only."""
    if num_seeds > 1 and placement.kind != "single":
        raise ConfigError(
            "several seeds or grid points train together on a single device only; use placement single",
            "seed",
        )
