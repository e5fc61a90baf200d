r"""Expert families for K-expert mixtures: the one small class a new kind of expert needs.

An expert family is an exponential family for y given x and the expert's parameters $\theta_k$
(``coef``, plus an optional ``scale`` such as a noise σ):

$$\log p(y\mid x, \theta_k) = \langle\phi(x;\theta_k), T(y)\rangle - A(\phi(x;\theta_k)) + \log h(y).$$

A family states four things, all per sample and vectorised over n:

* :meth:`~AbstractExpertFamily.statistic` $T(y)$, shape (n, S);
* :meth:`~AbstractExpertFamily.natural` $\phi(x;\theta_k)$, shape (n, S);
* :meth:`~AbstractExpertFamily.log_partition` $A(\phi)$, shape (n,);
* :meth:`~AbstractExpertFamily.sample` and, if needed, :meth:`~AbstractExpertFamily.log_base` $\log h(y)$.

A family that is to predict (:func:`emjax.predict_mean` and the other ``predict_*`` functions) also
states :meth:`~AbstractExpertFamily.predictive`, the law of y given x as an
:class:`~emjax.models.AbstractPredictive`; the built-in families do.

Everything else has a generic default: the log-density, the mean statistic $E[T\mid x] = \nabla A(\phi)$,
and the weighted M-step, which minimises (mean over n, ridge λ)

$$f(\theta_k) = \mathrm{mean}_n\,[a_n A(\phi(x_n;\theta_k)) - \langle\phi(x_n;\theta_k), t_n\rangle]
   + \tfrac{\lambda}{2}\|\mathrm{coef}\|^2$$

by masked damped Newton, or L-BFGS for large experts (``minimize``, chosen by the model's
``m_step_method``; weights $a_n$ and weighted statistics $t_n$ come from the E-step, or are
blended for mirror descent, docs/math.md §4.6). A family may override any default with a closed form,
as :class:`GaussianExpert` does for weighted least squares. :class:`PoissonExpert` is written
only through the four required methods.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .._linalg import newton_shift, solve_psd
from .._minimize import masked_minimize
from .._newton import gradient_and_hessian
from .._validation import check_values, not_class_label, not_count
from ._model import row_mean
from ._predictive import CategoricalPredictive, GaussianPredictive, PoissonPredictive

VARIANCE_FLOOR = 1e-8


def residual_sum_of_squares(weights: Array, stats: Array, fitted: Array) -> Array:
    r"""$\sum_n a_n (m_n - f_n)^2 + (c_n - b_n^2/a_n)$ over axis 0, with targets $a_n$ (``weights``),
    $t_n = (b_n, c_n)$ (``stats[:, 0]``, ``stats[:, 1]``; any trailing expert axis) and $m_n = b_n/a_n$.

    Both terms are >= 0 (no cancellation, unlike $\sum c - 2bf + af^2$). Rows whose weight is below
    $\sqrt{\text{tiny}}$ (responsibilities that underflowed) are left out: they add at most that much,
    and dividing by them would make the derivative of $b/a$ (a $1/a^2$) overflow to NaN."""
    kept = weights > jnp.sqrt(jnp.finfo(weights.dtype).tiny)
    safe = jnp.where(kept, weights, 1)
    mean = stats[:, 0] / safe
    within = jnp.maximum(stats[:, 1] - stats[:, 0] * mean, 0)
    return jnp.sum(jnp.where(kept, weights * jnp.square(mean - fitted) + within, 0), axis=0)


class AbstractExpertFamily(eqx.Module):
    r"""An exponential-family expert $p(y\mid x,\theta_k)$; see the module docstring for the contract."""

    has_scale = False  # True when each expert also carries a positive scale (MoEParams.sigma)
    # True when natural(coef, scale, x) == x @ coef.reshape(d, -1): the generic M-step then runs as a
    # linear-predictor Newton solve (emjax._newton.linear_newton), same iterates, far less work.
    linear_natural = False

    def coef_shape(self, d: int) -> tuple[int, ...]:
        """Shape of one expert's coefficients (default ``(d,)``)."""
        return (d,)

    def pinned(self, d: int) -> np.ndarray:
        """Boolean mask of coefficients fixed by convention (never updated; default: none)."""
        return np.zeros(self.coef_shape(d), bool)

    @abc.abstractmethod
    def statistic(self, y: Array) -> Array:
        """Sufficient statistic $T(y)$, shape (n, S)."""

    @abc.abstractmethod
    def natural(self, coef: Array, scale: Array | None, x: Array) -> Array:
        r"""Natural parameters $\phi(x;\theta_k)$, shape (n, S)."""

    @abc.abstractmethod
    def log_partition(self, natural: Array) -> Array:
        r"""Log-partition $A(\phi)$ per row, shape (n,)."""

    @abc.abstractmethod
    def sample(self, coef: Array, scale: Array | None, key: Array, x: Array) -> Array:
        """Draw y given x from this expert, shape (n,)."""

    def log_base(self, y: Array) -> Array:
        r"""Base measure $\log h(y)$, shape (n,) (default 0)."""
        return jnp.zeros(y.shape[0], y.dtype)

    def check_labels(self, y) -> None:
        """Raise ``ValueError`` for responses this family cannot produce (default: any finite value)."""

    def initial_scale(self, y: Array, weights: Array | None = None) -> Array | None:
        """Starting scale for a data-driven initialisation (None for families without a scale); ``weights``
        are observation weights (rows counted that many times)."""
        return None

    def log_prob(self, coef: Array, scale: Array | None, x: Array, y: Array) -> Array:
        r"""$\log p(y_n\mid x_n, \theta_k)$, shape (n,)."""
        natural = self.natural(coef, scale, x)
        return jnp.sum(natural * self.statistic(y), axis=-1) - self.log_partition(natural) + self.log_base(y)

    def mean_statistic(self, coef: Array, scale: Array | None, x: Array) -> Array:
        r"""$E[T(y)\mid x, \theta_k] = \nabla A(\phi)$, shape (n, S)."""
        natural = self.natural(coef, scale, x)
        return jax.grad(lambda phi: jnp.sum(self.log_partition(phi)))(natural)

    def predictive(self, coef: Array, scale: Array | None, x: Array):
        r"""The law of y given $x_n$ under this expert: an :class:`~emjax.models.AbstractPredictive` whose
        leaves have leading shape (n,) (the model stacks the experts on axis 1). The default raises
        ``NotImplementedError``: $E[T(y)\mid x]$ alone does not say what y is."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define predictive(coef, scale, x), the law of y given x (an "
            "emjax.models.AbstractPredictive with leaves of shape (n,), e.g. GaussianPredictive(loc, scale)), "
            "which the predict_* functions need"
        )

    def m_step(self, x, weights, stats, coef, scale, free_coef, free_scale, ridge, minimize=masked_minimize):
        """Minimise the weighted expected complete-data loss over (coef, scale) (see module docstring).

        Args:
            x: features (n, d). weights: $a_n$, shape (n,). stats: $t_n$, shape (n, S).
            coef, scale: the current values (the warm start; frozen entries keep them).
            free_coef, free_scale: boolean masks of what may change.
            ridge: λ >= 0.
            minimize: ``minimize(objective, init, free) -> minimiser``, the masked inner solver
                (default :func:`emjax._minimize.masked_minimize`, Newton or L-BFGS by size).

        Returns:
            ``(coef, scale)``.
        """

        return minimize(lambda c: self.m_step_objective(c, x, weights, stats, scale, ridge), coef, free_coef), scale

    def m_step_objective(self, coef, x, weights, stats, scale, ridge) -> Array:
        r"""The generic M-step's objective at ``coef``: $\mathrm{mean}_n[a_n A(\phi_n) - \langle\phi_n, t_n\rangle]
        + \tfrac{\lambda}{2}\|\mathrm{coef}\|^2$ (see the module docstring)."""
        natural = self.natural(coef, scale, x)
        fit = jnp.mean(weights * self.log_partition(natural) - jnp.sum(natural * stats, axis=-1))
        return fit + 0.5 * ridge * jnp.sum(jnp.square(coef))


class GaussianExpert(AbstractExpertFamily):
    r"""Linear-Gaussian expert $y = x\cdot\beta_k + \sigma_k\varepsilon$.

    $T(y) = (y, y^2)$, $\phi = (x\cdot\beta/\sigma^2, -1/(2\sigma^2))$,
    $A(\phi) = -\phi_1^2/(4\phi_2) + \tfrac12\log(\pi/(-\phi_2))$,
    i.e. $(x\cdot\beta)^2/(2\sigma^2) + \tfrac12\log(2\pi\sigma^2)$.
    The M-step is weighted least squares and a weighted variance (docs/math.md §3.4, §4.6), with a floor
    of ``1e-8`` on σ² so that an expert sitting on a single point cannot collapse to σ = 0.
    """

    has_scale = True

    def statistic(self, y):
        return jnp.stack([y, jnp.square(y)], axis=-1)

    def natural(self, coef, scale, x):
        var = jnp.square(scale)
        mean = x @ coef
        return jnp.stack([mean / var, jnp.broadcast_to(-0.5 / var, mean.shape)], axis=-1)

    def log_partition(self, natural):
        return -jnp.square(natural[..., 0]) / (4 * natural[..., 1]) + 0.5 * jnp.log(jnp.pi / -natural[..., 1])

    def log_prob(self, coef, scale, x, y):
        var = jnp.square(scale)
        return -0.5 * jnp.log(2 * jnp.pi * var) - jnp.square(y - x @ coef) / (2 * var)

    def mean_statistic(self, coef, scale, x):
        mean = x @ coef
        return jnp.stack([mean, jnp.square(mean) + jnp.square(scale)], axis=-1)

    def sample(self, coef, scale, key, x):
        return x @ coef + scale * jax.random.normal(key, (x.shape[0],), x.dtype)

    def predictive(self, coef, scale, x):
        mean = x @ coef
        return GaussianPredictive(loc=mean, scale=jnp.broadcast_to(scale, mean.shape))

    def initial_scale(self, y, weights=None):
        if weights is None:
            spread = jnp.std(y)
        else:
            spread = jnp.sqrt(row_mean(jnp.square(y - row_mean(y, weights)), weights))
        return spread + jnp.sqrt(jnp.asarray(VARIANCE_FLOOR, y.dtype))

    def m_step(self, x, weights, stats, coef, scale, free_coef, free_scale, ridge, minimize=None):
        n, d = x.shape
        free = free_coef.astype(x.dtype)

        def residual_products(beta, curvatures):
            # X^T (residual) and, with curvatures (n, 1), the weighted Gram matrix, from one read of x
            return gradient_and_hessian(x, (stats[:, 0] - weights * (x @ beta))[:, None], curvatures)

        first, gram = residual_products(coef, weights[:, None])
        gram = gram[0] / n + ridge * jnp.eye(d, dtype=x.dtype)
        masked_gram = gram * free[:, None] * free[None, :] + jnp.diag(1 - free)

        def newton(beta, product):
            # Newton on a quadratic; frozen coordinates have a zero step, so they stay put. The
            # Levenberg shift keeps null directions of a singular design still; a second step
            # (iterative refinement) removes its O(sqrt(eps)) effect on well-posed problems.
            gradient = product[:, 0] / n - ridge * beta
            return beta + free * solve_psd(masked_gram, free * gradient, newton_shift(x.dtype))

        refined = newton(coef, first)
        new_coef = newton(refined, residual_products(refined, jnp.zeros((n, 0), x.dtype))[0])
        mass = jnp.sum(weights)
        safe_mass = jnp.where(mass > 0, mass, 1)
        rss = residual_sum_of_squares(weights, stats, x @ new_coef)
        variance = jnp.maximum(rss / safe_mass, VARIANCE_FLOOR)
        new_scale = jnp.where((mass > 0) & free_scale, jnp.sqrt(variance), scale)
        return new_coef, new_scale


class SoftmaxExpert(AbstractExpertFamily):
    r"""Multinomial-logistic (softmax classifier) expert, $P(y=c\mid x) = \mathrm{softmax}_c(x B_k)$.

    $T(y) = e_y$ (one-hot, C classes), $\phi = x B_k$, $A = \mathrm{logsumexp}$. Class logits are
    over-parameterised; emjax pins column 0 of every $B_k$ (its value never changes, 0 by convention).
    """

    num_classes: int = eqx.field(static=True)
    linear_natural = True

    def coef_shape(self, d):
        return (d, self.num_classes)

    def pinned(self, d):
        mask = np.zeros((d, self.num_classes), bool)
        mask[:, 0] = True
        return mask

    def statistic(self, y):
        return jax.nn.one_hot(y.astype(jnp.int32), self.num_classes, dtype=y.dtype)

    def natural(self, coef, scale, x):
        return x @ coef

    def log_partition(self, natural):
        return jax.nn.logsumexp(natural, axis=-1)

    def log_prob(self, coef, scale, x, y):
        log_probs = jax.nn.log_softmax(x @ coef, axis=-1)
        return jnp.take_along_axis(log_probs, y.astype(jnp.int32)[:, None], axis=-1)[:, 0]

    def mean_statistic(self, coef, scale, x):
        return jax.nn.softmax(x @ coef, axis=-1)

    def sample(self, coef, scale, key, x):
        return jax.random.categorical(key, x @ coef, axis=-1).astype(x.dtype)

    def predictive(self, coef, scale, x):
        return CategoricalPredictive(log_probs=jax.nn.log_softmax(x @ coef, axis=-1))

    def check_labels(self, y):
        message = f"y must hold class labels in {{0, ..., {self.num_classes - 1}}}"
        check_values(y, not_class_label, message, self.num_classes)


class PoissonExpert(AbstractExpertFamily):
    r"""Poisson regression expert with log link, $y\sim\mathrm{Poisson}(\exp(x\cdot\beta_k))$.

    $T(y) = y$, $\phi = x\cdot\beta_k$, $A(\phi) = e^\phi$, $\log h(y) = -\log y!$. Written only through
    the generic interface: its M-step is the default masked Newton.
    """

    linear_natural = True

    def statistic(self, y):
        return y[:, None]

    def natural(self, coef, scale, x):
        return (x @ coef)[:, None]

    def log_partition(self, natural):
        return jnp.exp(natural[..., 0])

    def log_base(self, y):
        return -jax.scipy.special.gammaln(y + 1)

    def sample(self, coef, scale, key, x):
        return jax.random.poisson(key, jnp.exp(x @ coef)).astype(x.dtype)

    def predictive(self, coef, scale, x):
        return PoissonPredictive(rate=jnp.exp(x @ coef))

    def check_labels(self, y):
        check_values(y, not_count, "y must hold counts (integers >= 0) for Poisson experts")
