r"""Differential tests across call paths (issue 13, item 7): one problem must get one answer, whether a public
function is called directly, under ``jax.jit``, under ``jax.vmap`` (a batch of 1, and a batch of several
problems, each with its own start) or under ``jax.lax.map``.

**Why.** The rest of the suite runs emjax at a few hundred rows and mostly through one path. jaxlib 0.10.2's CPU
compiler (jax-ml/jax#39103) returns wrong row sums from some fusions at n around 17,000-26,000 in float64: the
Gaussian experts' σ came out 60-70% off called directly, under jit, under lax.map and under vmap over several
data sets, right only under vmap of one lane (or of several starts sharing one data set); EM's loss rose, and
no test noticed. A compiler fault shows up as two paths that disagree, so comparing paths finds one without
knowing the right answer; EM's monotone loss finds one without a second path. Both checks run here, and the
large cases keep every path, the batch of 1 included.

**Cost.** Compilation dominates (a K-expert M-step is 1-3 s of XLA time, and every path is a program of its
own), so there is no cross product; the file takes about 90 s on two idle cores. Each entry of ``CASES`` is a
random problem family (model, dtype, n, d, K) with a few public functions, and ``test_cases_cover_the_matrix``
keeps the table spread: every step, every ``fit`` solver and ``init_params`` on two models or more, in both
dtypes and under every path. A case's transformed paths are one compiled program. The small K-expert cases
skip the batch of 1 (a vmapped program compiles about twice as slowly as a single lane). EM is fitted directly
on every problem of every case for the monotone check, and ``fit_restarts`` runs on the large MoLinE(3) problem.

**Tolerances**, on the largest gap |path - direct| / max(1, max |direct|) of each output leaf (:func:`_gap`):

* float64, 1e-10: the paths only sum in different orders; the largest gap measured over every case is
  2e-15, and 20 fitted steps do not amplify it much. The fault of jax-ml/jax#39103 is a gap of 0.1 to 2.
* float32, 2e-5: round-off is 6e-8 per operation, a sum over n rows in another order moves by about
  sqrt(n) eps (2e-6 at n = 1000), a float32 Newton M-step stops at |Δu| < 1e-5 and may take one iteration more
  or less on another path, and 20 steps carry that forward. Measured: 3e-7 at most, so 2e-5 is a 70x margin.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import optax
import pytest

import emjax

BATCH = 3  # problems per case: the batch of several; lane 0 alone is the batch of 1 and the jit path
TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 2e-5}
# EM never increases L (docs/math.md §4.6): a computed increase beyond the round-off of L, a mean of n log-densities
# (a few eps relative to max(1, |L|)), is a bug. Measured: 2.4e-7 in float32, none at all in float64.
MONOTONE = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-6}
MD_STEP = 0.4  # mirror descent with η != 1: EM in disguise would not test the blended targets


@dataclasses.dataclass(frozen=True)
class Case:
    """One random problem family and the public functions whose paths it compares."""

    model: str
    dtype: type
    n: int
    d: int
    functions: tuple[str, ...]
    k: int = 2  # experts (K-expert models)
    c: int = 3  # classes (MoLogE)
    step: float = 0.1  # gradient step size of gradient EM and gradient descent
    num_steps: int = 20  # fitted steps: compilation does not grow with it, the runtime does
    seed: int = 0
    paths: tuple[str, ...] = ("jit", "vmap(1)", f"vmap({BATCH})", "lax.map")

    @property
    def id(self) -> str:
        name = self.model if self.model.startswith("Sym") else f"{self.model}{self.k}"
        return f"{name}-{np.dtype(self.dtype).name}-n{self.n}"

    def make_model(self):
        return {
            "SymMoLinE": lambda: emjax.SymMoLinE(sigma=1.0),
            "SymMoLogE": lambda: emjax.SymMoLogE(),
            "MoLinE": lambda: emjax.MoLinE(self.k),
            "MoLogE": lambda: emjax.MoLogE(self.k, num_classes=self.c),
            "MoPoE": lambda: emjax.MoPoE(self.k),
        }[self.model]()


def _first(tree, size=1):
    return jax.tree_util.tree_map(lambda leaf: leaf[:size], tree)


# path -> fn(every, batch): every's outputs on the lanes it runs, stacked on a leading axis (jit runs lane 0).
PATHS = {
    "jit": lambda every, batch: jax.tree_util.tree_map(lambda leaf: leaf[None], every(*_lane(batch, 0))),
    "vmap(1)": lambda every, batch: jax.vmap(every)(*_first(batch)),
    f"vmap({BATCH})": lambda every, batch: jax.vmap(every)(*batch),
    "lax.map": lambda every, batch: jax.lax.map(lambda lane: every(*lane), batch),
}

STEPS = ("em_step", "mirror_descent_step", "gradient_em_step", "gradient_descent_step")
FITS = ("fit:em", "fit:mirror_descent", "fit:gradient_em", "fit:gradient_descent", "fit:adam")

SMALL_MOE = ("jit", f"vmap({BATCH})", "lax.map")  # the small K-expert cases: no batch of 1 (module docstring)
CASES = [
    # Large n, float64, inside the window of jax-ml/jax#39103, where jaxlib 0.10.2 gets both MoLinE steps wrong
    # (the fault depends on K and d too: at n = 24,000, K = 5 needs d = 5). The MoLinE(3) problem also runs
    # fit_restarts, which puts init_params and EM under vmap and lax.map (RESTARTS_COVER).
    Case("MoLinE", np.float64, 20_000, 3, ("em_step",), k=3, num_steps=5, seed=1),
    Case("MoLinE", np.float64, 24_000, 5, ("mirror_descent_step",), k=5, num_steps=6, seed=2),
    Case(
        "SymMoLinE",
        np.float64,
        24_000,
        3,
        ("gradient_descent_step", "fit:em", "fit:mirror_descent", "fit:gradient_descent", "fit:adam"),
        step=0.5,
        num_steps=10,
        seed=3,
    ),
    # Small n: the rest of the matrix. The Newton M-steps, the costliest to compile, run mostly on the symmetric
    # models, which take every path; the K-expert cases skip the batch of 1.
    Case(
        "SymMoLinE",
        np.float32,
        500,
        3,
        ("mirror_descent_step", "gradient_em_step", "fit:gradient_em"),
        step=0.5,
        seed=4,
    ),
    Case("SymMoLogE", np.float32, 700, 4, ("init_params", "em_step", "fit:mirror_descent"), seed=5),
    Case("MoLinE", np.float32, 900, 3, ("init_params", "fit:em"), k=2, seed=7, paths=SMALL_MOE),
    Case("MoLogE", np.float64, 800, 3, ("gradient_em_step", "fit:gradient_em"), k=4, c=3, seed=8, paths=SMALL_MOE),
    Case(
        "MoPoE",
        np.float32,
        1000,
        2,
        ("gradient_descent_step", "fit:gradient_descent", "fit:adam"),
        k=5,
        step=0.05,
        seed=9,
        paths=SMALL_MOE,
    ),
]
# Checked on CASES[0]'s problem by the fit_restarts test (float64, large n): counted for its dtype and model.
RESTARTS_COVER = ("init_params", "fit:em")


def _functions(case: Case):
    """name -> fn(model, key, start, x, y) for every function a case may compare (same signature, so one
    batched program can run any subset)."""
    eta = case.step
    solvers = {
        "em": emjax.em(),
        "mirror_descent": emjax.mirror_descent(MD_STEP),
        "gradient_em": emjax.gradient_em(eta, 3),
        "gradient_descent": emjax.gradient_descent(eta),
        "adam": emjax.from_optax(optax.adam(0.05)),
    }

    def fitted(solver):
        def run(model, key, start, x, y):
            result = emjax.fit(model, solver, start, x, y, case.num_steps)
            return {
                "params": result.params,
                "losses": result.losses,
                "status": result.status,
                "num_steps": result.num_steps,
            }

        return run

    table = {
        "init_params": lambda model, key, start, x, y: emjax.init_params(model, key, x, y),
        "em_step": lambda model, key, start, x, y: emjax.em_step(model, start, x, y),
        "mirror_descent_step": lambda model, key, start, x, y: emjax.mirror_descent_step(model, start, x, y, MD_STEP),
        "gradient_em_step": lambda model, key, start, x, y: emjax.gradient_em_step(model, start, x, y, eta, 3),
        "gradient_descent_step": lambda model, key, start, x, y: emjax.gradient_descent_step(model, start, x, y, eta),
    }
    table.update({f"fit:{name}": fitted(solver) for name, solver in solvers.items()})
    return table


# ----------------------------------------------------------------------------- problems
# Drawn in NumPy: emjax.sample and emjax.testing.random_params would cost compilations per case, and a differential test
# needs data the model could have produced, not emjax's own sampler.


def _directions(rng, shape, norm):
    """Random directions along axis 1 (the feature axis), scaled to norm ``norm``."""
    v = rng.normal(size=shape)
    return norm * v / np.linalg.norm(v, axis=1, keepdims=True)


def _softmax_draw(rng, logits):
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return (rng.uniform(size=p.shape[:-1] + (1,)) > np.cumsum(p, axis=-1)).sum(axis=-1).clip(0, p.shape[-1] - 1)


def _draw(case: Case, rng: np.random.Generator):
    """(start, x, y) as NumPy arrays: data from a random truth, x ~ N(0, I_d), and a start near the truth."""
    n, d = case.n, case.d
    x = rng.normal(size=(n, d))
    if case.model.startswith("Sym"):
        norm = 2.0 if case.model == "SymMoLinE" else 3.0
        w, beta = _directions(rng, (1, d), norm)[0], _directions(rng, (1, d), norm)[0]
        sign = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-x @ w)), 1.0, -1.0)
        if case.model == "SymMoLinE":
            y = sign * (x @ beta) + rng.normal(size=n)
        else:
            y = (rng.uniform(size=n) < 1 / (1 + np.exp(-sign * (x @ beta)))).astype(float)
        start = emjax.SymParams(
            w=w + _directions(rng, (1, d), 0.7 * norm)[0], beta=beta + _directions(rng, (1, d), 0.7 * norm)[0]
        )
    else:
        k = case.k
        gate = _directions(rng, (k, d), 2.0)
        gate[0] = 0
        z = _softmax_draw(rng, x @ gate.T)
        sigma = None
        if case.model == "MoLinE":
            experts = _directions(rng, (k, d), 2.0)
            sigma = np.full(k, 0.5)
            y = np.einsum("nd,nd->n", x, experts[z]) + 0.5 * rng.normal(size=n)
        elif case.model == "MoLogE":
            experts = _directions(rng, (k, d, case.c), 3.0)
            experts[:, :, 0] = 0
            y = _softmax_draw(rng, np.einsum("nd,ndc->nc", x, experts[z])).astype(float)
        else:
            experts = _directions(rng, (k, d), 1.0)
            y = rng.poisson(np.exp(np.einsum("nd,nd->n", x, experts[z]))).astype(float)
        noisy = gate + 0.3 * rng.normal(size=gate.shape)
        noisy[0] = 0  # the pinned row
        start = emjax.MoEParams(
            gate=noisy,
            experts=np.where(experts == 0, 0, experts + 0.3 * rng.normal(size=experts.shape)),
            sigma=None if sigma is None else sigma * np.exp(0.3 * rng.normal(size=k)),
        )
    return jax.tree_util.tree_map(lambda leaf: np.asarray(leaf, case.dtype), (start, x, y))


def _problems(case: Case):
    """BATCH problems of one shape: (init keys, starts, xs, ys), each with a leading lane axis.

    Everything but the keys stays in NumPy until a path consumes it: an eager jnp op on a new shape (a stack,
    an index) is a small compilation of its own."""
    rng = np.random.default_rng(case.seed)
    drawn = [_draw(case, rng) for _ in range(BATCH)]
    stacked = jax.tree_util.tree_map(lambda *leaves: np.stack(leaves), *drawn)
    return (jax.random.split(jax.random.key(case.seed), BATCH),) + stacked


def _lane(tree, i):
    return jax.tree_util.tree_map(lambda leaf: leaf[i], tree)


# ----------------------------------------------------------------------------- comparison


def _gap(got, want) -> float:
    """max |got - want| / max(1, max |want|) over one leaf; inf when shapes, NaN positions or integers differ."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return np.inf
    if not np.issubdtype(want.dtype, np.floating):
        return 0.0 if np.array_equal(got, want) else np.inf
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        return np.inf
    finite = ~np.isnan(want)
    if not finite.any():
        return 0.0
    scale = max(1.0, float(np.max(np.abs(want[finite]))))
    return float(np.max(np.abs(got[finite].astype(np.float64) - want[finite]))) / scale


def _disagreements(reference, paths, tolerance):
    """(messages for every path, lane, function and leaf off by more than ``tolerance``, largest gap)."""
    messages, largest = [], 0.0
    for path, lanes in paths.items():
        for lane, outputs in enumerate(lanes):
            for name, got in outputs.items():
                got_leaves = jax.tree_util.tree_flatten_with_path(got)[0]
                want_leaves = jax.tree_util.tree_leaves(reference[lane][name])
                for (where, leaf), want in zip(got_leaves, want_leaves, strict=True):
                    gap = _gap(leaf, want)
                    if np.isfinite(gap):
                        largest = max(largest, gap)
                    if not gap <= tolerance:
                        messages.append(
                            f"{path}, lane {lane}: {name}{jax.tree_util.keystr(where)} off by {gap:.3g}: "
                            f"direct {np.asarray(want).ravel()[:3]}, {path} {np.asarray(leaf).ravel()[:3]}"
                        )
    return messages, largest


# ----------------------------------------------------------------------------- tests


def test_cases_cover_the_matrix():
    """The table stays spread as the module docstring says (it is edited by hand, for compile time)."""
    for name in ("init_params",) + STEPS + FITS:
        cases = [case for case in CASES if name in case.functions] + [CASES[0]] * (name in RESTARTS_COVER)
        assert len({case.model for case in cases}) >= 2, name
        assert {np.dtype(case.dtype) for case in cases} == {np.dtype(np.float32), np.dtype(np.float64)}, name
        assert {path for case in cases if name in case.functions for path in case.paths} == set(PATHS), name
    assert {case.model for case in CASES} == {"SymMoLinE", "SymMoLogE", "MoLinE", "MoLogE", "MoPoE"}
    large = [case for case in CASES if case.n >= 17_000]
    assert {20_000, 24_000} <= {case.n for case in large if case.model == "MoLinE"}
    assert all(case.dtype == np.float64 and set(case.paths) == set(PATHS) for case in large)
    assert max(case.k for case in CASES) == 5


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_every_path_gives_the_direct_answer(case):
    """The case's transformed paths against direct calls, lane by lane; and EM's loss never rises on any of the
    case's problems (fitted directly: the path on which jaxlib 0.10.2 was wrong)."""
    model = case.make_model()
    table = _functions(case)
    functions = {name: table[name] for name in case.functions}
    keys, starts, xs, ys = _problems(case)
    lanes = [(keys[i], _lane(starts, i), xs[i], ys[i]) for i in range(BATCH)]

    reference = jax.device_get([{name: fn(model, *lane) for name, fn in functions.items()} for lane in lanes])
    # A fit that stopped early (non-finite, degenerate) would compare its padding, not its steps.
    unhealthy = [
        (i, name)
        for i, outputs in enumerate(reference)
        for name, out in outputs.items()
        if name.startswith("fit:")
        and (int(out["status"]) != emjax.Status.ok or int(out["num_steps"]) != case.num_steps)
    ]
    assert not unhealthy, f"direct fits that did not run every step healthily: {unhealthy}"

    def every(key, start, x, y):
        return {name: fn(model, key, start, x, y) for name, fn in functions.items()}

    paths = jax.jit(lambda batch: {path: PATHS[path](every, batch) for path in case.paths})  # one compilation
    out = jax.device_get(paths((keys, starts, xs, ys)))
    out = {
        path: [_lane(lanes_out, i) for i in range(len(jax.tree_util.tree_leaves(lanes_out)[0]))]
        for path, lanes_out in out.items()
    }
    messages, largest = _disagreements(reference, out, TOLERANCE[np.dtype(case.dtype)])
    print(f"{case.id}: largest gap between paths {largest:.3g}")

    increases = []
    for i, (_, start, x, y) in enumerate(lanes):
        if "fit:em" in reference[i]:  # the same direct call (emjax.em(), case.num_steps, no tol): reuse it
            losses = np.asarray(reference[i]["fit:em"]["losses"], np.float64)
        else:
            losses = np.asarray(emjax.fit(model, emjax.em(), start, x, y, case.num_steps).losses, np.float64)
        increase = float(np.max(np.diff(losses) / np.maximum(1.0, np.abs(losses[1:]))))
        increases.append(increase)
        if not (np.all(np.isfinite(losses)) and increase <= MONOTONE[np.dtype(case.dtype)] and losses[-1] < losses[0]):
            messages.append(f"direct EM fit, lane {i}: the loss rose by up to {increase:.3g} (relative): {losses}")
    print(f"{case.id}: largest relative increase of EM's loss {max(increases):.3g}")
    assert not messages, f"{len(messages)} disagreements:\n" + "\n".join(messages[:25])


def test_fit_restarts_reproducible_and_independent_of_batch_size():
    """Restart r re-run alone, fit(init_params(split(key, R)[r])), reproduces the restart's final loss (and the
    best one its whole result); batch_size None (one vmap over the restarts, the data shared), 1 (a loop, one
    restart at a time) and 2 (a loop over vmapped pairs) give the same answer and pick the same restart.

    Fixed steps (tol=None), so that the restarts run alone share the compiled fit of CASES[0]'s monotone check;
    a chunk of 2 rather than 3 because 4 restarts in chunks of 3 compile a second program for the remainder."""
    case = CASES[0]  # large n: where jaxlib 0.10.2 made a restart unreproducible alone
    model = case.make_model()
    _, _, xs, ys = _problems(case)
    x, y = xs[0], ys[0]
    key, num_restarts = jax.random.key(7), 4
    tolerance = TOLERANCE[np.dtype(case.dtype)]
    runs = [
        (
            batch_size,
            jax.device_get(
                emjax.fit_restarts(
                    model, emjax.em(), key, x, y, num_restarts, case.num_steps, tol=None, batch_size=batch_size
                )
            ),
        )
        for batch_size in (None, 1, 2)
    ]
    alone = jax.device_get(
        [
            emjax.fit(model, emjax.em(), emjax.init_params(model, start_key, x, y), x, y, case.num_steps)
            for start_key in jax.random.split(key, num_restarts)
        ]
    )
    final = np.array([run.losses[run.num_steps] for run in alone])
    ordered = np.sort(final)
    # Otherwise the choice of the best restart would be a tie broken by round-off.
    assert ordered[1] - ordered[0] > 1e3 * tolerance * max(1.0, abs(ordered[0])), ordered
    assert all(int(run.status) == emjax.Status.ok for run in alone), [int(run.status) for run in alone]

    messages = []
    for batch_size, run in runs:
        if int(run.best_restart) != int(np.argmin(final)):
            messages.append(
                f"batch_size={batch_size}: best restart {int(run.best_restart)}, but restart "
                f"{int(np.argmin(final))} is the best run alone (final losses {final})"
            )
        best = alone[int(run.best_restart)]
        for name, got, want in (
            ("restart_losses", run.restart_losses, final),
            ("params", run.params, best.params),
            ("losses", run.losses, best.losses),
            ("status", run.status, best.status),
        ):
            for (where, leaf), ref in zip(
                jax.tree_util.tree_flatten_with_path(got)[0], jax.tree_util.tree_leaves(want), strict=True
            ):
                gap = _gap(leaf, ref)
                if not gap <= tolerance:
                    messages.append(
                        f"batch_size={batch_size}: {name}{jax.tree_util.keystr(where)} off the restart "
                        f"run alone by {gap:.3g}: {np.ravel(leaf)[:4]} against {np.ravel(ref)[:4]}"
                    )
    assert not messages, f"{len(messages)} disagreements:\n" + "\n".join(messages[:15])
