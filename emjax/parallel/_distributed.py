r"""Multi-process (multi-host) runs: every process holds some rows; the mesh spans every process's devices.

Launch the same script once per host (or per process), for example on two hosts::

    # on host 0 (its address is 10.0.0.1)
    EMJAX_COORDINATOR=10.0.0.1:12345 EMJAX_NUM_PROCESSES=2 EMJAX_PROCESS_ID=0 python train.py
    # on host 1
    EMJAX_COORDINATOR=10.0.0.1:12345 EMJAX_NUM_PROCESSES=2 EMJAX_PROCESS_ID=1 python train.py

where ``train.py`` calls :func:`initialize` before anything else touches JAX, builds
``data_mesh()`` (it spans every process's devices), and passes the rows *this* process holds to
:func:`shard_rows`. From there ``emjax.fit`` runs unchanged; every process gets the same result.
"""

from __future__ import annotations

import os

import jax


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Join a multi-process run (``jax.distributed.initialize``), from arguments or the environment.

    Args:
        coordinator_address: ``host:port`` of process 0 (default: ``$EMJAX_COORDINATOR``).
        num_processes: how many processes take part (default: ``$EMJAX_NUM_PROCESSES``).
        process_id: this process's index, 0 to num_processes - 1 (default: ``$EMJAX_PROCESS_ID``).

    On CPU-only machines the processes exchange sums through Gloo (JAX's CPU collectives), which
    this function switches on; on GPUs JAX uses NCCL by itself. Call it once, first.

    Raises:
        ValueError: a setting is missing or malformed.
    """
    coordinator_address = coordinator_address or os.environ.get("EMJAX_COORDINATOR")
    num_processes = _integer(num_processes, "EMJAX_NUM_PROCESSES", "num_processes")
    process_id = _integer(process_id, "EMJAX_PROCESS_ID", "process_id")
    if not coordinator_address or ":" not in coordinator_address:
        raise ValueError(
            f"coordinator_address (or $EMJAX_COORDINATOR) must be 'host:port' of process 0; got {coordinator_address!r}"
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"need num_processes >= 1 and 0 <= process_id < num_processes; got {num_processes}, {process_id}"
        )
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or not _has_accelerator():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )


def _integer(value, variable: str, name: str) -> int:
    if value is None:
        value = os.environ.get(variable)
        if value is None:
            raise ValueError(f"{name} (or ${variable}) must be given")
    try:
        return int(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} (or ${variable}) must be an integer; got {value!r}") from error


def _has_accelerator() -> bool:
    # Asking jax.devices() here would start the backends before jax.distributed.initialize, which
    # must come first; look for the plugins instead.
    import importlib.util

    return any(
        importlib.util.find_spec(name) is not None
        for name in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")
    )
