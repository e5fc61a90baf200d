"""An independent NumPy/SciPy implementation of docs/math.md §1-§5 for the symmetric models.

Written from the formulas, not from emjax: densities are evaluated directly and combined with
Bayes' rule, the M-step is solved by SciPy's trust-region Newton to a tight gradient tolerance,
KL divergences are computed from probabilities, and the information matrices are assembled as
sums of per-sample outer products. Used as an oracle in float64 on small problems only.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize
from scipy.special import expit


def _normal_pdf(y, mean, sigma):
    return np.exp(-0.5 * ((y - mean) / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)


def expert_likelihoods(kind, beta, x, y, sigma=1.0):
    """(p(y | x, z=1), p(y | x, z=0)) as densities/probabilities."""
    xb = x @ beta
    if kind == "lin":
        return _normal_pdf(y, xb, sigma), _normal_pdf(y, -xb, sigma)
    p1 = expit(xb)  # P(y=1 | z=1)
    p0 = expit(-xb)  # P(y=1 | z=0)
    return np.where(y == 1, p1, 1 - p1), np.where(y == 1, p0, 1 - p0)


def responsibilities(kind, w, beta, x, y, sigma=1.0):
    gate = expit(x @ w)
    f1, f0 = expert_likelihoods(kind, beta, x, y, sigma)
    joint1, joint0 = gate * f1, (1 - gate) * f0
    r = joint1 / (joint1 + joint0)
    return np.stack([1 - r, r], axis=1)


def loss(kind, w, beta, x, y, sigma=1.0):
    gate = expit(x @ w)
    f1, f0 = expert_likelihoods(kind, beta, x, y, sigma)
    return -np.mean(np.log(gate * f1 + (1 - gate) * f0))


def mirror_map(kind, w, beta, x, sigma=1.0):
    xw, xb = x @ w, x @ beta
    expert = xb**2 / (2 * sigma**2) if kind == "lin" else np.log1p(np.exp(xb))
    return np.mean(np.log1p(np.exp(xw)) + expert)


def _kl_bern(a, b):
    return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))


def mean_kl(kind, first, second, x, sigma=1.0):
    """mean_n KL(p_first(y, z | x_n) || p_second(y, z | x_n)), from probabilities and densities."""
    (w1, b1), (w2, b2) = first, second
    gate = _kl_bern(expit(x @ w1), expit(x @ w2))
    if kind == "lin":
        expert = (x @ (b1 - b2)) ** 2 / (2 * sigma**2)
    else:
        expert = _kl_bern(expit(x @ b1), expit(x @ b2))
    return np.mean(gate + expert)


def _soft_logistic(x, t):
    n = x.shape[0]

    def f(u):
        z = x @ u
        return np.mean(np.logaddexp(0, z) - t * z)

    def g(u):
        return x.T @ (expit(x @ u) - t) / n

    def h(u):
        p = expit(x @ u)
        return (x * (p * (1 - p))[:, None]).T @ x / n

    result = optimize.minimize(
        f, np.zeros(x.shape[1]), jac=g, hess=h, method="trust-exact", options={"gtol": 1e-13, "maxiter": 500}
    )
    return result.x


def em_step(kind, w, beta, x, y, sigma=1.0):
    r = responsibilities(kind, w, beta, x, y, sigma)[:, 1]
    w_new = _soft_logistic(x, r)
    if kind == "lin":
        beta_new = np.linalg.lstsq(x, (2 * r - 1) * y, rcond=None)[0]
    else:
        q = y * r + (1 - y) * (1 - r)
        beta_new = _soft_logistic(x, q)
    return w_new, beta_new


def information(kind, w, beta, x, y, sigma=1.0):
    """(complete, missing) information as sums of per-sample (2d, 2d) matrices."""
    n, d = x.shape
    r = responsibilities(kind, w, beta, x, y, sigma)[:, 1]
    p = expit(x @ w)
    complete = np.zeros((2 * d, 2 * d))
    missing = np.zeros((2 * d, 2 * d))
    for i in range(n):
        xx = np.outer(x[i], x[i])
        curvature = 1 / sigma**2 if kind == "lin" else expit(x[i] @ beta) * (1 - expit(x[i] @ beta))
        complete[:d, :d] += p[i] * (1 - p[i]) * xx
        complete[d:, d:] += curvature * xx
        # Cov[S | x, y] J: the statistic (z, (2z-1)y/sigma^2) or (z, 1[y=z]) moves with z only.
        c = 2 * y[i] / sigma**2 if kind == "lin" else 2 * y[i] - 1
        jacobian_row = np.concatenate([x[i], c * x[i]])
        missing += r[i] * (1 - r[i]) * np.outer(jacobian_row, jacobian_row)
    return complete / n, missing / n


def mim(kind, w, beta, x, y, sigma=1.0):
    complete, missing = information(kind, w, beta, x, y, sigma)
    return np.linalg.solve(complete, missing)
