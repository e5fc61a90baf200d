r"""Where the time of one EM step goes: the XLA ops of a jitted ``emjax.fit`` and their times.

What it measures
----------------
For each configuration (default: SymMoLinE and SymMoLogE at the sweep benchmark's shape, n = 2000,
d = 10, and MoLinE(3) at n = 2000, d = 5) and each dtype (float32, float64), in its own subprocess
(``benchmarks/_harness.py``): the jitted ``emjax.fit(model, emjax.em(), start, x, y, 100)`` (truth
``emjax.testing.random_params(model, key, d, gate_norm=2, expert_norm=2)``, data ``emjax.sample``,
start ``emjax.testing.perturb(truth, key)`` for the symmetric models and ``emjax.init_params`` for
MoLinE) is compiled, timed untraced (median of ``--repeats`` calls), then run ``--traced`` times
under ``jax.profiler.trace(dir, create_perfetto_trace=True)``.

The CPU trace of JAX 0.10.1 has one event per executed XLA op (thunk): the events whose ``args``
hold ``hlo_op`` (name, ``ts``, ``dur`` in microseconds), nested in time (a ``while`` op's event
spans the ops of its body). The script takes each op's *self* time (its duration minus that of the
ops nested in it, so a ``while``/``conditional`` keeps only its loop control and dispatch) and adds
it up by op name, over the traced calls, divided by calls x EM steps: calls and microseconds per EM
step. The op's HLO opcode (fusion kind and the costly opcodes inside the fused computation: dot, exp,
log1p, tanh, divide, ...; custom-call target) is read from the compiled module's text.
Tracing costs something per op, so the traced total per step is above the untraced time; shares are
of the traced total.

How to run
----------
From the repository root::

    python benchmarks/profile_step.py                       # all configurations, both dtypes (about 1 minute)
    python benchmarks/profile_step.py --emjax-path /tmp/before --out before.md   # an older copy of emjax
    python benchmarks/profile_step.py --configs sym-line:2000:10 --dtypes float64 --top 30

The machine is shared and noisy: compare shares and ratios within one run.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time

from _harness import median_time, run_worker, serve_worker, setup_jax, table, write_outputs

CONFIGS = ("sym-line:2000:10", "sym-loge:2000:10", "moline3:2000:5")
NAMES = {"sym-line": "SymMoLinE(1)", "sym-loge": "SymMoLogE()", "moline3": "MoLinE(3)"}
SUFFIX = re.compile(r"(\.clone)?(\.\d+)+$")


def stem(name: str) -> str:
    """An op name without its numbering: ``dot_general.35`` -> ``dot_general``."""
    previous = None
    while previous != name:
        previous, name = name, SUFFIX.sub("", name)
    return name


INTERESTING = ("dot", "exponential", "log", "log-plus-one", "tanh", "logistic", "divide", "sqrt", "rsqrt", "power")


def hlo_kinds(text: str) -> dict:
    """Op name -> what it is, from the compiled module's HLO text.

    ``dot``, ``while``, ``custom-call(lapack_spotrf_ffi)``, or for a fusion its kind and the costly
    opcodes inside its fused computation, e.g. ``fusion(kLoop): exponential, log-plus-one``."""
    instruction = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\((.*)$")
    computation = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
    inside = {}  # computation name -> opcodes of its instructions
    kinds = {}
    current = None
    for line in text.splitlines():
        header = computation.match(line)
        if header and "=" not in line.split("{")[0]:
            current = header.group(1)
            inside[current] = set()
            continue
        match = instruction.match(line)
        if not match:
            continue
        name, opcode, rest = match.groups()
        if current is not None:
            inside[current].add(opcode)
        if opcode == "fusion":
            kind = re.search(r"kind=(\w+)", rest)
            called = re.search(r"calls=%?([\w.\-]+)", rest)
            kinds[name] = (f"fusion({kind.group(1)})" if kind else "fusion", called.group(1) if called else None)
        elif opcode == "custom-call":
            target = re.search(r'custom_call_target="([^"]+)"', rest)
            kinds[name] = (f"custom-call({target.group(1)})" if target else opcode, None)
        else:
            kinds[name] = (opcode, None)
    described = {}
    for name, (kind, called) in kinds.items():
        costly = sorted(inside.get(called, set()) & set(INTERESTING)) if called else []
        described[name] = kind + (": " + ", ".join(costly) if costly else "")
    return described


def self_times(events) -> dict:
    """{op name: [count, total self microseconds]} over XLA op events, nesting resolved per thread."""
    ops = [e for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})]
    by_thread = collections.defaultdict(list)
    for event in ops:
        by_thread[event.get("pid"), event.get("tid")].append(event)
    totals = collections.defaultdict(lambda: [0, 0.0])
    for thread in by_thread.values():
        thread.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [end, name, children duration]

        def close(entry, dur):
            totals[entry[1]][0] += 1
            totals[entry[1]][1] += dur - entry[2]

        for event in thread:
            start, dur = event["ts"], event["dur"]
            while stack and stack[-1][0] <= start + 1e-3:
                entry = stack.pop()
                close(entry, entry[3])
            if stack:
                stack[-1][2] += dur
            stack.append([start + dur, event["name"], 0.0, dur])
        while stack:
            entry = stack.pop()
            close(entry, entry[3])
    return dict(totals)


def make_problem(jax, emjax, name, n, d):
    import jax.numpy as jnp

    k_truth, k_data, k_start = jax.random.split(jax.random.key(0), 3)
    if name == "moline3":
        model = emjax.MoLinE(3)
        truth = emjax.testing.random_params(model, k_truth, d)
        x, y = emjax.sample(model, truth, k_data, n)
        return model, x, y, emjax.init_params(model, k_start, x, y)
    model = emjax.SymMoLinE(1.0) if name == "sym-line" else emjax.SymMoLogE()
    truth = emjax.testing.random_params(model, k_truth, d, gate_norm=2.0, expert_norm=jnp.asarray(2.0))
    x, y = emjax.sample(model, truth, k_data, n)
    return model, x, y, emjax.testing.perturb(truth, k_start)


def worker_profile(spec):
    jax, emjax = setup_jax(spec["dtype"], emjax_path=spec.get("emjax_path"))
    model, x, y, start = make_problem(jax, emjax, spec["model"], spec["n"], spec["d"])
    steps = spec["steps"]
    fit = jax.jit(lambda p, x, y: emjax.fit(model, emjax.em(), p, x, y, steps))
    tic = time.perf_counter()
    compiled = fit.lower(start, x, y).compile()
    compile_s = time.perf_counter() - tic

    def run():
        jax.block_until_ready(compiled(start, x, y))

    run()
    seconds, _ = median_time(run, spec["repeats"])
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            for _ in range(spec["traced"]):
                run()
        files = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)
        if not files:
            return {"error": f"no *.trace.json.gz under {folder}"}
        with gzip.open(files[0]) as handle:
            trace = json.load(handle)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    per = spec["traced"] * steps
    ops = {name: [count / per, us / per] for name, (count, us) in self_times(events).items()}
    kinds = hlo_kinds(compiled.as_text())
    return {
        "jax": jax.__version__,
        "emjax_file": emjax.__file__,
        "compile_s": compile_s,
        "us_per_step": seconds / steps * 1e6,
        "ops": {name: {"calls": c, "us": us, "kind": kinds.get(name, "?")} for name, (c, us) in ops.items()},
    }


WORKERS = {"profile": worker_profile}


def report_lines(label, result, top):
    """Markdown for one configuration: by op (top ``top``), then by op stem and by HLO opcode."""
    if "error" in result:
        return [f"### {label}", "", f"failed: {result['error']}", ""]
    ops = result["ops"]
    total = sum(op["us"] for op in ops.values())
    lines = [
        f"### {label}",
        "",
        f"Untraced: **{result['us_per_step']:.0f} µs per EM step** (jitted fit, median); traced ops add up to "
        f"{total:.0f} µs per step; {len(ops)} distinct ops; compile {result['compile_s']:.1f} s.",
        "",
    ]
    ordered = sorted(ops.items(), key=lambda item: -item[1]["us"])
    rows = [[name, op["kind"], op["calls"], op["us"], f"{100 * op['us'] / total:.1f}%"] for name, op in ordered[:top]]
    calls = sum(op["calls"] for op in ops.values())
    overhead = (total - result["us_per_step"]) / calls
    lines[2] += (
        f" Tracing adds about {overhead:.2f} µs to each of the {calls:.0f} op executions per step, which"
        " inflates the shares of the many small ops."
        if overhead > 0
        else f" ({calls:.0f} op executions per step; the untraced calls ran slower than the traced ones: busy machine.)"
    )
    rest = ordered[top:]
    if rest:
        us = sum(op["us"] for _, op in rest)
        rows.append(
            [f"({len(rest)} other ops)", "", sum(op["calls"] for _, op in rest), us, f"{100 * us / total:.1f}%"]
        )
    lines += [table(["op", "HLO opcode", "calls / EM step", "µs / EM step", "share"], rows), ""]
    for title, key in (
        ("op name without numbering", lambda n, op: stem(n)),
        ("HLO opcode", lambda n, op: op["kind"].split(":")[0]),
    ):
        groups = collections.defaultdict(lambda: [0.0, 0.0])
        for name, op in ops.items():
            group = groups[key(name, op)]
            group[0] += op["calls"]
            group[1] += op["us"]
        ordered = sorted(groups.items(), key=lambda item: -item[1][1])[:top]
        rows = [[g, c, us, f"{100 * us / total:.1f}%"] for g, (c, us) in ordered]
        lines += [f"By {title}:", "", table([title, "calls / EM step", "µs / EM step", "share"], rows), ""]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help="comma-separated model:n:d (models sym-line, sym-loge, moline3)"
    )
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--steps", type=int, default=100, help="EM steps per fit (default 100)")
    parser.add_argument("--repeats", type=int, default=10, help="untraced timed calls (default 10)")
    parser.add_argument("--traced", type=int, default=3, help="traced calls (default 3)")
    parser.add_argument("--top", type=int, default=15, help="rows per table (default 15)")
    parser.add_argument("--emjax-path", default=None, help="import emjax from this directory (e.g. an older copy)")
    parser.add_argument("--out", default=None, help="also write the markdown report to this file")
    parser.add_argument("--json", default=None, help="also write every measurement to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return serve_worker(WORKERS, args.worker)

    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    source = f"emjax from `{args.emjax_path}`" if args.emjax_path else "the installed emjax"
    say(f"## Profile of one EM step ({source})")
    say()
    say(
        f"`python benchmarks/profile_step.py{' --emjax-path ' + args.emjax_path if args.emjax_path else ''}`: "
        f"self time of each XLA op of a jitted `emjax.fit(model, emjax.em(), start, x, y, {args.steps})`, "
        f"per EM step, from `jax.profiler.trace` ({args.traced} traced calls)."
    )
    say()
    results = {}
    for config in args.configs.split(","):
        model, n, d = config.strip().split(":")
        for dtype in args.dtypes.split(","):
            spec = {"task": "profile", "model": model, "n": int(n), "d": int(d), "dtype": dtype.strip()}
            spec.update(steps=args.steps, repeats=args.repeats, traced=args.traced, emjax_path=args.emjax_path)
            result = run_worker(__file__, spec, timeout=900)
            label = f"{NAMES.get(model, model)}, n = {n}, d = {d}, {dtype}"
            results[label] = result
            for line in report_lines(label, result, args.top):
                say(line)
    write_outputs(args.out, lines, args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
