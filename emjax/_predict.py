r"""Predictions: the mixture's law of y given x, written once for every model.

The predictive distribution of a mixture of experts is

$$p(y\mid x) = \sum_c \pi_c(x)\, p_c(y\mid x), \qquad \pi_c(x) = P(z=c\mid x),$$

the gate's prior probabilities (not the responsibilities, which need y) times each component's law of
y. A model supplies both through its contract (:class:`emjax.models.AbstractModel`):
:meth:`~emjax.models.AbstractModel.gate_log_probs` and
:meth:`~emjax.models.AbstractModel.expert_predictive` (an :class:`emjax.models.AbstractPredictive`:
Gaussian, Poisson or categorical components). Everything here combines them, one formula each:

* mean $\sum_c\pi_c\mu_c$; variance by the law of total variance,
  $\sum_c\pi_c\sigma_c^2 + \sum_c\pi_c(\mu_c - \bar\mu)^2$ $(= \sum_c\pi_c(\sigma_c^2 + \mu_c^2) - \bar\mu^2$,
  written without the cancellation);
* quantiles by bisection on the mixture CDF $F = \sum_c\pi_c F_c$ inside a bracket that contains
  them, on the reals (continuous responses) or on the integers (counts);
* class probabilities $\sum_c\pi_c\,p_c(k\mid x)$.

Classifier experts (:class:`~emjax.MoLogE`, :class:`~emjax.SymMoLogE`) have class labels, not numbers:
:func:`predict_mean`, :func:`predict_variance` and :func:`predict_quantiles` raise ``ValueError``
for them and point to :func:`predict_proba` (for SymMoLogE, $P(y=1\mid x)$ is its column 1); for the
other models :func:`predict_proba` raises and points to the other three.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._checks import validate
from ._dtypes import as_arrays
from ._validation import check_real, check_values, not_open_unit, public, shape_of

_EXTRA_BISECTIONS = 12  # continuous quantiles: mantissa bits + 12 halvings of the bracket


def _mixture(model, params, x):
    """The gate's prior probabilities (n, C) and the components' predictive distributions."""
    params, x = as_arrays(params, x)
    return jnp.exp(model.gate_log_probs(params, x)), model.expert_predictive(params, x)


@public(validate)
def gate_probabilities(model, params, x) -> Array:
    r"""The gate's prior probabilities $\pi_c(x_n) = P(z=c\mid x_n)$, shape (n, C).

    K-expert models: $\mathrm{softmax}_k(x_n\cdot W_k)$. Symmetric models: column 0 is
    $\mathrm{sigmoid}(-x_n\cdot w)$ (z=0, expert $-\beta$), column 1 $\mathrm{sigmoid}(x_n\cdot w)$ (z=1,
    expert $+\beta$), the columns of :func:`emjax.responsibilities`. They are the responsibilities
    before y is seen.

    Args:
        model: the model.
        params: its parameters.
        x: features, shape (n, d).

    Returns:
        The probabilities, shape (n, C), rows summing to 1.

    Raises:
        ValueError: for bad arguments (shapes, types, non-finite values).

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.log(jnp.array([3.0])), beta=jnp.ones(1))
        >>> [round(v, 6) for v in emjax.gate_probabilities(emjax.SymMoLinE(), p, jnp.ones((1, 1)))[0].tolist()]
        [0.25, 0.75]
    """
    params, x = as_arrays(params, x)
    return jnp.exp(model.gate_log_probs(params, x))


@public(validate)
def predict_mean(model, params, x) -> Array:
    r"""The mean of y given x under the mixture, $E[y\mid x_n] = \sum_c\pi_c(x_n)\,\mu_c(x_n)$, shape (n,).

    $\mu_c = x\cdot\beta_c$ for linear-Gaussian experts (MoLinE; SymMoLinE: $\pm x\cdot\beta$, the sign
    of :func:`gate_probabilities`' columns), $\exp(x\cdot\beta_c)$ for Poisson experts (MoPoE).

    Args:
        model: a model with a numeric response (MoLinE, MoPoE, SymMoLinE, or one's own).
        params: its parameters.
        x: features, shape (n, d).

    Returns:
        The means, shape (n,).

    Raises:
        ValueError: for classifier experts (MoLogE, SymMoLogE): use :func:`predict_proba`; for bad
            arguments.

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.log(jnp.array([3.0])), beta=jnp.array([2.0]))
        >>> round(float(emjax.predict_mean(emjax.SymMoLinE(sigma=1.0), p, jnp.ones((1, 1)))[0]), 6)  # .75*2 - .25*2
        1.0
    """
    gate, components = _mixture(model, params, x)
    return jnp.sum(gate * components.mean(), axis=1)


@public(validate)
def predict_variance(model, params, x) -> Array:
    r"""The variance of y given x under the mixture (law of total variance), shape (n,):

    $$\mathrm{Var}[y\mid x] = \sum_c\pi_c\,\sigma_c^2 + \sum_c\pi_c\,(\mu_c - \bar\mu)^2
      = \sum_c\pi_c(\sigma_c^2 + \mu_c^2) - \bar\mu^2,\qquad \bar\mu = \sum_c\pi_c\mu_c,$$

    evaluated in the first form, which has no cancellation. $\sigma_c^2$ is the expert's noise variance
    (Gaussian experts) or its rate $\lambda_c$ (Poisson experts).

    Args:
        model: a model with a numeric response (MoLinE, MoPoE, SymMoLinE, or one's own).
        params: its parameters.
        x: features, shape (n, d).

    Returns:
        The variances, shape (n,).

    Raises:
        ValueError: for classifier experts (MoLogE, SymMoLogE): use :func:`predict_proba`; for bad
            arguments.

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.log(jnp.array([3.0])), beta=jnp.array([2.0]))
        >>> round(float(emjax.predict_variance(emjax.SymMoLinE(sigma=1.0), p, jnp.ones((1, 1)))[0]), 6)  # 1 + 3
        4.0
    """
    gate, components = _mixture(model, params, x)
    within = jnp.sum(gate * components.variance(), axis=1)
    means = components.mean()
    mean = jnp.sum(gate * means, axis=1)
    return within + jnp.sum(gate * jnp.square(means - mean[:, None]), axis=1)


@public(validate)
def predict_proba(model, params, x) -> Array:
    r"""Class probabilities under the mixture, $P(y=k\mid x_n) = \sum_c\pi_c(x_n)\,p_c(k\mid x_n)$, shape (n, K).

    MoLogE: $p_c(k\mid x) = \mathrm{softmax}_k(x B_c)$, K the model's ``num_classes``. SymMoLogE: two
    classes, labels 0 and 1, with $p_c(1\mid x) = \mathrm{sigmoid}(\pm x\cdot\beta)$ (+ for z=1).

    Args:
        model: a model with classifier experts (MoLogE, SymMoLogE, or one's own).
        params: its parameters.
        x: features, shape (n, d).

    Returns:
        The probabilities, shape (n, num_classes), rows summing to 1.

    Raises:
        ValueError: for models with a numeric response (use :func:`predict_mean`,
            :func:`predict_variance`, :func:`predict_quantiles`); for bad arguments.

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.log(jnp.array([3.0])), beta=jnp.log(jnp.array([3.0])))
        >>> proba = emjax.predict_proba(emjax.SymMoLogE(), p, jnp.ones((1, 1)))  # .75 * .75 + .25 * .25
        >>> [round(v, 6) for v in proba[0].tolist()]
        [0.375, 0.625]
    """
    return jnp.exp(mixture_log_proba(model, params, x))


@public(validate)
def predict_log_proba(model, params, x) -> Array:
    r"""Log class probabilities under the mixture, $\log\sum_c \exp(\log\pi_c(x_n) + \log p_c(k\mid x_n))$.

    The logarithm of :func:`predict_proba`, computed in log space throughout (a log-sum-exp over the
    components), so it stays finite where a probability underflows: what a cross-entropy needs.

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.zeros(1), beta=jnp.full(1, 800.0))
        >>> emjax.predict_log_proba(emjax.SymMoLogE(), p, jnp.ones((1, 1)))[0].tolist()  # each class: 1/2
        [-0.6931471805599453, -0.6931471805599453]
    """
    return mixture_log_proba(model, params, x)


def mixture_log_proba(model, params, x) -> Array:
    """:func:`predict_log_proba` without the boundary checks: for library code already inside a compiled loop."""
    params, x = as_arrays(params, x)
    log_gate = model.gate_log_probs(params, x)
    log_components = model.expert_predictive(params, x).log_probabilities()
    return jax.nn.logsumexp(log_gate[:, :, None] + log_components, axis=1)


# ------------------------------------------------------------------------------------------------ quantiles


def _mixture_quantile(gate: Array, components, q: Array) -> Array:
    """The q-quantile (scalar q) of every row's mixture, shape (n,).

    A bracket holding it comes from the components (:meth:`AbstractPredictive.quantile_bracket`);
    bisection keeps ``F(low) < q <= F(high)``. Each test reads the tail away from 1 (the CDF where
    q <= 1/2, the survival function against 1 - q above), so upper quantiles are as exact as lower ones.
    """
    # The search itself carries no derivative (see the end for the one it has).
    frozen_gate, frozen, frozen_q = jax.lax.stop_gradient((gate, components, q))
    upper = frozen_q > 0.5

    def below(t):  # F(t) < q
        lower_tail = jnp.sum(frozen_gate * frozen.cdf(t), axis=1) < frozen_q
        upper_tail = jnp.sum(frozen_gate * frozen.survival(t), axis=1) > 1 - frozen_q
        return jnp.where(upper, upper_tail, lower_tail)

    low, high = frozen.quantile_bracket(frozen_q)
    low, high = jnp.min(low, axis=1), jnp.max(high, axis=1)

    if components.discrete:

        def halve(bracket):
            lo, hi = bracket
            mid = jnp.floor((lo + hi) / 2)
            step_up = below(mid)
            return jnp.where(step_up, mid, lo), jnp.where(step_up, hi, mid)

        # Until every row's bracket (lo, hi] holds one integer; extra halvings leave it unchanged.
        _, high = jax.lax.while_loop(lambda b: jnp.any(b[1] - b[0] > 1), halve, (low, high))
        return high

    def bisect(_, bracket):
        lo, hi = bracket
        mid = lo + (hi - lo) / 2
        step_up = below(mid)
        return jnp.where(step_up, mid, lo), jnp.where(step_up, hi, mid)

    iterations = jnp.finfo(low.dtype).nmant + _EXTRA_BISECTIONS
    low, high = jax.lax.fori_loop(0, iterations, bisect, (low, high))
    t = jax.lax.stop_gradient((low + high) / 2)
    # The value is t; the derivative is the implicit one, dt = -(dF - dq) / f at F(t) = q: a Newton
    # correction whose value is subtracted again (exactly 0) but whose gradient is kept.
    residual = jnp.where(
        upper,
        (1 - q) - jnp.sum(gate * components.survival(t), axis=1),
        jnp.sum(gate * components.cdf(t), axis=1) - q,
    )
    density = jnp.sum(frozen_gate * frozen.density(t), axis=1)
    positive = density > 0
    correction = -residual / jnp.where(positive, density, 1)
    correction = jnp.where(positive & jnp.isfinite(correction), correction, 0)
    return t + (correction - jax.lax.stop_gradient(correction))


def _check_quantiles(model, params, x, q, **_) -> None:
    validate(model, params, x)
    check_real(q, "q")
    shape = shape_of(q, "q")
    if len(shape) > 1 or shape == (0,):
        raise ValueError(f"q must be one probability or a 1-D array of at least one; got shape {shape}")
    check_values(q, not_open_unit, "q must hold probabilities strictly between 0 and 1")


@public(_check_quantiles, traced=("q",))
def _predict_quantiles(model, params, x, q) -> Array:
    gate, components = _mixture(model, params, x)
    finfo = jnp.finfo(gate.dtype)
    # In the working dtype, and inside (0, 1) even where casting rounds a q near 0 or 1 onto the edge.
    q = jnp.clip(jnp.asarray(q, gate.dtype), finfo.tiny, 1 - finfo.epsneg)
    if q.ndim == 0:
        return _mixture_quantile(gate, components, q)
    return jax.vmap(_mixture_quantile, in_axes=(None, None, 0), out_axes=1)(gate, components, q)


def predict_quantiles(model, params, x, q) -> Array:
    r"""Quantiles of y given x under the mixture: the smallest $t$ with $F(t\mid x_n) \ge q$, where
    $F = \sum_c\pi_c F_c$ is the mixture CDF.

    Gaussian experts (MoLinE, SymMoLinE): the root of $F(t) = q$, found by bisection inside
    $[\min_c Q_c(q), \max_c Q_c(q)]$ ($Q_c$ the components' own quantiles, which bracket the mixture's)
    with a fixed number of halvings (mantissa bits + 12: 64 in float64, 35 in float32), so the result
    is exact to a few units in the last place of the bracket width; the derivative (``jax.grad``) is the
    implicit one, $\partial t = -(\partial F - \partial q)/f(t)$. Poisson experts (MoPoE): the smallest
    integer k with $F(k) \ge q$, by bisection on the integers under the bound
    $\lceil\lambda + \sqrt{2\lambda u} + u/3\rceil + 1$, $u = -\log(1-q)$, of every component (no
    derivative; in float32 counts above $2^{24}$ are not exact). Every comparison is made in the tail
    away from 1 (survival function against $1 - q$ for $q > 1/2$).

    Args:
        model: a model with a numeric response (MoLinE, MoPoE, SymMoLinE, or one's own).
        params: its parameters.
        x: features, shape (n, d).
        q: one probability, or a 1-D array (or list) of them, each strictly between 0 and 1. Traced:
            new values reuse the compilation. Cast to the working dtype (a value that rounds to 0 or
            1 there is moved to the nearest representable probability inside).

    Returns:
        Shape (n, len(q)) for a 1-D q, (n,) for a scalar q; counts are returned as floats.

    Raises:
        ValueError: if q is not in (0, 1); for classifier experts (MoLogE, SymMoLogE): use
            :func:`predict_proba`; for bad arguments.

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.SymParams(w=jnp.zeros(1), beta=jnp.array([2.0]))  # N(-2, 1) and N(2, 1), equal weights
        >>> t = emjax.predict_quantiles(emjax.SymMoLinE(sigma=1.0), p, jnp.ones((1, 1)), [0.025, 0.975])
        >>> [round(v, 4) for v in t[0].tolist()]
        [-3.6449, 3.6449]
    """
    if isinstance(q, (list, tuple)):
        leaves = jax.tree_util.tree_leaves(q)
        q = jnp.asarray(q) if any(isinstance(leaf, jax.Array) for leaf in leaves) else np.asarray(q)
    return _predict_quantiles(model, params, x, q)
