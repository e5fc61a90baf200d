r"""Named grid axes, flattened to one cell axis (row-major, the last axis fastest).

A grid is an ordered mapping ``{axis name: values}``. ``values`` is an array whose leading dimension
is the axis length, or a dict of such arrays of a common length: a *zipped* axis whose entries vary
together along the axis and reach the cell as separate keyword arguments (e.g. an SNR and the step
sizes tuned for it). Cell ``i`` of the flattened grid has multi-index ``np.unravel_index(i, shape)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np


class Grid:
    """A validated product grid: axis names, lengths, per-axis values on the host, and cell lookup."""

    def __init__(self, grid: Mapping):
        if not isinstance(grid, Mapping) or not grid:
            raise ValueError(f"grid must be a non-empty dict of axis name -> values; got {grid!r}")
        self.names: tuple[str, ...] = tuple(grid)
        self.values: dict = {}
        lengths = []
        for name in self.names:
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError(f"grid axis names must be Python identifiers; got {name!r}")
            values = jax.tree_util.tree_map(_host_array, grid[name])
            leaves = jax.tree_util.tree_leaves(values)
            if not leaves:
                raise ValueError(f"grid axis {name!r} has no values")
            sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
            if None in sizes:
                raise ValueError(f"grid axis {name!r}: values need a leading axis (use a 1-D array, not a scalar)")
            if len(sizes) != 1:
                raise ValueError(f"grid axis {name!r}: zipped entries have different lengths {sorted(sizes)}")
            (size,) = sizes
            if size < 1:
                raise ValueError(f"grid axis {name!r} is empty")
            if isinstance(values, Mapping):
                for entry in values:
                    if not isinstance(entry, str) or not entry.isidentifier():
                        raise ValueError(f"zipped entries of axis {name!r} must be identifiers; got {entry!r}")
            self.values[name] = values
            lengths.append(size)
        self.shape: tuple[int, ...] = tuple(lengths)
        self.num_cells: int = math.prod(lengths)

    def indices(self, flat: np.ndarray) -> np.ndarray:
        """Per-axis indices of the flat cells ``flat``, shape (len(flat), num_axes), int32."""
        return np.stack(np.unravel_index(flat, self.shape), axis=-1).astype(np.int32)

    def cell_values(self, flat: np.ndarray) -> dict:
        """The keyword arguments of the cells ``flat`` (leading axis len(flat)), zipped axes spread."""
        index = self.indices(flat)
        kwargs = {}
        for axis, name in enumerate(self.names):
            picked = jax.tree_util.tree_map(lambda leaf, i=axis: leaf[index[:, i]], self.values[name])
            if isinstance(picked, Mapping):
                kwargs.update(picked)
            else:
                kwargs[name] = picked
        return kwargs

    def describe(self) -> dict:
        """JSON-ready values of every axis (for the sweep's configuration record)."""
        return {name: jax.tree_util.tree_map(lambda leaf: leaf.tolist(), self.values[name]) for name in self.names}

    def argument_names(self) -> tuple[str, ...]:
        names = []
        for name in self.names:
            values = self.values[name]
            names.extend(values if isinstance(values, Mapping) else [name])
        if len(set(names)) != len(names):
            raise ValueError(f"grid gives the cell the same keyword argument twice: {names}")
        return tuple(names)


def _host_array(values) -> np.ndarray:
    """Grid values as a host array in JAX's dtype (so float64 values follow the x64 setting)."""
    array = np.asarray(values)
    if array.dtype == object:
        raise ValueError(f"grid values must be numeric arrays; got {values!r}")
    return np.asarray(jnp.asarray(array))
