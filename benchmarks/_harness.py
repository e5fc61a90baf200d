"""Machinery shared by the benchmark scripts (``roofline.py``, ``sweep_throughput.py``, ``profile_step.py``).

One job: run each measurement in its own Python process and report it. A script calls
:func:`run_worker` with a JSON spec; the child (the same script with ``--worker SPEC``) calls
:func:`serve_worker`, which runs the named worker function and prints its result as one tagged JSON
line that the parent reads back. A worker sets up JAX with :func:`setup_jax` (float64, a forced
host device count, emjax from an optional ``--emjax-path`` directory) before anything imports jax.
Also here: peak memory (:func:`rss_mb`), repeated timings (:func:`median_time`, :func:`min_time`,
:func:`time_calls`), markdown tables (:func:`fmt`, :func:`table`) and whether an R anchor can run
(:func:`r_package_unavailable_reason`).

Scripts import it as ``from _harness import ...``: Python puts a script's own folder first on
``sys.path``, so this works from any working directory.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

RESULT_TAG = "BENCH-RESULT-JSON "


# ============================================================================ R anchors


def r_package_unavailable_reason(package: str, install_hint: str = "") -> str | None:
    """Why R's ``package`` cannot be run here (no Rscript, or the package missing), or None when it can."""
    hint = f" ({install_hint})" if install_hint else ""
    if shutil.which("Rscript") is None:
        return f"Rscript not found{hint}"
    check = f'quit(status = if (requireNamespace("{package}", quietly = TRUE)) 0 else 1)'
    try:
        done = subprocess.run(["Rscript", "--vanilla", "-e", check], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"Rscript could not be run ({error})"
    return None if done.returncode == 0 else f"the R package {package} is not installed{hint}"


# ============================================================================ memory and time


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    """Call ``fn()`` ``repeats`` times; return (median seconds, every time). NaN for no repeats."""
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return (statistics.median(times) if times else math.nan), times


def min_time(fn, repeats: int, warmup: bool = True) -> float:
    """Best of ``repeats`` calls of ``fn()`` in seconds, after one untimed call (``warmup``)."""
    if warmup:
        fn()
    return min(median_time(fn, repeats)[1] or [math.nan])


def time_calls(fn, repeats: int, seconds: float) -> dict:
    """A first (compiling) call, then as many timed calls as fit in ``seconds`` (1 to ``repeats``).

    ``fn`` must block until its work is done (``jax.block_until_ready``)."""
    tic = time.perf_counter()
    fn()
    first = time.perf_counter() - tic
    _, times = median_time(fn, 1)
    extra = int(min(repeats - 1, max(0, seconds // max(times[0], 1e-9) - 1)))
    times += median_time(fn, extra)[1]
    return {"first_call_s": first, "seconds": statistics.median(times), "repeats": len(times), "times": times}


# ============================================================================ workers (subprocesses)


def import_emjax(path: str | None = None):
    """``import emjax``, from ``path`` (a directory holding an ``emjax`` package) when given."""
    if path:
        sys.path.insert(0, os.path.abspath(path))
    import emjax

    if path and not os.path.abspath(emjax.__file__).startswith(os.path.abspath(path)):
        raise ImportError(f"emjax was imported from {emjax.__file__}, not from {path}")
    return emjax


def setup_jax(dtype: str | None = None, devices: int = 1, emjax_path: str | None = None):
    """In a worker, before anything imports jax: ``devices`` host devices, float64 when asked.

    Returns ``(jax, emjax)``; emjax comes from ``emjax_path`` when given (see :func:`import_emjax`)."""
    if devices > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}".strip()
    import jax

    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    return jax, import_emjax(emjax_path)


def run_worker(script: str, spec: dict, timeout: float = 900, env: dict | None = None) -> dict:
    """Run ``python script --worker SPEC`` in a fresh process; return its JSON result or ``{"error": ...}``.

    ``process_s`` (wall seconds of the whole subprocess, imports included) is added to the result."""
    command = [sys.executable, os.path.abspath(script), "--worker", json.dumps(spec)]
    tic = time.perf_counter()
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=None if env is None else {**os.environ, **env}
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG) :])
            result["process_s"] = time.perf_counter() - tic
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit status {proc.returncode}"}


def serve_worker(workers: dict, spec_json: str) -> int:
    """The child's side of :func:`run_worker`: run ``workers[spec["task"]](spec)``, print the tagged result."""
    spec = json.loads(spec_json)
    result = workers[spec["task"]](spec)
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


def error_line(error: BaseException, width: int = 200) -> str:
    """``Type: first line of the message`` (cut to ``width``), for a report."""
    lines = str(error).splitlines() or [""]
    return f"{type(error).__name__}: {lines[0][:width]}"


# ============================================================================ reports


def fmt(value, digits: int = 3) -> str:
    """A table cell: strings as they are, None/NaN as '-', numbers to ``digits`` significant digits."""
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def table(headers, rows) -> str:
    """A markdown table; cells through :func:`fmt`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(out: str | None, lines: list[str], json_path: str | None = None, data=None) -> None:
    """Write the report's markdown ``lines`` to ``out`` and ``data`` as JSON to ``json_path`` (each if given)."""
    if out:
        with open(out, "w") as handle:
            handle.write("\n".join(lines) + "\n")
    if json_path:
        with open(json_path, "w") as handle:
            json.dump(data, handle, indent=1)
