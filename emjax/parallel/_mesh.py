r"""Meshes for data-parallel EM: rows of the data on one axis, independent fits (cells) on another.

Every M-step statistic of EM is a mean over rows: responsibilities, weighted Gram matrices, the
Newton gradients and Hessians of the gate and expert sub-problems. With x and y sharded by rows
over the ``"data"`` axis of a :class:`jax.sharding.Mesh`, XLA's partitioner computes each of those
sums on the rows a device holds and adds them with one all-reduce per statistic; x itself never
moves between devices. Every public emjax function (``fit``, ``em_step``, the information
matrices, ...) therefore runs data-parallel unchanged once its inputs are placed with
:func:`shard_rows`, and gives the same iterates as on one device up to the order of summation.

A row count that the ``"data"`` axis does not divide is padded only on request, and only with
observation weights: ``shard_rows(mesh, x, y, pad=True)`` appends copies of the last row with
weight 0 and returns the weights, to be passed on as ``weights=``. Every statistic is then
$\sum_n v_n f_n / \sum_n v_n$, to which a row of weight 0 adds nothing, so the padded fit is the
unpadded one (up to the order of summation). Without weights padding would change every mean, so
emjax never pads silently.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .._dtypes import working_dtype
from .._padding import pad_rows
from .._validation import check_features, check_labels, check_weights, data_arguments

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
def shard_rows(mesh: Mesh, x, y=None, *, weights=None, pad: bool = False):
    r"""Place x (n, d), y (n,) and observation weights (n,) on ``mesh``, split by rows over ``"data"``.

    Every array is split by rows over the ``"data"`` axis and replicated over the other axes.

    **Padding.** The ``"data"`` axis must divide the (global) row count. With ``pad=True`` a row
    count it does not divide is padded up to the next multiple of the axis size: the padded rows of
    x (and y) are copies of the last real row, so that no function sees values out of its range
    (labels a model cannot produce, say), and their weights are 0. Pass the returned weights on as
    ``weights=`` to every function (``emjax.fit(..., weights=w)``). This is exact: with weights
    $v_n \ge 0$ every statistic emjax averages over rows (the loss, the E-step's targets, the
    M-step's Gram matrices, gradients and Hessians, the information matrices) has the form
    $\sum_n v_n f_n / \sum_n v_n$ (:mod:`emjax.models._weighted`), to which a row with $v_n = 0$
    adds nothing in either sum. Padding rows are finite copies of a real row, so $0 \cdot f_n = 0$
    exactly. Without weights padding would change every mean, so emjax never pads unasked.
    Padding therefore needs a model that takes weights (``supports_weights``: the K-expert models,
    not the symmetric ones), and every later call on the padded arrays must pass the weights
    (``init_params`` and ``fit_restarts`` included: their starts weigh the rows too).

    **What is returned.**

    * ``weights=None, pad=False``: ``x``, or ``(x, y)`` when y is given (as before weights existed);
    * ``weights`` given, or ``pad=True``: ``(x, weights)``, or ``(x, y, weights)`` when y is given.
      With ``pad=True`` and ``weights=None`` the weights are 1 for the real rows (0 for the padded
      ones), in x's working float dtype; given weights keep their dtype, padded with 0. Even when
      nothing needs padding, ``pad=True`` returns the weights, so the caller's code is the same for
      every row count.

    **Several processes** (:func:`initialize`): each process passes the rows it holds (every process
    the same number) and gets back global arrays made of every process's rows, in process order.
    ``pad=True`` is refused there: the padded rows would have to go to one process and every
    process's shape would have to agree, which needs a decision this function cannot make alone.
    Pad each process's rows yourself (copies of a row with weight 0) to a common count that makes
    the global count divisible, and pass ``weights=``. Each process checks that its weights are
    finite and >= 0; that their global sum is positive is not checked (a process may hold only
    zero weights), and a zero global sum makes the fit's loss non-finite.

    Args:
        mesh: a mesh with a ``"data"`` axis (:func:`data_mesh`).
        x: features (n, d).
        y: labels (n,), or None.
        weights: observation weights $v_n \ge 0$ (n,), finite, not all 0 (keyword only).
        pad: pad the rows up to a multiple of the ``"data"`` axis size, with weight-0 rows (keyword only).

    Raises:
        ValueError: bad shapes or values of x, y or weights; a global row count that the ``"data"``
            axis does not divide when ``pad=False``; ``pad=True`` in a multi-process run.

    Example:
        >>> import numpy as np
        >>> x, y = shard_rows(data_mesh(), np.ones((4, 2)), np.zeros(4))
        >>> x.shape, tuple(x.sharding.spec)
        ((4, 2), ('data', None))
        >>> x, y, w = shard_rows(data_mesh(), np.ones((3, 2)), np.zeros(3), pad=True)
        >>> x.shape[0] % data_mesh().shape["data"], float(w.sum()), tuple(w.sharding.spec)
        (0, 3.0, ('data',))
    """
    _check_mesh(mesh)
    if not isinstance(pad, bool):
        raise ValueError(f"pad must be True or False; got {pad!r}")
    n, _ = check_features(x)
    if y is not None:
        check_labels(y, n)
    processes = jax.process_count()
    if weights is not None:  # with several processes, this one's rows only: their sum may be 0
        check_weights(weights, n, positive_total=processes == 1)
    parts = mesh.shape[DATA_AXIS]
    if pad:
        if processes > 1:
            raise ValueError(
                f"pad=True is for a single process; this run has {processes}. Pad each process's rows yourself "
                "(copies of a row with weight 0) to a common count that makes the global count a multiple of "
                f"{parts}, and pass weights="
            )
        x, y, weights = pad_rows(-n % parts, x, y, weights, working_dtype(x))
    total = x.shape[0] * processes
    if total % parts:
        raise ValueError(
            f"the {total} rows must split evenly over the {parts} devices of the {DATA_AXIS!r} axis; "
            f"use a multiple of {parts} rows, or pass pad=True to pad with rows of weight 0 (then pass the "
            "returned weights on as weights=; without weights, padding would change every mean)"
        )
    place = _local_to_global if processes > 1 else jax.device_put
    x = place(x, NamedSharding(mesh, P(DATA_AXIS, None)))
    vector = NamedSharding(mesh, P(DATA_AXIS))
    placed = (x,) + (() if y is None else (place(y, vector),))
    if weights is not None:
        placed += (place(weights, vector),)
    return placed[0] if len(placed) == 1 else placed


def _local_to_global(local, sharding):
    return jax.make_array_from_process_local_data(sharding, np.asarray(local))


def shard_cells(mesh: Mesh, tree):
    """Place a pytree whose leaves have a leading cells axis on ``mesh``, split over ``"cells"``."""
    _check_mesh(mesh)
    sharding = NamedSharding(mesh, P(CELL_AXIS))
    return jax.tree_util.tree_map(lambda leaf: jax.device_put(leaf, sharding), tree)
