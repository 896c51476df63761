"""Whether a checkpoint holds the state it is restored into: array names and shapes compared before reading."""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from sidjax.errors import ConfigError


class CheckpointLayoutError(ConfigError):
    """A checkpoint holds arrays of other names or shapes than the state it is restored into."""


def layout_differences(saved: Any, template: Any, most: int = 3) -> str:
    """What differs between a checkpoint's array metadata and ``template``'s arrays ('' if nothing).

    Arrays are named by their path in the state (``params.units.0.kernel``).
    """

    def named(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {".".join(_key(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}

    def order(names):  # the network's arrays first: they say more than the optimizer's
        return sorted(names, key=lambda n: (not n.startswith("params"), n))

    have, want = named(saved), named(template)
    shapes = [
        f"{n}: {have[n]} saved, {want[n]} given"
        for n in order(have.keys() & want.keys())
        if have[n] != want[n]
    ]
    only_saved, only_given = order(have.keys() - want.keys()), order(want.keys() - have.keys())
    parts = [
        f"{len(shapes)} arrays of other shapes, e.g. {'; '.join(shapes[:most])}" if shapes else "",
        f"{len(only_saved)} arrays only saved, e.g. {', '.join(only_saved[:most])}" if only_saved else "",
        f"{len(only_given)} arrays only given, e.g. {', '.join(only_given[:most])}" if only_given else "",
    ]
    return "; ".join(p for p in parts if p)


def saved_arrays(checkpointer: ocp.StandardCheckpointer, state_dir: str) -> Any:
    """The array metadata (names, shapes) of a checkpoint's ``state`` item, read without its arrays."""
    metadata = checkpointer.metadata(state_dir)
    metadata = getattr(metadata, "item_metadata", metadata)
    return getattr(metadata, "tree", metadata)


def _key(key) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)
