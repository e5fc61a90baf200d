r"""The two trainers of a :class:`~emjax.deep.DeepMoE`: generalized EM (docs/math.md §9) and end-to-end.

Each is one compiled program: a ``lax.scan`` over E-steps (or optimizer steps), with an inner
``lax.scan`` over the M-step's optimizer steps, so a whole fit works under ``jit`` and ``vmap``
(over keys, or over learning rates when the optimizer is built inside the vmapped function).

**Budgets.** One optax step costs one gradient evaluation (a forward and a backward pass on the
batch); an E-step costs a forward pass. ``TrainHistory`` counts both, cumulatively, so EM with
``num_em_steps * inner_steps = num_steps`` and end-to-end training with ``num_steps`` have the same
number of gradient evaluations; EM additionally spends ``num_em_steps`` E-step forward passes
(``batch_size / inner_batch_size`` batch-sized passes each with sub-batches; a forward pass costs
about a third of a gradient evaluation). Optimizers with a line search (``optax.lbfgs``) evaluate
the objective more often inside ``update``; those evaluations are not counted.

**Mini-batches** are drawn by epoch-wise shuffling (:func:`batch_indices`): the same key gives
the same batches to both trainers, so ``fit_em`` with ``inner_steps=1`` reproduces
``fit_end_to_end`` (Fisher's identity), up to round-off.

**One engine.** Both trainers return :class:`DeepFitResult`, an :class:`emjax.FitResult` with the
per-step :class:`TrainHistory` added, and stop with :func:`emjax.fit`'s rule and status codes
(:mod:`emjax._stopping`): a step whose loss or new parameters are not finite is not applied and
ends the run with ``Status.nonfinite``; with ``tol`` the run stops once
$|L_{t-1} - L_t| \le$ ``atol`` $+$ ``tol`` $|L_t|$. Progress lines come from :mod:`emjax._progress`.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax import Array, lax

from .._fit import FitResult
from .._progress import maybe_report, progress_interval
from .._stopping import check_tolerances, final_status, is_finite, loss_converged, tree_all_finite
from .._validation import data_arguments
from ._checks import as_working, check_batch_size, check_count, check_data
from ._model import DeepMoE
from ._objectives import accuracy_raw, nll_raw, surrogate_raw
from ._routing import load_statistics_raw


class TrainHistory(NamedTuple):
    r"""Per-step diagnostics of :func:`fit_em` / :func:`fit_end_to_end` (leading axis: step t).

    Attributes:
        loss: (T,) L on step t's batch at the parameters *before* step t (for EM: at $\theta_t$,
            from the E-step's forward pass, so it costs nothing).
        surrogate: (T, 2), EM only (None for end-to-end): $J(\theta_t\mid\gamma_t, T_t)$ and
            $J(\theta_{t+1}\mid\gamma_t, T_t)$ on E-step t's batch. The first is free (E-step); the second
            costs one diagnostic forward pass per E-step, not counted in ``forward_passes``.
        inner_surrogate: (T, inner_steps), EM only: the objective value at every inner step, on the
            batch that step used (the whole E-step batch, or its sub-batch with ``inner_batch_size``).
        routed_fraction: (T, K) fraction of the batch routed to each expert (sums to top_k).
        responsibility_mass: (T, K) mean responsibility $\mathrm{mean}_n\gamma_{nk}$ on the batch (sums to 1).
        gate_mass: (T, K) mean routed gate probability $\mathrm{mean}_n\tilde\pi_{nk}$ on the batch (sums to 1).
        gradient_evaluations: (T,) int, cumulative gradient evaluations (optax steps) after step t.
        forward_passes: (T,) int, cumulative forward passes outside gradient evaluations, counted in
            units of one gradient batch: an E-step on B samples with inner batches of b counts B / b.
        eval_loss, eval_accuracy: (T // eval_every,) cross-entropy and accuracy on ``eval_data`` after
            steps ``eval_every, 2 eval_every, ...``; None without ``eval_data``.
    """

    loss: Array
    surrogate: Array | None
    inner_surrogate: Array | None
    routed_fraction: Array
    responsibility_mass: Array
    gate_mass: Array
    gradient_evaluations: Array
    forward_passes: Array
    eval_loss: Array | None = None
    eval_accuracy: Array | None = None


class DeepFitResult(FitResult):
    r"""What :func:`fit_em` and :func:`fit_end_to_end` return: an :class:`emjax.FitResult` plus the history.

    The :class:`~emjax.FitResult` fields:

    * ``params``: the trained :class:`~emjax.deep.DeepMoE` (the last finite iterate).
    * ``losses``: shape (T + 1,) for T steps: ``losses[t]`` (t < T) is L at $\theta_t$ on step t's
      batch (``history.loss[t]``, free from the E-step's forward pass); ``losses[T]`` is L at the
      final parameters on the whole training set (one extra forward pass; with ``batch_size``
      None this is step T's full-batch loss, exactly as in :func:`emjax.fit`). NaN after a stop.
    * ``num_steps``: E-steps (or optimizer steps) applied; ``status``, ``converged``: as for
      :func:`emjax.fit` (a step that detects the tolerance is not applied).
    * ``state``: the optimizer's final state.

    ``history`` is the :class:`TrainHistory` (its entries after a stop are NaN, its counters stop
    growing). For code written against the earlier ``(model, history)`` return value, the result
    still unpacks as ``model, history = fit_em(...)``.
    """

    history: TrainHistory | None = None

    def __iter__(self):
        return iter((self.params, self.history))


class _StepInfo(NamedTuple):
    loss: Array
    surrogate: Array | None
    inner_surrogate: Array | None
    routed_fraction: Array
    responsibility_mass: Array
    gate_mass: Array


# ----------------------------------------------------------------------------- validation


def _check_optimizer(optimizer) -> None:
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise ValueError(f"optimizer must be an optax.GradientTransformation; got {type(optimizer).__name__}")


def _check_eval(model, eval_data, eval_every, num_steps: int, d: int) -> None:
    if eval_data is None:
        if eval_every is not None:
            raise ValueError("eval_every needs eval_data=(x_eval, y_eval)")
        return
    if not isinstance(eval_data, (tuple, list)) or len(eval_data) != 2:
        raise ValueError("eval_data must be a pair (x_eval, y_eval)")
    _, d_eval = check_data(model, *eval_data)
    if d_eval != d:
        raise ValueError(f"eval_data's x must have d = {d} columns like x; got {d_eval}")
    every = num_steps if eval_every is None else eval_every
    check_count(every, "eval_every")
    if num_steps % every:
        raise ValueError(f"eval_every = {every} must divide the number of steps {num_steps}")


def _check_fit(
    model, x, y, optimizer, num_steps, batch_size, eval_data, eval_every, inner_steps=1, inner_batch_size=None
) -> None:
    n, d = check_data(model, x, y)
    check_count(num_steps, "the number of steps")
    check_count(inner_steps, "inner_steps")
    check_batch_size(batch_size, n)
    if inner_batch_size is not None:
        check_count(inner_batch_size, "inner_batch_size")
        e_batch = n if batch_size is None else batch_size
        if e_batch % inner_batch_size:
            raise ValueError(
                f"inner_batch_size = {inner_batch_size} must divide the E-step batch size {e_batch} (batch_size, or n)"
            )
    _check_optimizer(optimizer)
    _check_eval(model, eval_data, eval_every, num_steps, d)


# ----------------------------------------------------------------------------- the loops


def batch_indices(key, n: int, num_batches: int, size: int | None):
    r"""Row indices of ``num_batches`` mini-batches of ``size`` samples, shape (num_batches, size).

    Epoch-wise shuffling: every epoch is a fresh random permutation of the n rows cut into
    $\lfloor n/\mathrm{size}\rfloor$ batches (the remainder is dropped), so a batch never repeats a
    sample and every sample is seen once per epoch. None when ``size`` is None (the full data set, in order).
    """
    if size is None:
        return None
    per_epoch = n // size
    epochs = -(-num_batches // per_epoch)
    orders = jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, epochs))
    return orders[:, : per_epoch * size].reshape(epochs * per_epoch, size)[:num_batches]


def _take(x, y, index):
    return (x, y) if index is None else (x[index], y[index])


def _step_info(loss, routed, surrogate=None, inner=None) -> _StepInfo:
    gamma = jax.nn.softmax(routed.log_weights, axis=-1)
    load = load_statistics_raw(routed.mask, routed.log_gate)
    return _StepInfo(loss, surrogate, inner, load.routed_fraction, jnp.mean(gamma, axis=0), load.gate_mass)


def _run(step, carry, indices, num_steps: int, eval_fn, eval_every):
    """Scan ``step`` over the batch indices; with ``eval_fn``, in segments of ``eval_every`` steps."""
    if eval_fn is None:
        carry, infos = lax.scan(step, carry, indices, length=num_steps)
        return carry, infos, None
    every = num_steps if eval_every is None else eval_every
    segments = None if indices is None else indices.reshape((num_steps // every, every) + indices.shape[1:])

    def segment(c, segment_indices):
        c, infos = lax.scan(step, c, segment_indices, length=every)
        return c, (infos, eval_fn(c[0]))

    carry, (infos, evaluations) = lax.scan(segment, carry, segments, length=num_steps // every)
    infos = jax.tree_util.tree_map(lambda a: a.reshape((num_steps,) + a.shape[2:]), infos)
    return carry, infos, evaluations


def _evaluator(static, eval_data):
    if eval_data is None:
        return None
    x_eval, y_eval = eval_data

    def evaluate(params):
        model = eqx.combine(params, static)
        return nll_raw(model, x_eval, y_eval)[0], accuracy_raw(model, x_eval, y_eval)

    return evaluate


def _history(infos: _StepInfo, ran, evaluations, grads_per_step: int, forwards_per_step: int) -> TrainHistory:
    """Cumulative counters from per-step counts (static Python ints), over the steps that ran."""
    steps = jnp.cumsum(ran.astype(jnp.int32))
    return TrainHistory(
        *infos,
        gradient_evaluations=grads_per_step * steps,
        forward_passes=forwards_per_step * steps,
        eval_loss=None if evaluations is None else evaluations[0],
        eval_accuracy=None if evaluations is None else evaluations[1],
    )


def _guarded(step, num_steps: int, rule, label: str, progress_every: int):
    """``step`` with :func:`emjax.fit`'s guards: a non-finite loss or iterate is not applied and stops the
    run; with ``rule = (rtol, atol)``, so does a loss within the tolerance of the previous one. After a
    stop the remaining steps are skipped (``lax.cond``) and record NaN diagnostics.

    The carry is ``(params, opt_state, control)`` with control ``(t, previous loss, done, finite,
    converged)``; the scan also emits whether each step ran and was applied."""

    def guarded(carry, index):
        params, opt_state, (t, previous, done, finite, converged) = carry

        def run(_):
            (new_params, new_state), info = step((params, opt_state), index)
            loss = info.loss
            stop = jnp.asarray(False) if rule is None else (t > 0) & loss_converged(previous, loss, *rule)
            healthy = is_finite(loss) & (stop | tree_all_finite(new_params))
            apply = healthy & ~stop
            maybe_report(label, progress_every, t + 1, num_steps, loss)
            pick = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(apply, a, b), new, old)  # noqa: E731
            return pick(new_params, params), pick(new_state, opt_state), info, healthy, stop, apply

        def skip(_):
            shapes = jax.eval_shape(step, (params, opt_state), index)[1]
            info = jax.tree_util.tree_map(lambda a: jnp.full(a.shape, jnp.nan, a.dtype), shapes)
            return params, opt_state, info, jnp.asarray(True), jnp.asarray(False), jnp.asarray(False)

        new_params, new_state, info, healthy, stop, apply = lax.cond(done, skip, run, None)
        control = (
            t + 1,
            jnp.where(done, previous, info.loss),
            done | ~healthy | stop,
            finite & healthy,
            converged | stop,
        )
        return (new_params, new_state, control), (info, ~done, apply)

    return guarded


def _control(dtype):
    return (
        jnp.zeros((), jnp.int32),
        jnp.asarray(jnp.nan, dtype),
        jnp.asarray(False),
        jnp.asarray(True),
        jnp.asarray(False),
    )


def _result(static, x, y, carry, infos, ran, applied, evaluations, rule, grads_per_step, forwards_per_step):
    """The :class:`DeepFitResult`: the final full-data loss closes the trace, the status follows fit's rule."""
    params, opt_state, (_, last, done, finite, converged) = carry
    model = eqx.combine(params, static)
    final = nll_raw(model, x, y)[0]
    finite = finite & (done | is_finite(final))
    if rule is not None:
        converged = converged | (~done & loss_converged(last, final, *rule))
    losses = jnp.concatenate([infos.loss, jnp.where(done, jnp.nan, final)[None]])
    status = final_status(finite, converged, rule is not None, jnp.where).astype(jnp.int32)
    history = _history(infos, ran, evaluations, grads_per_step, forwards_per_step)
    return DeepFitResult(
        model, losses, jnp.sum(applied.astype(jnp.int32)), status, converged & finite, opt_state, history=history
    )


@eqx.filter_jit
def _fit_em(
    key,
    model,
    x,
    y,
    optimizer,
    num_em_steps,
    inner_steps,
    batch_size,
    inner_batch_size,
    reset_optimizer,
    eval_data,
    eval_every,
    rule,
    progress_every,
):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimizer = optax.with_extra_args_support(optimizer)
    e_batch = x.shape[0] if batch_size is None else batch_size
    num_sub = 1 if inner_batch_size is None else e_batch // inner_batch_size
    # Shuffled batches (also for the full batch when it is cut into sub-batches).
    indices = batch_indices(key, x.shape[0], num_em_steps, None if (batch_size is None and num_sub == 1) else e_batch)

    def em_iteration(carry, index):
        params, opt_state = carry
        xb, yb = _take(x, y, index)
        # E-step: one forward pass gives L at theta_t, the routing T_t and the responsibilities.
        loss, routed = nll_raw(eqx.combine(params, static), xb, yb)
        gamma = jax.lax.stop_gradient(jax.nn.softmax(routed.log_weights, axis=-1))
        mask = routed.mask
        start_value = -jnp.mean(routed.masked_sum(gamma))
        if reset_optimizer:
            opt_state = optimizer.init(params)

        def inner(c, step):
            p, state = c
            data = (xb, yb, gamma, mask)
            if num_sub > 1:  # inner step j uses sub-batch j mod num_sub of the E-step batch
                offset = (step % num_sub) * inner_batch_size
                data = tuple(lax.dynamic_slice_in_dim(a, offset, inner_batch_size) for a in data)

            def objective(u):
                return surrogate_raw(eqx.combine(u, static), *data)

            value, grads = jax.value_and_grad(objective)(p)
            updates, state = optimizer.update(grads, state, p, value=value, grad=grads, value_fn=objective)
            return (optax.apply_updates(p, updates), state), value

        (params, opt_state), values = lax.scan(inner, (params, opt_state), jnp.arange(inner_steps))
        end_value = surrogate_raw(eqx.combine(params, static), xb, yb, gamma, mask)
        return (params, opt_state), _step_info(loss, routed, jnp.stack([start_value, end_value]), values)

    evaluate = _evaluator(static, eval_data)
    step = _guarded(em_iteration, num_em_steps, rule, "emjax.deep.fit_em", progress_every)
    carry, (infos, ran, applied), evaluations = _run(
        step, (params, optimizer.init(params), _control(x.dtype)), indices, num_em_steps, evaluate, eval_every
    )
    return _result(static, x, y, carry, infos, ran, applied, evaluations, rule, inner_steps, num_sub)


@eqx.filter_jit
def _fit_end_to_end(key, model, x, y, optimizer, num_steps, batch_size, eval_data, eval_every, rule, progress_every):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimizer = optax.with_extra_args_support(optimizer)

    indices = batch_indices(key, x.shape[0], num_steps, batch_size)

    def step(carry, index):
        params, opt_state = carry
        xb, yb = _take(x, y, index)

        def objective(p):
            return nll_raw(eqx.combine(p, static), xb, yb)[0]

        (loss, routed), grads = jax.value_and_grad(lambda p: nll_raw(eqx.combine(p, static), xb, yb), has_aux=True)(
            params
        )
        updates, opt_state = optimizer.update(grads, opt_state, params, value=loss, grad=grads, value_fn=objective)
        return (optax.apply_updates(params, updates), opt_state), _step_info(loss, routed)

    evaluate = _evaluator(static, eval_data)
    guarded = _guarded(step, num_steps, rule, "emjax.deep.fit_end_to_end", progress_every)
    carry, (infos, ran, applied), evaluations = _run(
        guarded, (params, optimizer.init(params), _control(x.dtype)), indices, num_steps, evaluate, eval_every
    )
    return _result(static, x, y, carry, infos, ran, applied, evaluations, rule, 1, 0)


def _prepare_eval(model, eval_data):
    return None if eval_data is None else as_working(model, *eval_data)


def _rule(tol, atol, dtype):
    """None (no tolerance) or the traced ``(rtol, atol)`` of the stopping rule."""
    check_tolerances(tol, atol)
    return None if tol is None else (jnp.asarray(tol, dtype), jnp.asarray(atol, dtype))


# ----------------------------------------------------------------------------- public trainers


@data_arguments
def fit_em(
    model: DeepMoE,
    key: Array,
    x,
    y,
    *,
    optimizer: optax.GradientTransformation,
    num_em_steps: int,
    inner_steps: int,
    batch_size: int | None = None,
    inner_batch_size: int | None = None,
    reset_optimizer: bool = False,
    eval_data=None,
    eval_every: int | None = None,
    tol=None,
    atol=0.0,
    progress: bool | int = False,
) -> DeepFitResult:
    r"""Generalized (mini-batch) EM for a deep, top-k routed mixture of experts (docs/math.md §9).

    For t = 0, ..., ``num_em_steps`` - 1, on a mini-batch $B_t$ of ``batch_size`` samples (epoch-wise
    shuffling from ``key``: each epoch a new permutation of the data, cut into batches):

    1. **E-step** (one forward pass): the routing $T_n$ (top-k of the gate at $\theta_t$) and
       $\gamma_{nk} = \mathrm{softmax}_k\,\ell_{nk}(\theta_t)$, held fixed (``stop_gradient``).
    2. **M-step**: ``inner_steps`` optax steps on $J(\cdot\mid\gamma, T)$ from $u_0 = \theta_t$: the gate
       is trained by soft-target cross-entropy to γ (renormalised over $T_n$, see
       :mod:`emjax.deep._objectives`), each expert on its γ-weighted class cross-entropy. By default
       every inner step uses all of $B_t$; with ``inner_batch_size`` = b, $B_t$ is cut into
       ``batch_size // b`` sub-batches and inner step j uses sub-batch j mod (``batch_size // b``),
       with the responsibilities of the E-step.

    With ``inner_steps = 1`` one step on J is one step on L (Fisher's identity), so the recipe
    differs from :func:`fit_end_to_end` only for ``inner_steps >= 2`` (docs/math.md §9).

    **Sub-batches.** Reusing one batch for m inner steps sees m times fewer samples than
    end-to-end training with the same number of gradient evaluations; ``batch_size = m * b`` with
    ``inner_batch_size = b`` sees as many (each gradient on b fresh samples, γ computed once for
    the m·b samples at $\theta_t$), at the price of an E-step forward pass over m·b samples.
    ``forward_passes`` counts that as m.

    **Optimizer state persists across E-steps** by default: Adam's moment estimates carry over.
    J changes little from one E-step to the next, and a fresh Adam state makes every M-step start
    with sign-like steps of full length (``benchmarks/deep_moe.py`` measured the reset to be clearly
    worse). ``reset_optimizer=True`` re-initialises it at every E-step (an M-step from scratch;
    use it with ``optax.lbfgs``, whose memory belongs to one objective).

    Args:
        model: the starting :class:`~emjax.deep.DeepMoE`.
        key: ``jax.random`` key for the mini-batches (shuffling).
        x: (n, d) features; y: (n,) integer labels in {0, ..., C-1}.
        optimizer: an ``optax.GradientTransformation`` (line-search ones such as ``optax.lbfgs``
            receive ``value``, ``grad`` and ``value_fn``). Its numbers are closed over; to sweep a
            learning rate without recompiling, build the optimizer inside a jitted/vmapped function.
        num_em_steps: number of E-steps T >= 1 (Python int).
        inner_steps: optax steps per M-step m >= 1 (Python int).
        batch_size: samples per E-step (<= n); None = the full data set.
        inner_batch_size: optional sub-batch size for the inner steps; must divide the E-step batch.
        reset_optimizer: re-initialise the optimizer state at every E-step.
        eval_data: optional ``(x_eval, y_eval)``, evaluated every ``eval_every`` E-steps (default: at the end).
        eval_every: must divide ``num_em_steps``.
        tol, atol: :func:`emjax.fit`'s stopping rule and defaults (None: all ``num_em_steps``
            E-steps) on ``losses``: E-step t stops the run, without its M-step, when
            $|L_{t-1} - L_t| \le$ ``atol`` $+$ ``tol`` $|L_t|$. With mini-batches the two losses
            are on different batches, so the tolerance must exceed the batch noise.
        progress: as for :func:`emjax.fit` (a line every 10 E-steps with ``True``, every k with k).

    Returns:
        A :class:`DeepFitResult` (an :class:`emjax.FitResult`): ``params`` the trained model,
        ``status``, ``num_steps``, ``losses``, and ``history`` a :class:`TrainHistory` over
        E-steps (``gradient_evaluations`` grows by ``inner_steps`` per E-step). It unpacks as
        ``model, history``. To ``vmap`` a fit (over keys, learning rates), use
        ``eqx.filter_vmap``: the model holds non-array leaves (activation functions).

    Raises:
        ValueError: on bad shapes, labels out of range, ``batch_size > n``, non-positive counts.

    Example:
        >>> import jax, optax, emjax.deep as deep
        >>> x, y, truth = deep.synthetic_nonlinear_moe(jax.random.key(0), 256, 2, 2, 3)
        >>> model = deep.DeepMoE.mlp(jax.random.key(1), 2, 3, 2, expert_width=16, gate_width=16)
        >>> result = deep.fit_em(model, jax.random.key(2), x, y, optimizer=optax.adam(3e-2),
        ...                      num_em_steps=20, inner_steps=3, batch_size=64)
        >>> history = result.history
        >>> history.gradient_evaluations[-1].item(), bool(history.loss[-1] < history.loss[0]), int(result.status)
        (60, True, 0)
    """
    _check_fit(model, x, y, optimizer, num_em_steps, batch_size, eval_data, eval_every, inner_steps, inner_batch_size)
    every = progress_interval(progress)
    x, y = as_working(model, x, y)
    return _fit_em(
        key,
        model,
        x,
        y,
        optimizer,
        num_em_steps,
        inner_steps,
        batch_size,
        inner_batch_size,
        bool(reset_optimizer),
        _prepare_eval(model, eval_data),
        eval_every,
        _rule(tol, atol, x.dtype),
        every,
    )


@data_arguments
def fit_end_to_end(
    model: DeepMoE,
    key: Array,
    x,
    y,
    *,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    batch_size: int | None = None,
    eval_data=None,
    eval_every: int | None = None,
    tol=None,
    atol=0.0,
    progress: bool | int = False,
) -> DeepFitResult:
    r"""The baseline: ``num_steps`` optax steps on L (the top-k renormalised likelihood), one mini-batch each.

    The routing is recomputed at every step and gets no gradient (it is piecewise constant);
    the gate learns through $\tilde\pi$ on the routed experts, as in the E-step of :func:`fit_em`.

    Args:
        model, key, x, y, optimizer, batch_size, eval_data, eval_every: as in :func:`fit_em`.
        num_steps: number of optax steps (= gradient evaluations), a Python int >= 1.
        tol, atol, progress: as in :func:`fit_em` (step t stops the run, without its update, when
            its loss meets the rule against step t - 1's).

    Returns:
        A :class:`DeepFitResult` with ``history.surrogate`` and ``history.inner_surrogate`` None
        and ``forward_passes`` 0.

    Example:
        >>> import jax, optax, emjax.deep as deep
        >>> x, y, truth = deep.synthetic_nonlinear_moe(jax.random.key(0), 256, 2, 2, 3)
        >>> model = deep.DeepMoE.mlp(jax.random.key(1), 2, 3, 2, expert_width=16, gate_width=16)
        >>> fitted, history = deep.fit_end_to_end(model, jax.random.key(2), x, y, optimizer=optax.adam(3e-2),
        ...                                       num_steps=60, batch_size=64)
        >>> history.gradient_evaluations[-1].item(), history.surrogate is None
        (60, True)
    """
    _check_fit(model, x, y, optimizer, num_steps, batch_size, eval_data, eval_every)
    every = progress_interval(progress)
    x, y = as_working(model, x, y)
    return _fit_end_to_end(
        key,
        model,
        x,
        y,
        optimizer,
        num_steps,
        batch_size,
        _prepare_eval(model, eval_data),
        eval_every,
        _rule(tol, atol, x.dtype),
        every,
    )
