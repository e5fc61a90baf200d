"""An independent NumPy/SciPy oracle for the K-expert models (docs/math.md §1-§2, §4.2).

Densities come from ``scipy.stats``, responsibilities from Bayes' rule on probabilities, and KL
divergences from their textbook closed forms. Float64, small problems only.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from scipy.special import softmax

import emjax


def _np(params):
    sigma = None if params.sigma is None else np.asarray(params.sigma)
    return np.asarray(params.gate), np.asarray(params.experts), sigma


def expert_densities(model, params, x, y):
    """p(y_n | x_n, z=k), shape (n, K)."""
    _, experts, sigma = _np(params)
    x, y = np.asarray(x), np.asarray(y)
    columns = []
    for k in range(model.num_experts):
        if isinstance(model, emjax.MoLinE):
            columns.append(stats.norm.pdf(y, loc=x @ experts[k], scale=sigma[k]))
        elif isinstance(model, emjax.MoLogE):
            probs = softmax(x @ experts[k], axis=1)
            columns.append(probs[np.arange(len(y)), y.astype(int)])
        else:
            columns.append(stats.poisson.pmf(y, np.exp(x @ experts[k])))
    return np.stack(columns, axis=1)


def gate_probabilities(params, x):
    gate, _, _ = _np(params)
    return softmax(np.asarray(x) @ gate.T, axis=1)


def responsibilities(model, params, x, y):
    joint = gate_probabilities(params, x) * expert_densities(model, params, x, y)
    return joint / joint.sum(axis=1, keepdims=True)


def loss(model, params, x, y):
    joint = gate_probabilities(params, x) * expert_densities(model, params, x, y)
    return -np.mean(np.log(joint.sum(axis=1)))


def _expert_kl(model, ref, params, x, k):
    """Per-sample KL(p_ref(y | x, k) || p(y | x, k))."""
    _, e_ref, s_ref = _np(ref)
    _, e, s = _np(params)
    if isinstance(model, emjax.MoLinE):
        mean_ref, mean = x @ e_ref[k], x @ e[k]
        return np.log(s[k] / s_ref[k]) + (s_ref[k] ** 2 + (mean_ref - mean) ** 2) / (2 * s[k] ** 2) - 0.5
    if isinstance(model, emjax.MoLogE):
        p_ref, p = softmax(x @ e_ref[k], axis=1), softmax(x @ e[k], axis=1)
        return np.sum(p_ref * np.log(p_ref / p), axis=1)
    rate_ref, rate = np.exp(x @ e_ref[k]), np.exp(x @ e[k])
    return rate_ref * np.log(rate_ref / rate) - rate_ref + rate


def complete_kl(model, params, ref, x):
    """mean_n KL(p_ref(y, z | x_n) || p_params(y, z | x_n)) (docs/math.md §4.2, reference first)."""
    x = np.asarray(x)
    pi_ref, pi = gate_probabilities(ref, x), gate_probabilities(params, x)
    total = np.sum(pi_ref * np.log(pi_ref / pi), axis=1)
    for k in range(model.num_experts):
        total = total + pi_ref[:, k] * _expert_kl(model, ref, params, x, k)
    return np.mean(total)
