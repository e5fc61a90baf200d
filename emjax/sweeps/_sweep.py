r"""``sweep``: every cell of a named grid in one compiled program, chunked, sharded, resumable.

A *cell* is any pure function ``cell(key, **values) -> pytree of arrays``; the grid names its
keyword arguments. The flattened cell axis is cut into chunks of ``chunk_size`` cells (the last one
padded), and one compiled program runs a chunk: ``vmap`` over its cells, or ``lax.map`` over groups
of ``batch_size`` cells with ``vmap`` inside (a group's data then stays in cache across its
iterations). With several devices the chunk is split over a one-axis ``jax.sharding.Mesh`` named
``"cells"`` by ``jax.shard_map``; every device runs the same program on its share.

Keys: cell ``i`` gets ``fold_in(...fold_in(key, i_a)..., i_b)`` over its indices on ``key_axes``
(all axes by default). Cells that differ only on other axes share their key, e.g. with
``key_axes=("seed",)`` every SNR sees the same random instances (common random numbers). A cell's
result therefore does not depend on the chunking, the device count or which chunks were resumed.

Multi-host: run the same script on every host after ``jax.distributed.initialize()`` (for instance
``python -c "import jax; jax.distributed.initialize(); ..."`` or ``emjax sweep --distributed ...``
launched once per host by your scheduler, with ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID`` set). The mesh then spans every process's devices, inputs are placed with
``jax.make_array_from_callback``, results are gathered with ``multihost_utils.process_allgather``
and only process 0 writes files; the output folder must be on a file system all hosts share.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .._batching import auto_batch_size, map_lanes
from .._progress import ChunkProgress
from ._grid import Grid
from ._store import FORMAT, SweepStore, to_json

CELL_AXIS = "cells"
DEFAULT_CHUNK_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What :func:`sweep` returns.

    Attributes:
        outputs: the cell's output pytree, each leaf with leading axes ``shape`` (host NumPy arrays).
        axes: ``{axis name: values}`` as given (zipped axes as dicts).
        shape: the grid shape, one length per axis, in the grid's order.
        configuration: the JSON record that identifies this sweep (what resume compares).
        folder: the output folder, or None.
        computed_chunks, loaded_chunks: chunks run now and chunks read back from ``folder``.
        compile_seconds: time to trace and compile the chunk program (0 when nothing ran).
        run_seconds: time spent running chunks (excluding compilation and loading).
        num_devices: devices the cell axis was split over.
    """

    outputs: Any
    axes: dict
    shape: tuple
    configuration: dict
    folder: Path | None
    computed_chunks: int
    loaded_chunks: int
    compile_seconds: float
    run_seconds: float
    num_devices: int

    @property
    def cells_per_second(self) -> float:
        """Cells computed now per second of running (NaN when everything was loaded)."""
        cells = self.configuration["chunk_size"] * self.computed_chunks
        return cells / self.run_seconds if self.run_seconds > 0 else float("nan")


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def _as_key(key) -> jax.Array:
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"key must be a single PRNG key; got shape {key.shape}")
        return key
    if isinstance(key, (jax.Array, np.ndarray)) and key.dtype == np.uint32 and key.shape == (2,):
        return jax.random.wrap_key_data(jnp.asarray(key))
    raise ValueError(f"key must be an int seed or a single jax.random.key; got {key!r}")


def describe_cell(cell) -> dict:
    """A JSON description of a cell: its own ``describe()`` if it has one, else its name and source hash.

    Editing a function cell's source changes the hash, so a resumed sweep refuses a changed cell.
    """
    describe = getattr(cell, "describe", None)
    if callable(describe):
        return describe()
    target = cell.func if hasattr(cell, "func") else cell  # functools.partial
    name = getattr(target, "__qualname__", type(target).__qualname__)
    record = {"name": f"{getattr(target, '__module__', '?')}.{name}"}
    try:
        record["source_sha256"] = hashlib.sha256(inspect.getsource(target).encode()).hexdigest()
    except (OSError, TypeError):
        pass
    if hasattr(cell, "func"):
        record["partial"] = repr((cell.args, cell.keywords))
    if isinstance(cell, eqx.Module):
        record["module"] = eqx.tree_pformat(cell, short_arrays=False)
    return record


def _check_positive(value, name):
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive Python int or None; got {value!r}")


def _group_size(batch_size: int | None, share: int) -> int | None:
    """The ``lax.map`` group actually used on a device's ``share`` of cells.

    None (one ``vmap``) when the share fits in one group; otherwise the largest divisor of the
    share not above ``batch_size``, so that no remainder group needs a second compiled body.
    """
    if batch_size is None or share <= batch_size:
        return None
    return max(g for g in range(1, batch_size + 1) if share % g == 0)


def _check_signature(cell, argument_names) -> None:
    try:
        signature = inspect.signature(cell)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    try:
        signature.bind(None, **dict.fromkeys(argument_names))
    except TypeError as error:
        raise ValueError(
            f"cell cannot be called as cell(key, {', '.join(f'{n}=...' for n in argument_names)}): {error}"
        ) from None


def _cell_program(cell, num_key_axes: int, batch_size: int | None, mesh: Mesh | None):
    """The jitted program that runs one chunk: (cell arrays, key, key indices, values) -> outputs."""
    dynamic, static = eqx.partition(cell, eqx.is_array)

    def run_cells(dynamic, key, key_index, values):
        function = eqx.combine(dynamic, static)

        def one(args):
            index, kwargs = args
            cell_key = key
            for axis in range(num_key_axes):
                cell_key = jax.random.fold_in(cell_key, index[axis])
            return function(cell_key, **kwargs)

        return map_lanes(one, (key_index, values), batch_size)

    if mesh is not None:
        run_cells = jax.shard_map(
            run_cells,
            mesh=mesh,
            in_specs=(P(), P(), P(CELL_AXIS), P(CELL_AXIS)),
            out_specs=P(CELL_AXIS),
            check_vma=False,
        )
    return dynamic, jax.jit(run_cells)


def _place(array: np.ndarray, mesh: Mesh | None, split: bool):
    if mesh is None:
        return jnp.asarray(array)
    sharding = NamedSharding(mesh, P(CELL_AXIS) if split else P())
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _to_host(tree):
    if jax.process_count() > 1:  # pragma: no cover - needs several hosts
        from jax.experimental import multihost_utils

        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.tree_util.tree_map(np.asarray, tree)


def sweep(
    cell: Callable[..., Any],
    key,
    grid: Mapping,
    *,
    out: str | Path | None = None,
    chunk_size: int | None = None,
    batch_size: int | str | None = "auto",
    key_axes: Sequence[str] | None = None,
    devices: Sequence[jax.Device] | None = None,
    progress: bool | None = None,
    config: dict | None = None,
) -> SweepResult:
    r"""Run ``cell`` on every point of ``grid``: one compilation, bounded memory, resumable on disk.

    Args:
        cell: a pure function ``cell(key, **values) -> pytree of arrays`` (an ``eqx.Module`` with
            ``__call__`` works too; its array fields are traced, so step sizes inside it never
            recompile). It must be traceable under ``vmap``; it sees one cell at a time.
        key: an int seed or a ``jax.random.key``.
        grid: ``{axis name: values}``, in order; values have a leading axis of the axis length, or
            are a dict of such arrays (a zipped axis, spread into keyword arguments).
        out: a folder; each finished chunk is written there as soon as it is done, and a re-run
            with the same configuration resumes, computing only missing chunks. A folder holding
            a different configuration raises :class:`ConfigurationMismatch`.
        chunk_size: cells per compiled call and per file (default: all cells up to 1024); rounded
            up to a multiple of the device count. Memory is bounded by one chunk.
        batch_size: with an int, each device runs ``lax.map`` over groups of this many cells,
            ``vmap`` inside (cache-sized work on a CPU); None vmaps the device's whole share (the
            right choice on a GPU). ``"auto"`` (default) picks :data:`emjax._batching.CPU_BATCH_SIZE` on CPU
            devices and None on accelerators. Results are the same up to floating-point
            reassociation.
        key_axes: the axes that select a cell's key (default all; see the module notes).
        devices: devices to split the cell axis over (default all of ``jax.devices()``).
        progress: a bar over chunks on stderr: None shows it on a terminal, True always, False never.
        config: extra JSON-ready information to record (and to compare when resuming).

    Returns:
        A :class:`SweepResult`; ``result.outputs`` leaves have shape ``grid shape + cell shape``.

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> def cell(key, snr, seed):
        ...     return {"square": snr**2 + 0 * seed}
        >>> result = emjax.sweep(cell, 0, {"snr": jnp.array([1.0, 2.0, 3.0]), "seed": jnp.arange(2)},
        ...                      progress=False)
        >>> result.outputs["square"].shape, float(result.outputs["square"][2, 1])
        ((3, 2), 9.0)
    """
    if not callable(cell):
        raise ValueError(f"cell must be callable as cell(key, **values); got {cell!r}")
    grid = Grid(grid)
    argument_names = grid.argument_names()
    key = _as_key(key)
    key_axes = grid.names if key_axes is None else tuple(key_axes)
    unknown = [name for name in key_axes if name not in grid.names]
    if unknown:
        raise ValueError(f"key_axes {unknown} are not grid axes {list(grid.names)}")
    key_positions = [grid.names.index(name) for name in key_axes]
    _check_positive(chunk_size, "chunk_size")
    devices = list(jax.devices() if devices is None else devices)
    if batch_size == "auto":
        batch_size = auto_batch_size(devices[0].platform)
    _check_positive(batch_size, "batch_size")
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"progress must be None, True or False; got {progress!r}")
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"config must be a JSON-ready dict; got {type(config).__name__}")

    mesh = Mesh(np.array(devices), (CELL_AXIS,)) if len(devices) > 1 else None
    size = min(grid.num_cells, DEFAULT_CHUNK_SIZE) if chunk_size is None else chunk_size
    size = math.ceil(size / len(devices)) * len(devices)
    num_chunks = math.ceil(grid.num_cells / size)
    batch_size = _group_size(batch_size, size // len(devices))

    dynamic, program = _cell_program(cell, len(key_positions), batch_size, mesh)

    def inputs(chunk):
        flat = np.arange(chunk * size, (chunk + 1) * size)
        flat = np.minimum(flat, grid.num_cells - 1)  # pad the last chunk with copies of the last cell
        key_index = _place(grid.indices(flat)[:, key_positions], mesh, True)
        values = jax.tree_util.tree_map(lambda a: _place(a, mesh, True), grid.cell_values(flat))
        return key_index, values

    _check_signature(cell, argument_names)
    tic = time.perf_counter()
    lowered = program.lower(dynamic, key, *inputs(0))  # one trace gives the outputs; compiled only if needed
    trace_seconds = time.perf_counter() - tic
    leaves, treedef = jax.tree_util.tree_flatten_with_path(lowered.out_info)
    if not leaves:
        raise ValueError("cell must return a non-empty pytree of arrays")
    outputs = [
        {"name": f"out{i}", "path": jax.tree_util.keystr(path), "shape": list(leaf.shape[1:]), "dtype": str(leaf.dtype)}
        for i, (path, leaf) in enumerate(leaves)
    ]

    configuration = {
        "cell": describe_cell(cell),
        "axes": list(grid.names),
        "grid": grid.describe(),
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        "key_axes": list(key_axes),
        "chunk_size": size,
        "batch_size": batch_size,
        "outputs": outputs,
        "user": config,
    }
    record = to_json(
        {  # the JSON form: what sweep.json holds, what a re-run compares, what we return
            "format": FORMAT,
            "configuration": configuration,
            "shape": list(grid.shape),
            "num_cells": grid.num_cells,
            "num_chunks": num_chunks,
            "versions": {name: _package_version(name) for name in ("emjax", "jax", "jaxlib", "numpy")},
            "devices": [str(device) for device in devices],
        }
    )
    store = None
    if out is not None:
        store = SweepStore(out, record, num_chunks)
        store.open(writer=jax.process_index() == 0)
    results = [np.empty((grid.num_cells, *o["shape"]), o["dtype"]) for o in outputs]
    bar = ChunkProgress(num_chunks, grid.num_cells, progress)
    pending = []
    loaded = 0
    for chunk in range(num_chunks):
        start, stop = chunk * size, min((chunk + 1) * size, grid.num_cells)
        shapes_here = {o["name"]: (stop - start, *o["shape"]) for o in outputs}
        arrays = store.load(chunk, shapes_here) if store is not None else None
        if arrays is None:
            pending.append(chunk)
            continue
        for result, o in zip(results, outputs, strict=True):
            result[start:stop] = arrays[o["name"]]
        loaded += 1
        bar.skip(stop - start)

    compile_seconds = run_seconds = 0.0
    if pending:
        tic = time.perf_counter()
        compiled = lowered.compile()
        compile_seconds = trace_seconds + time.perf_counter() - tic
        bar.restart_clock()
        for chunk in pending:
            start, stop = chunk * size, min((chunk + 1) * size, grid.num_cells)
            tic = time.perf_counter()
            host = _to_host(compiled(dynamic, key, *inputs(chunk)))
            run_seconds += time.perf_counter() - tic
            host_leaves = jax.tree_util.tree_leaves(host)
            arrays = {o["name"]: np.asarray(leaf[: stop - start]) for o, leaf in zip(outputs, host_leaves, strict=True)}
            if store is not None and jax.process_index() == 0:
                store.save(chunk, arrays)
            for result, o in zip(results, outputs, strict=True):
                result[start:stop] = arrays[o["name"]]
            bar.advance(stop - start)

    shaped = [result.reshape(grid.shape + result.shape[1:]) for result in results]
    return SweepResult(
        outputs=jax.tree_util.tree_unflatten(treedef, shaped),
        axes=dict(grid.values),
        shape=grid.shape,
        configuration=record["configuration"],
        folder=None if out is None else Path(out),
        computed_chunks=len(pending),
        loaded_chunks=loaded,
        compile_seconds=compile_seconds,
        run_seconds=run_seconds,
        num_devices=len(devices),
    )
