"""Run in a subprocess by tests/test_parallel.py, with several (forced) host devices or as one of several processes.

    python tests/sharded_worker.py devices          # 4 forced host devices in one process
    python tests/sharded_worker.py process ADDR N I # process I of N joined at ADDR (2 host devices each)

Prints one line ``RESULT {json}``.
"""

import json
import os
import re
import sys

import numpy as np

# Nothing below runs on import (pytest collects this file for doctests): the worker starts in __main__,
# which sets XLA_FLAGS before JAX is imported.


def flat(params):
    return np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(params)])


def problem(model, n=4000, d=3):
    if isinstance(model, emjax.MixtureOfExperts):
        truth = emjax.testing.random_params(model, jax.random.key(0), d=d)
        x, y = emjax.sample(model, truth, jax.random.key(1), n)
        start = emjax.init_params(model, jax.random.key(2), x, y)
    else:
        truth = emjax.testing.random_params(model, jax.random.key(0), d, 3.0, 3.0)
        x, y = emjax.sample(model, truth, jax.random.key(1), n)
        start = emjax.SymParams(w=0.1 * np.ones(d), beta=np.ones(d))
    return np.asarray(x), np.asarray(y), start


def devices():
    out = {"devices": jax.device_count()}
    mesh = parallel.data_mesh()
    # moline_20k: the row count and width at which jaxlib 0.10.2 miscompiled the σ update (issue 13). It is the
    # MoLinE(3) check (each fit is two compilations; MoLinE(3) at n = 4000 was the same check on fewer rows, and
    # that size still runs below: the compiled step's collectives, the cells mesh and the two-process run).
    for name, model, n, d in (
        ("symlog", emjax.SymMoLogE(), 4000, 3),
        ("mologe", emjax.MoLogE(2, 3), 4000, 3),
        ("moline_20k", emjax.MoLinE(3), 20_000, 5),
    ):
        x, y, start = problem(model, n, d)
        single = emjax.fit(model, emjax.em(), start, x, y, 15)
        xs, ys = parallel.shard_rows(mesh, x, y)
        sharded = emjax.fit(model, emjax.em(), start, xs, ys, 15)
        out[name] = {
            "params": float(np.max(np.abs(flat(single.params) - flat(sharded.params)))),
            "losses": float(np.max(np.abs(np.asarray(single.losses) - np.asarray(sharded.losses)))),
            "x_spec": str(xs.sharding.spec),
        }
    # What the compiled EM step does with the rows: local sums and all-reduces, never a gather of x.
    model = emjax.MoLinE(3)
    x, y, start = problem(model)
    xs, ys = parallel.shard_rows(mesh, x, y)
    text = jax.jit(lambda p, a, b: emjax.em_step(model, p, a, b)).lower(start, xs, ys).compile().as_text()
    out["all_reduce"] = len(re.findall(r"all-reduce(?:-start)?\(", text))
    out["all_gather"] = len(re.findall(r"all-gather(?:-start)?\(", text))
    out["collective_permute"] = len(re.findall(r"collective-permute(?:-start)?\(", text))
    # Observation weights on sharded rows: the weighted fit equals the single-device weighted fit.
    ws = np.array(jax.random.uniform(jax.random.key(5), (len(y),), minval=0.0, maxval=3.0))
    ws[::7] = 0.0  # some rows with weight 0, as padding has
    single = emjax.fit(model, emjax.em(), start, x, y, 20, weights=ws)
    xs, ys, wss = parallel.shard_rows(mesh, x, y, weights=ws)
    sharded = emjax.fit(model, emjax.em(), start, xs, ys, 20, weights=wss)
    out["weighted"] = {
        "params": float(np.max(np.abs(flat(single.params) - flat(sharded.params)))),
        "losses": float(np.max(np.abs(np.asarray(single.losses) - np.asarray(sharded.losses)))),
        "w_spec": str(wss.sharding.spec),
    }
    # pad=True: 3999 rows over 4 devices become 4000 (one copy of the last row, weight 0); the padded weighted fit
    # is the unweighted single-device fit of the 3999 rows (it reuses the sharded weighted program above).
    single = emjax.fit(model, emjax.em(), start, x[:-1], y[:-1], 20)
    xp, yp, wp = parallel.shard_rows(mesh, x[:-1], y[:-1], pad=True)
    padded = emjax.fit(model, emjax.em(), start, xp, yp, 20, weights=wp)
    out["padded"] = {
        "rows": int(xp.shape[0]),
        "weights": np.asarray(wp).tolist()[-2:],
        "tail_is_last_row": bool(np.array_equal(np.asarray(xp)[-1], x[-2]) and np.asarray(yp)[-1] == y[-2]),
        "params": float(np.max(np.abs(flat(single.params) - flat(padded.params)))),
        "loss": float(abs(float(single.losses[-1]) - float(padded.losses[-1]))),
        "losses": float(np.max(np.abs(np.asarray(single.losses) - np.asarray(padded.losses)))),
    }
    # Two cells of two data devices each: four starts, two per cell.
    cells_mesh = parallel.data_mesh(num_cells=2)
    starts = jax.vmap(lambda key: emjax.testing.random_params(model, key, d=3))(jax.random.split(jax.random.key(7), 4))
    grid = parallel.fit_cells(model, emjax.em(), starts, x, y, 10, cells_mesh)
    loop = [
        emjax.fit(model, emjax.em(), jax.tree_util.tree_map(lambda a, i=i: a[i], starts), x, y, 10) for i in range(4)
    ]
    out["cells"] = float(
        max(
            np.max(np.abs(flat(jax.tree_util.tree_map(lambda a, i=i: a[i], grid.params)) - flat(r.params)))
            for i, r in enumerate(loop)
        )
    )
    try:
        parallel.shard_rows(mesh, x[:-1], y[:-1])
        out["uneven"] = "accepted"
    except ValueError as error:
        out["uneven"] = str(error)
    try:
        parallel.shard_rows(mesh, x[:-1], y[:-1], weights=np.ones(len(y) - 1))
        out["uneven_weighted"] = "accepted"
    except ValueError as error:
        out["uneven_weighted"] = str(error)
    return out


def process():
    from jax.experimental import multihost_utils

    model = emjax.MoLinE(3)
    x, y, start = problem(model)
    index, count = jax.process_index(), jax.process_count()
    rows = slice(index * len(y) // count, (index + 1) * len(y) // count)
    xs, ys = parallel.shard_rows(parallel.data_mesh(), x[rows], y[rows])
    sharded = emjax.fit(model, emjax.em(), start, xs, ys, 15)
    losses = np.asarray(multihost_utils.process_allgather(sharded.losses, tiled=True))
    params = flat(multihost_utils.process_allgather(sharded.params, tiled=True))
    single = emjax.fit(model, emjax.em(), start, x, y, 15)  # every row, on this process's first device
    try:
        parallel.shard_rows(parallel.data_mesh(), x[rows], y[rows], pad=True)
        pad = "accepted"
    except ValueError as error:
        pad = str(error)
    return {
        "processes": count,
        "devices": jax.device_count(),
        "losses": float(np.max(np.abs(losses - np.asarray(single.losses)))),
        "params": float(np.max(np.abs(params - flat(single.params)))),
        "pad": pad,
    }


if __name__ == "__main__":
    MODE = sys.argv[1]
    count = "--xla_force_host_platform_device_count=" + ("4" if MODE == "devices" else "2")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + count).strip()
    import emjax.parallel as parallel

    if MODE == "process":
        parallel.initialize(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    import jax

    jax.config.update("jax_enable_x64", True)
    import emjax

    print("RESULT " + json.dumps(devices() if MODE == "devices" else process()), flush=True)
