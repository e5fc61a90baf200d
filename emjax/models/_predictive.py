r"""The experts' predictive distributions of y given x: what :meth:`AbstractModel.expert_predictive` returns.

Each class holds one distribution per sample n and component c, every leaf of leading shape (n, C),
and states the per-component formulas (mean, variance, CDF, probabilities) that the mixture
predictions of :mod:`emjax._predict` combine with the gate's probabilities $\pi_c(x)$:

* :class:`GaussianPredictive`: $y\mid x, z=c \sim N(\mu_c, \sigma_c^2)$ (linear-Gaussian experts);
* :class:`PoissonPredictive`: $y\mid x, z=c \sim \mathrm{Poisson}(\lambda_c)$ (Poisson experts);
* :class:`CategoricalPredictive`: $P(y=k\mid x, z=c) = p_{ck}$ (classifier experts).

A new kind of response is one more subclass: the mixture code reads only these methods. A method a
kind of response does not have (the mean of a class label, the class probabilities of a real
response) raises ``ValueError`` with a message that names the prediction to use instead.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array
from jax.scipy.special import gammainc, gammaincc, ndtr, ndtri

_NOT_A_CLASSIFIER = (
    "{what} is for classifier experts (MoLogE, SymMoLogE); these experts predict a {kind} response: "
    "use emjax.predict_mean, emjax.predict_variance or emjax.predict_quantiles"
)
_A_CLASSIFIER = (
    "{what} needs a numeric response, but these experts are classifiers (their labels are categories, "
    "with no mean, variance or quantiles): use emjax.predict_proba for P(y = k | x)"
)


class AbstractPredictive(eqx.Module):
    """Per-sample, per-component predictive distributions; every leaf has leading shape (n, C).

    ``discrete`` is True for responses on the integers: their quantiles are the smallest integer k
    with CDF(k) >= q, found by bisection on integers instead of on the reals.
    """

    discrete = False

    def mean(self) -> Array:
        r"""$E[y\mid x, z=c]$, shape (n, C)."""
        raise ValueError(_A_CLASSIFIER.format(what="predict_mean"))

    def variance(self) -> Array:
        r"""$\mathrm{Var}[y\mid x, z=c]$, shape (n, C)."""
        raise ValueError(_A_CLASSIFIER.format(what="predict_variance"))

    def cdf(self, t: Array) -> Array:
        r"""$P(y \le t_n\mid x_n, z=c)$ for t of shape (n,); shape (n, C)."""
        raise ValueError(_A_CLASSIFIER.format(what="predict_quantiles"))

    def survival(self, t: Array) -> Array:
        r"""$P(y > t_n\mid x_n, z=c)$ without cancellation near 1 (default: 1 - :meth:`cdf`)."""
        return 1 - self.cdf(t)

    def density(self, t: Array) -> Array:
        r"""The density of a continuous response at $t_n$, shape (n, C) (not needed when ``discrete``)."""
        raise NotImplementedError(f"{type(self).__name__} has no density")

    def quantile_bracket(self, q: Array) -> tuple[Array, Array]:
        r"""``(low, high)``, each (n, C), with $\mathrm{CDF}_c(\text{low}) \le q \le \mathrm{CDF}_c(\text{high})$
        for a scalar q in (0, 1) (strictly below q at ``low`` when ``discrete``): then the mixture's
        q-quantile lies in $[\min_c \text{low}, \max_c \text{high}]$."""
        raise ValueError(_A_CLASSIFIER.format(what="predict_quantiles"))

    def log_probabilities(self) -> Array:
        r"""$\log P(y=k\mid x, z=c)$, shape (n, C, num_classes)."""
        raise ValueError(_NOT_A_CLASSIFIER.format(what="predict_proba", kind="numeric"))


class GaussianPredictive(AbstractPredictive):
    r"""$y\mid x_n, z=c \sim N(\mu_{nc}, \sigma_{nc}^2)$.

    Attributes:
        loc: the means $\mu$, shape (n, C).
        scale: $\sigma > 0$, shape (n, C).
    """

    loc: Array
    scale: Array

    def mean(self):
        return self.loc

    def variance(self):
        return jnp.square(self.scale)

    def cdf(self, t):
        return ndtr((t[:, None] - self.loc) / self.scale)

    def survival(self, t):
        return ndtr((self.loc - t[:, None]) / self.scale)

    def density(self, t):
        z = (t[:, None] - self.loc) / self.scale
        return jnp.exp(-0.5 * jnp.square(z)) / (jnp.sqrt(2 * jnp.pi).astype(z.dtype) * self.scale)

    def quantile_bracket(self, q):
        # Each component's own q-quantile: the mixture CDF is a convex combination of the components'.
        quantile = self.loc + self.scale * ndtri(q)
        return quantile, quantile


class PoissonPredictive(AbstractPredictive):
    r"""$y\mid x_n, z=c \sim \mathrm{Poisson}(\lambda_{nc})$.

    Attributes:
        rate: $\lambda > 0$, shape (n, C).
    """

    rate: Array
    discrete = True

    def mean(self):
        return self.rate

    def variance(self):
        return self.rate

    def cdf(self, t):
        # P(y <= k) = Q(k + 1, λ), the regularised upper incomplete gamma function; 0 below k = 0.
        k = jnp.floor(t)[:, None]
        return jnp.where(k >= 0, gammaincc(jnp.maximum(k, 0) + 1, self.rate), 0)

    def survival(self, t):
        k = jnp.floor(t)[:, None]
        return jnp.where(k >= 0, gammainc(jnp.maximum(k, 0) + 1, self.rate), 1)

    def quantile_bracket(self, q):
        r"""Low: -1 (CDF 0). High: $\lceil\lambda + \sqrt{2\lambda u} + u/3\rceil + 1$ with $u = -\log(1-q)$.

        The centred Poisson is sub-gamma with variance factor λ and scale 1/3
        ($e^s - 1 - s \le s^2/(2(1 - s/3))$), so $P(y - \lambda > \sqrt{2\lambda u} + u/3) \le e^{-u} = 1 - q$
        (Boucheron, Lugosi and Massart, *Concentration Inequalities*, section 2.4): the CDF there is at least q."""
        u = -jnp.log1p(-q)
        high = jnp.ceil(self.rate + jnp.sqrt(2 * self.rate * u) + u / 3) + 1
        return jnp.full_like(high, -1), high


class CategoricalPredictive(AbstractPredictive):
    r"""$P(y=k\mid x_n, z=c) = p_{nck}$ over the class labels $k = 0, \dots, K-1$, kept in log space.

    Attributes:
        log_probs: $\log p$, shape (n, C, num_classes), each row's exponentials summing to 1.
    """

    log_probs: Array

    def log_probabilities(self):
        return self.log_probs


def bernoulli_pair(logits: Array) -> CategoricalPredictive:
    """Two classes {0, 1} with $P(y=1) = \\mathrm{sigmoid}(\\text{logit})$, in log space, without cancellation."""
    return CategoricalPredictive(
        log_probs=jnp.stack([jax.nn.log_sigmoid(-logits), jax.nn.log_sigmoid(logits)], axis=-1)
    )
