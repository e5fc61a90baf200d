r"""Meshes for data-parallel EM: rows of the data on one axis, independent fits (cells) on another.

Every M-step statistic of EM is a mean over rows: responsibilities, weighted Gram matrices, the
Newton gradients and Hessians of the gate and expert sub-problems. With x and y sharded by rows
over the ``"data"`` axis of a :class:`jax.sharding.Mesh`, XLA's partitioner computes each of those
sums on the rows a device holds and adds them with one all-reduce per statistic; x itself never
moves between devices. Every public emjax function (``fit``, ``em_step``, the information
matrices, ...) therefore runs data-parallel unchanged once its inputs are placed with
:func:`shard_rows`, and gives the same iterates as on one device up to the order of summation.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .._validation import check_features, check_labels, data_arguments

DATA_AXIS = "data"
CELL_AXIS = "cells"


def data_mesh(num_cells: int = 1, devices=None) -> Mesh:
    """A 2-D mesh ``("cells", "data")``: ``num_cells`` groups of devices, each splitting the rows.

    Args:
        num_cells: how many independent fits run side by side (1: every device works on the
            rows of one fit). Must divide the number of devices.
        devices: the devices to use (default: ``jax.devices()``, every device of every process).

    Example:
        >>> mesh = data_mesh()
        >>> mesh.axis_names, mesh.shape["cells"]
        (('cells', 'data'), 1)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not isinstance(num_cells, int) or isinstance(num_cells, bool) or num_cells < 1:
        raise ValueError(f"num_cells must be a Python int >= 1; got {num_cells!r}")
    if not devices:
        raise ValueError("devices must not be empty")
    if len(devices) % num_cells:
        raise ValueError(f"num_cells={num_cells} must divide the number of devices ({len(devices)})")
    return Mesh(np.array(devices, dtype=object).reshape(num_cells, -1), (CELL_AXIS, DATA_AXIS))


def _check_mesh(mesh) -> None:
    if not isinstance(mesh, Mesh) or DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must be a jax.sharding.Mesh with a {DATA_AXIS!r} axis (see data_mesh); got {mesh!r}")


@data_arguments
def shard_rows(mesh: Mesh, x, y=None):
    """Place x (n, d) and y (n,) on ``mesh`` split by rows over ``"data"`` (replicated over other axes).

    In a multi-process run (:func:`initialize`), each process passes the rows it holds and gets
    back global arrays made of every process's rows, in process order.

    Raises:
        ValueError: bad shapes, or a global row count that the ``"data"`` axis does not divide
            (drop or add rows: padding would change every mean, so emjax does not pad).

    Example:
        >>> import numpy as np
        >>> x, y = shard_rows(data_mesh(), np.ones((4, 2)), np.zeros(4))
        >>> x.shape, tuple(x.sharding.spec)
        ((4, 2), ('data', None))
    """
    _check_mesh(mesh)
    n, _ = check_features(x)
    if y is not None:
        check_labels(y, n)
    parts = mesh.shape[DATA_AXIS]
    total = n * jax.process_count()
    if total % parts:
        raise ValueError(
            f"the {total} rows must split evenly over the {parts} devices of the {DATA_AXIS!r} axis; "
            f"use a multiple of {parts} rows (emjax does not pad: padding would change every mean)"
        )
    row_sharding = NamedSharding(mesh, P(DATA_AXIS, None))
    place = _local_to_global if jax.process_count() > 1 else jax.device_put
    x = place(x, row_sharding)
    if y is None:
        return x
    return x, place(y, NamedSharding(mesh, P(DATA_AXIS)))


def _local_to_global(local, sharding):
    return jax.make_array_from_process_local_data(sharding, np.asarray(local))


def shard_cells(mesh: Mesh, tree):
    """Place a pytree whose leaves have a leading cells axis on ``mesh``, split over ``"cells"``."""
    _check_mesh(mesh)
    sharding = NamedSharding(mesh, P(CELL_AXIS))
    return jax.tree_util.tree_map(lambda leaf: jax.device_put(leaf, sharding), tree)
