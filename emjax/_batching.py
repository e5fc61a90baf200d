"""How batched runs (restarts, sweep cells) are laid out on a backend: one wide ``vmap`` or a loop.

Under one wide ``vmap`` every op streams all lanes' data, and every while-loop inside (the fit's
stopping rule, the M-step's Newton solves) runs until its slowest lane stops. On a GPU that is
the right trade: lanes are parallel hardware. On CPU devices a plain ``lax.map`` over lanes wins:
``benchmarks/sweep_throughput.py`` measured, with the lean EM step of issue 15, one wide ``vmap``
3-7x slower than a plain ``lax.map`` and groups of 16 or 64 up to 2x slower (docs/guides/performance.md);
and vmapped groups reach
jaxlib 0.10's batched CPU LAPACK path (Cholesky, triangular solves), which intermittently
deadlocks its thread pool on 2 cores. Single lanes never do, and compile in half the time.
(MoLinE(3), n = 2,000, 10 restarts: 4.6 s with one vmap, 1.4 s with a loop of single restarts.)
"""

from __future__ import annotations

import jax

#: Lanes per ``lax.map`` group on CPU devices when a batch size is ``"auto"``.
CPU_BATCH_SIZE = 1


def map_lanes(fn, lanes, batch_size: int | None):
    """``fn`` over the leading axis of the pytree ``lanes``: one ``vmap`` (None), a plain ``lax.map``
    (1: vmapping groups of one would turn every ``lax.cond`` into a select), or ``lax.map`` over
    vmapped groups of ``batch_size``."""
    if batch_size is None:
        return jax.vmap(fn)(lanes)
    if batch_size == 1:
        return jax.lax.map(fn, lanes)
    return jax.lax.map(fn, lanes, batch_size=batch_size)


def auto_batch_size(platform: str | None = None) -> int | None:
    """The ``"auto"`` batch size on ``platform`` (default: JAX's default backend): ``CPU_BATCH_SIZE``
    on a CPU, None (one ``vmap`` over all lanes) on an accelerator."""
    platform = jax.default_backend() if platform is None else platform
    return CPU_BATCH_SIZE if platform == "cpu" else None
