r"""Extrapolated fixed-point solvers: SQUAREM and damped Anderson acceleration (docs/math.md §5.7).

An EM iteration is a map $\theta \mapsto F(\theta)$ whose fixed points are the stationary points of
$L$; near a fixed point it converges linearly at the rate $\rho = \lambda_{\max}(M)$ of the
missing-information matrix, which is close to 1 when the experts overlap. Both solvers here wrap
any stateless emjax solver (``em()``, ``mirror_descent(eta)``, ``gradient_em(...)``,
``gradient_descent(...)``), call its map, and extrapolate its iterates:

* :func:`squarem` (Varadhan & Roland 2008; R's ``SQUAREM``): two map evaluations
  $\theta_1 = F(\theta_0)$, $\theta_2 = F(\theta_1)$, then with $r = \theta_1 - \theta_0$ and
  $v = \theta_2 - 2\theta_1 + \theta_0$ the point $\theta' = \theta_0 + 2\alpha r + \alpha^2 v$,
  followed by one stabilising map evaluation $F(\theta')$. The step length $\alpha \ge 1$ is one of
  Varadhan and Roland's three (``method``), capped by an adaptive bound that grows by
  ``step_factor`` when reached and shrinks after a rejected extrapolation; ``alpha = 1`` is two
  plain steps.
* :func:`anderson` (Henderson & Varadhan 2019's DAAREM): Anderson acceleration with ``memory``
  differences of iterates and residuals $f = F(\theta) - \theta$, the least-squares coefficients
  damped by a ridge chosen so their norm is a fraction $\delta_k = 1/(1 + a^{\kappa - s_k})$ of the
  undamped one ($s_k$ counts accepted steps, so the damping relaxes as the run proceeds), and a
  restart of the memory every ``memory`` iterations.

**Safeguard.** An extrapolated point is accepted only when it is finite and its loss is no larger
than the current one plus an allowance: one nat of total log-likelihood for SQUAREM (R's
``objfn.inc = 1``) and 0.01 nat for Anderson (DAAREM's ``mon.tol``), i.e. ``1/n`` and ``0.01/n``
of the per-sample loss (Anderson's measured from the lowest loss of the run, so that allowances
cannot add up to a climb); with ``monotone=True`` the allowance is only round-off, so $L$ never
increases. A rejected extrapolation falls back to the plain step and is counted in
``FitResult.stats["num_fallbacks"]``.

**Constraints.** Iterates are combined in the model's unconstrained coordinates
(:meth:`emjax.models.AbstractModel.to_unconstrained`: log σ for scaled experts), and entries that
are pinned or frozen (``trainable``) are copied from the current iterate, so they never move.

Both run inside :func:`emjax.fit`'s compiled loop (one loop iteration is one extrapolation cycle)
and under ``vmap`` (branches become selects; the work counts stay per lane).

Example:
    >>> import jax, jax.numpy as jnp, emjax
    >>> model = emjax.SymMoLinE()
    >>> truth = emjax.SymParams(w=jnp.array([1.0, 0.0]), beta=jnp.array([0.0, 1.0]))
    >>> x, y = emjax.sample(model, truth, jax.random.key(0), 500)
    >>> result = emjax.fit(model, emjax.squarem(emjax.em()), truth, x, y, 100, tol=1e-6)
    >>> sorted(result.stats)
    ['num_fallbacks', 'num_loss_evaluations', 'num_map_evaluations']
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.flatten_util import ravel_pytree

from ._dtypes import as_arrays
from ._solvers import AbstractSolver, Iteration
from ._stopping import informative_step, step_norms, tree_all_finite
from ._validation import check_int, check_real_scalar
from .models import keep_frozen

SQUAREM_METHODS = (1, 2, 3)


def _allowed_increase(monotone: bool, loss, n: int, nats: float):
    """How much L (a per-sample mean) may rise at an accepted extrapolation: round-off when
    ``monotone``, else ``nats`` of total log-likelihood (``nats / n`` per sample)."""
    roundoff = 16 * jnp.finfo(loss.dtype).eps * jnp.maximum(jnp.abs(loss), 1)
    return roundoff if monotone else roundoff + nats / n


def _unconstrained_vector(model, params):
    """The parameters in unconstrained coordinates, as one vector, and the map back to parameters."""
    vector, unravel = ravel_pytree(model.to_unconstrained(params))
    return vector, unravel


def _to_params(model, vector, unravel, free, current):
    """Parameters from an extrapolated unconstrained vector; pinned and frozen entries are ``current``'s."""
    return keep_frozen(free, model.from_unconstrained(unravel(vector)), current)


def _running_rate(previous, sample, informative):
    """The largest contraction sample below 1 seen so far (NaN until one is seen).

    After an extrapolation the residual is dominated by the fast directions, so a single ratio
    of successive steps underestimates the base map's rate, and Aitken's estimate with it the
    distance to the fixed point (by 100x on Hasselblad's data). The largest sample of the run is
    conservative; samples at or above 1 (far from a fixed point) carry no rate and are skipped, and
    so are samples from steps at round-off level (``informative`` False, see
    :func:`emjax._stopping.informative_step`): their ratios are noise near 1."""
    usable = jnp.isfinite(sample) & (sample < 1) & informative
    larger = jnp.where(jnp.isnan(previous), sample, jnp.maximum(previous, sample))
    return jnp.where(usable, larger, previous)


def _check_base(base) -> None:
    if not isinstance(base, AbstractSolver) or not base.is_fixed_point_map:
        raise ValueError(
            "base must be a stateless emjax solver whose step is a fixed-point map: em(), "
            "mirror_descent(eta), gradient_em(eta, m) or gradient_descent(eta); "
            f"got {type(base).__name__}"
        )


class _Accelerated(AbstractSolver):
    """What SQUAREM and Anderson share: the base map, its mask, and the plain ``update``."""

    base: AbstractSolver = None
    monotone: bool = eqx.field(static=True, default=False)
    # An extrapolation of an extrapolation is not a fixed-point map of the original iteration.
    is_fixed_point_map = False

    def _base(self) -> AbstractSolver:
        # fit() expands ``trainable`` on the outer solver; the base map must honour the same mask.
        return eqx.tree_at(lambda s: s.trainable, self.base, self.trainable, is_leaf=lambda leaf: leaf is None)

    def expect(self, model, params, state, x, y, cache):
        return self._base().expect(model, params, state.base, x, y, cache)

    def update(self, model, params, state, x, y):
        """One extrapolation cycle outside :func:`emjax.fit` (computes the cache and E-step itself)."""
        cast, x, y = as_arrays(params, x, y)
        cache = model.precompute(x, y)
        loss, expected = self.expect(model, cast, state, x, y, cache)
        iteration = self.iterate(model, cast, state, x, y, cache, loss, expected)
        return iteration.params, iteration.state


class SquaremState(eqx.Module):
    """SQUAREM's state: the base solver's state and the current bound on the step length α."""

    base: Any
    step_max: Array
    rate: Array


class Squarem(_Accelerated):
    """SQUAREM around a fixed-point solver (:func:`squarem`)."""

    method: int = eqx.field(static=True, default=1)
    step_max0: float = eqx.field(static=True, default=1.0)
    step_factor: float = eqx.field(static=True, default=4.0)

    def init(self, params) -> SquaremState:
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
        return SquaremState(self.base.init(params), jnp.asarray(self.step_max0, dtype), jnp.asarray(jnp.nan, dtype))

    def _step_length(self, r, v, step_max):
        rr, rv, vv = jnp.vdot(r, r), jnp.vdot(r, v), jnp.vdot(v, v)
        if self.method == 1:
            alpha = -rv / vv
        elif self.method == 2:
            alpha = -rr / rv
        else:
            alpha = jnp.sqrt(rr / vv)
        # NaN (r or v zero: the map is at its fixed point) means no extrapolation.
        alpha = jnp.where(jnp.isfinite(alpha), alpha, 1.0)
        return jnp.clip(alpha, 1.0, step_max)

    def iterate(self, model, params, state, x, y, cache, loss, expected) -> Iteration:
        base = self._base()
        free = model.free_mask(params, base.trainable)
        p1, base_state = base.advance(model, params, state.base, x, y, cache, expected)
        loss1, expected1 = base.expect(model, p1, base_state, x, y, cache)
        p2, base_state = base.advance(model, p1, base_state, x, y, cache, expected1)
        loss2, expected2 = base.expect(model, p2, base_state, x, y, cache)

        u0, unravel = _unconstrained_vector(model, params)
        u1, _ = _unconstrained_vector(model, p1)
        u2, _ = _unconstrained_vector(model, p2)
        r, v = u1 - u0, u2 - 2 * u1 + u0
        alpha = self._step_length(r, v, state.step_max)
        extrapolate = alpha > 1.01  # R's SQUAREM: within 1% of α = 1 the point is θ₂ already
        plain_step = step_norms(model, p2, p1)[1]

        def stabilise(_):
            point = _to_params(model, u0 + 2 * alpha * r + alpha**2 * v, unravel, free, params)
            _, point_expected = base.expect(model, point, base_state, x, y, cache)
            stable, _ = base.advance(model, point, base_state, x, y, cache, point_expected)
            stable_loss, stable_expected = base.expect(model, stable, base_state, x, y, cache)
            return stable, stable_loss, stable_expected, step_norms(model, stable, point)[1]

        def plain(_):
            return p2, loss2, expected2, plain_step

        new, new_loss, new_expected, new_step = lax.cond(extrapolate, stabilise, plain, None)
        allowed = _allowed_increase(self.monotone, loss, x.shape[0], 1.0)
        good = jnp.isfinite(new_loss) & tree_all_finite(new) & (new_loss <= loss + allowed)
        fallback = extrapolate & ~good
        new, new_loss, new_expected = jax.tree_util.tree_map(
            lambda a, b: jnp.where(fallback, a, b), (p2, loss2, expected2), (new, new_loss, new_expected)
        )
        new_step = jnp.where(fallback, plain_step, new_step)

        # R's step-length bound: shrink after a rejected extrapolation at the bound, grow when reached.
        step_max = state.step_max
        step_max = jnp.where(
            fallback & (alpha == step_max), jnp.maximum(self.step_max0, step_max / self.step_factor), step_max
        )
        used = jnp.where(fallback, 1.0, alpha)
        step_max = jnp.where(used == step_max, step_max * self.step_factor, step_max)

        first, second = step_norms(model, p1, params)[0], step_norms(model, p2, p1)[0]
        sample = jnp.where(first > 0, second / jnp.where(first > 0, first, 1), jnp.nan)
        informative = informative_step(model, second, p2, state.rate)
        rate = _running_rate(state.rate, sample, informative).astype(state.rate.dtype)
        extra = extrapolate.astype(jnp.int32)
        return Iteration(
            new,
            SquaremState(base_state, step_max.astype(state.step_max.dtype), rate),
            new_loss,
            new_expected,
            num_map_evaluations=2 + extra,
            num_loss_evaluations=2 + 2 * extra,
            num_fallbacks=fallback.astype(jnp.int32),
            rate=rate,
            step=new_step,
        )


class AndersonState(eqx.Module):
    """Anderson acceleration's state: the base state, the last iterate and residual (unconstrained
    coordinates), the ``memory`` most recent differences, and DAAREM's counters."""

    base: Any
    previous_point: Array
    previous_residual: Array
    point_differences: Array
    residual_differences: Array
    column: Array
    started: Array
    accepted: Array
    cycle_loss: Array
    best_loss: Array
    rate: Array


class Anderson(_Accelerated):
    """Damped Anderson acceleration with restarts around a fixed-point solver (:func:`anderson`)."""

    memory: int | None = eqx.field(static=True, default=None)
    kappa: float = eqx.field(static=True, default=25.0)
    damping_base: float = eqx.field(static=True, default=1.2)

    def init(self, params) -> AndersonState:
        vector, _ = ravel_pytree(params)
        size = vector.size
        memory = self.memory if self.memory is not None else max(1, min(10, math.ceil(size / 2)))
        zeros = jnp.zeros((size, memory), vector.dtype)
        return AndersonState(
            self.base.init(params),
            jnp.zeros_like(vector),
            jnp.zeros_like(vector),
            zeros,
            zeros,
            jnp.zeros((), jnp.int32),
            jnp.asarray(False),
            jnp.zeros((), jnp.int32),
            jnp.asarray(jnp.inf, vector.dtype),
            jnp.asarray(jnp.inf, vector.dtype),
            jnp.asarray(jnp.nan, vector.dtype),
        )

    def _coefficients(self, differences, residual, accepted):
        """DAAREM's damped least squares: γ minimising ‖f − ΔF γ‖² + λ‖γ‖² with λ set so that
        ‖γ_λ‖² = δ ‖γ_0‖², δ = 1/(1 + a^(κ − s)) (found by bisection on log λ)."""
        left, singular, right = jnp.linalg.svd(differences, full_matrices=False)
        dtype = residual.dtype
        tiny = jnp.finfo(dtype).eps * jnp.maximum(jnp.max(singular), jnp.finfo(dtype).tiny) * max(differences.shape)
        usable = singular > tiny
        projected = jnp.where(usable, left.T @ residual, 0.0)
        safe = jnp.where(usable, singular, 1.0)
        power = self.kappa - accepted.astype(dtype)
        share = 1 / (1 + jnp.asarray(self.damping_base, dtype) ** power)
        target = share * jnp.sum(jnp.where(usable, (projected / safe) ** 2, 0.0))
        scale = jnp.maximum(jnp.max(singular) ** 2, jnp.finfo(dtype).tiny)

        def norm2(log_ridge):
            ridge = scale * jnp.exp(log_ridge)
            return jnp.sum(jnp.where(usable, (safe * projected / (safe**2 + ridge)) ** 2, 0.0))

        def bisect(_, bounds):
            low, high = bounds
            middle = (low + high) / 2
            too_big = norm2(middle) > target
            return jnp.where(too_big, middle, low), jnp.where(too_big, high, middle)

        low, high = lax.fori_loop(0, 60, bisect, (jnp.asarray(-40.0, dtype), jnp.asarray(40.0, dtype)))
        ridge = scale * jnp.exp((low + high) / 2)
        return right.T @ jnp.where(usable, safe * projected / (safe**2 + ridge), 0.0)

    def iterate(self, model, params, state, x, y, cache, loss, expected) -> Iteration:
        base = self._base()
        free = model.free_mask(params, base.trainable)
        mapped, base_state = base.advance(model, params, state.base, x, y, cache, expected)
        point, unravel = _unconstrained_vector(model, params)
        residual = _unconstrained_vector(model, mapped)[0] - point
        memory = state.point_differences.shape[1]

        column = state.column
        slot = jnp.arange(memory) == column
        point_differences = jnp.where(
            slot & state.started, (point - state.previous_point)[:, None], state.point_differences
        )
        residual_differences = jnp.where(
            slot & state.started, (residual - state.previous_residual)[:, None], state.residual_differences
        )
        in_use = (jnp.arange(memory) <= column) & state.started
        dx = jnp.where(in_use, point_differences, 0.0)
        df = jnp.where(in_use, residual_differences, 0.0)
        gamma = self._coefficients(df, residual, state.accepted)
        proposal = _to_params(model, point + residual - (dx + df) @ gamma, unravel, free, params)
        proposal_loss, proposal_expected = base.expect(model, proposal, base_state, x, y, cache)
        allowed = _allowed_increase(self.monotone, loss, x.shape[0], 0.01)
        # Measured against the lowest loss of the run, not the current one: allowances granted step
        # after step would otherwise add up, and the run could drift uphill (seen on a slow
        # logistic mixture, proposals +2e-6 and plain steps -1.9e-6 in turn, forever).
        reference = jnp.minimum(state.best_loss, loss)
        accept = jnp.isfinite(proposal_loss) & tree_all_finite(proposal) & (proposal_loss <= reference + allowed)

        def plain(_):
            return (mapped,) + tuple(base.expect(model, mapped, base_state, x, y, cache))

        def extrapolated(_):
            return proposal, proposal_loss, proposal_expected

        new, new_loss, new_expected = lax.cond(accept, extrapolated, plain, None)

        # DAAREM's damping counter: up one per accepted extrapolation; down by `memory` when a whole
        # cycle ends with a larger loss than it started with. The memory restarts every cycle.
        accepted = state.accepted + accept.astype(jnp.int32)
        cycle_end = state.started & (column + 1 >= memory)
        worse = cycle_end & (new_loss > state.cycle_loss)
        accepted = jnp.where(worse, jnp.maximum(accepted - memory, -2 * int(self.kappa)), accepted)
        cycle_loss = jnp.where(cycle_end | ~state.started, new_loss, state.cycle_loss)
        column = jnp.where(cycle_end, 0, jnp.where(state.started, column + 1, column)).astype(jnp.int32)

        # The base map's rate along the stored secants, ‖ΔF(θ)‖ / ‖Δθ‖, at its largest.
        secant = jnp.linalg.norm(dx + df, axis=0) / jnp.where(in_use, jnp.linalg.norm(dx, axis=0), 1.0)
        secant = jnp.where(in_use & (jnp.linalg.norm(dx, axis=0) > 0), secant, -jnp.inf)
        sample = jnp.where(jnp.any(in_use), jnp.max(secant), jnp.nan)
        base_step, base_step_size = step_norms(model, mapped, params)
        informative = informative_step(model, base_step, mapped, state.rate)
        rate = _running_rate(state.rate, sample, informative).astype(state.rate.dtype)
        fallback = ~accept
        return Iteration(
            new,
            AndersonState(
                base_state,
                point,
                residual,
                point_differences,
                residual_differences,
                column,
                jnp.asarray(True),
                accepted,
                cycle_loss.astype(state.cycle_loss.dtype),
                jnp.minimum(reference, new_loss).astype(state.best_loss.dtype),
                rate,
            ),
            new_loss,
            new_expected,
            num_map_evaluations=1,
            num_loss_evaluations=1 + fallback.astype(jnp.int32),
            num_fallbacks=(fallback & state.started).astype(jnp.int32),
            rate=rate,
            step=base_step_size,
        )


def squarem(
    base: AbstractSolver, *, method: int = 1, monotone: bool = False, step_max: float = 1.0, step_factor: float = 4.0
) -> Squarem:
    r"""SQUAREM (squared extrapolation, Varadhan & Roland 2008) around a fixed-point solver.

    One iteration makes two map evaluations $\theta_1 = F(\theta_0)$, $\theta_2 = F(\theta_1)$,
    extrapolates to $\theta' = \theta_0 + 2\alpha r + \alpha^2 v$ ($r = \theta_1 - \theta_0$,
    $v = \theta_2 - 2\theta_1 + \theta_0$) and stabilises with a third, $F(\theta')$; the step length
    is ``method`` 1: $-r\cdot v / v\cdot v$ (the default), 2: $-r\cdot r / r\cdot v$ or
    3: $\|r\| / \|v\|$ (R's default), clipped to $[1, \alpha_{\max}]$. Method 1 needed fewer map
    evaluations than 3 on Hasselblad's data (50 against 74 and 101 from the two classic starts;
    R's method 3 needs 54 and 66 at a looser tolerance) and on the slow mixtures of
    ``benchmarks/acceleration.py``. $\alpha_{\max}$ starts at ``step_max``, is
    multiplied by ``step_factor`` each time α reaches it and divided by it after a rejected
    extrapolation at the bound (R's ``step.max0``, ``mstep``). A rejected extrapolation (non-finite,
    or L up by more than one nat of total log-likelihood; round-off only with ``monotone=True``)
    falls back to $\theta_2$. See :mod:`emjax._acceleration` and docs/math.md §5.7.

    Args:
        base: ``em()``, ``mirror_descent(eta)``, ``gradient_em(eta, m)`` or ``gradient_descent(eta)``
            (its ``trainable`` mask is honoured at every extrapolated point).
        method: the step-length scheme, 1, 2 or 3.
        monotone: accept an extrapolation only if L does not increase (beyond round-off).
        step_max, step_factor: the initial bound on α (>= 1) and its growth factor (> 1).

    Example:
        >>> import emjax
        >>> solver = emjax.squarem(emjax.em(), monotone=True)
    """
    _check_base(base)
    if method not in SQUAREM_METHODS or isinstance(method, bool):
        raise ValueError(f"method must be one of {SQUAREM_METHODS}; got {method!r}")
    if not isinstance(monotone, bool):
        raise ValueError(f"monotone must be a bool; got {type(monotone).__name__}")
    for name, value, low in (("step_max", step_max, 1.0), ("step_factor", step_factor, 1.0)):
        check_real_scalar(value, name)
        if not (math.isfinite(float(value)) and float(value) >= low and (name == "step_max" or float(value) > low)):
            raise ValueError(
                f"{name} must be a finite number {'>=' if name == 'step_max' else '>'} {low}; got {value!r}"
            )
    return Squarem(
        trainable=base.trainable,
        base=base,
        monotone=monotone,
        method=int(method),
        step_max0=float(step_max),
        step_factor=float(step_factor),
    )


def anderson(
    base: AbstractSolver,
    memory: int | None = None,
    *,
    monotone: bool = False,
    kappa: float = 25.0,
    damping_base: float = 1.2,
) -> Anderson:
    r"""Damped Anderson acceleration with restarts (DAAREM, Henderson & Varadhan 2019) around a fixed-point solver.

    With residuals $f_k = F(\theta_k) - \theta_k$ and the last ``memory`` differences
    $\Delta\Theta$, $\Delta F$ (since the last restart), the proposal is
    $\theta_{k+1} = \theta_k + f_k - (\Delta\Theta + \Delta F)\gamma$ where γ minimises
    $\|f_k - \Delta F\gamma\|^2 + \lambda\|\gamma\|^2$ and λ makes
    $\|\gamma_\lambda\|^2 = \|\gamma_0\|^2 / (1 + a^{\kappa - s_k})$ ($a$ = ``damping_base``, $s_k$
    counts accepted proposals, less ``memory`` after a cycle that ended with a larger loss). The
    memory restarts every ``memory`` iterations. A proposal that is non-finite or raises L by more
    than 0.01 nat of total log-likelihood (round-off only with ``monotone=True``) is replaced by
    the plain step $F(\theta_k)$. See :mod:`emjax._acceleration` and docs/math.md §5.7.

    Args:
        base: ``em()``, ``mirror_descent(eta)``, ``gradient_em(eta, m)`` or ``gradient_descent(eta)``.
        memory: the number of stored differences, a Python int >= 1; default
            ``min(10, ceil(p / 2))`` for p parameter entries (DAAREM's default).
        monotone: accept a proposal only if L does not increase (beyond round-off).
        kappa, damping_base: DAAREM's κ (> 0) and α (> 1) of the damping schedule.

    Example:
        >>> import emjax
        >>> solver = emjax.anderson(emjax.em(), memory=5)
    """
    _check_base(base)
    if memory is not None:
        check_int(memory, "memory", 1)
    if not isinstance(monotone, bool):
        raise ValueError(f"monotone must be a bool; got {type(monotone).__name__}")
    for name, value, low in (("kappa", kappa, 0.0), ("damping_base", damping_base, 1.0)):
        check_real_scalar(value, name)
        if not (math.isfinite(float(value)) and float(value) > low):
            raise ValueError(f"{name} must be a finite number > {low}; got {value!r}")
    return Anderson(
        trainable=base.trainable,
        base=base,
        monotone=monotone,
        memory=memory,
        kappa=float(kappa),
        damping_base=float(damping_base),
    )
