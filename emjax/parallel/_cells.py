r"""Several fits on one data set, spread over a ``("cells", "data")`` mesh: restarts, step sizes, solvers' grids."""

from __future__ import annotations

import equinox as eqx
import jax
from jax import lax
from jax.sharding import PartitionSpec as P

from .._checks import validate
from .._fit import check_fit_arguments, fit
from .._validation import data_arguments
from ._mesh import CELL_AXIS, _check_mesh, shard_cells, shard_rows


@data_arguments
def fit_cells(model, solver, params, x, y, num_steps: int, mesh, *, tol=None, atol=0.0, criterion="distance"):
    r"""Run :func:`emjax.fit` from every start in ``params`` (leading axis C), data-parallel within each fit.

    The C starts are split over the mesh's ``"cells"`` axis; each group of devices runs its
    starts one after another (``lax.map``) on rows split over its ``"data"`` axis, so a fit's
    sums are all-reduced within its group only. The result equals a Python loop of
    ``emjax.fit`` calls on one device, up to the order of summation.

    Args:
        params: initial parameters with a leading axis of C starts (C divisible by the number
            of cells of the mesh).
        x, y: the data, ideally already placed by :func:`shard_rows` (otherwise they are).
        mesh: a mesh from :func:`data_mesh`.
        num_steps, tol, atol, criterion: as in :func:`emjax.fit`.

    Returns:
        A :class:`emjax.FitResult` whose leaves have the leading axis C.
    """
    _check_mesh(mesh)
    leaves = jax.tree_util.tree_leaves(params)
    count = leaves[0].shape[0] if leaves and leaves[0].ndim else 0
    if count < 1 or any(leaf.shape[:1] != (count,) for leaf in leaves):
        raise ValueError("params must carry a leading axis of starts (one per cell) on every leaf")
    cells = mesh.shape[CELL_AXIS]
    if count % cells:
        raise ValueError(f"the {count} starts must split evenly over the {cells} cells of the mesh")
    first = jax.tree_util.tree_map(lambda leaf: leaf[0], params)
    validate(model, first, x, y)
    check_fit_arguments(model, solver, first, x, y, num_steps)
    x, y = shard_rows(mesh, x, y) if not _placed(x, mesh) else (x, y)
    return _fit_cells(model, solver, shard_cells(mesh, params), x, y, num_steps, mesh, tol, atol, criterion)


def _placed(x, mesh) -> bool:
    sharding = getattr(x, "sharding", None)
    return getattr(sharding, "mesh", None) == mesh


@eqx.filter_jit
def _fit_cells(model, solver, params, x, y, num_steps, mesh, tol, atol, criterion):
    def local(starts, x, y):
        return lax.map(
            lambda start: fit(model, solver, start, x, y, num_steps, tol=tol, atol=atol, criterion=criterion), starts
        )

    # Manual over "cells" (each group maps over its own starts); automatic over "data", where the
    # partitioner turns every mean over rows into local sums plus an all-reduce.
    run = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(CELL_AXIS), P(), P()),
        out_specs=P(CELL_AXIS),
        axis_names={CELL_AXIS},
        check_vma=False,
    )
    return run(params, x, y)
