r"""K-expert mixtures with a softmax gate (MATH.md §1-§4): parameters and models.

$P(z=k\mid x) = \mathrm{softmax}_k(x\cdot W_k)$ with $W$ of shape (K, d), and expert k is any
:class:`~emjax.models.experts.AbstractExpertFamily` with parameters ``experts[k]`` (and
``sigma[k]`` for families with a scale).

**Over-parameterisation.** Adding one vector to every row of W leaves the model unchanged, so
emjax pins row 0 of the gate: it is never updated (it is 0 when parameters come from
:func:`emjax.init_params`; any fixed value gives the same model). Softmax-classifier experts pin
class column 0 of each $B_k$ the same way. Pinned entries are excluded from the flattened
parameter vector, the information matrices, standard errors and parameter counts.

**Intercepts.** Append a column of ones to x: column j of the gate and of the experts is then the
intercept of the gate logits and of each expert.

**Flattened order** (every gradient, information matrix, MIM and Jacobian over K-expert
parameters): the free gate rows ``gate[1:]`` row by row, then ``experts`` expert by expert
(row-major, pinned class column left out), then ``sigma`` when the family has a scale.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import Array

from .._minimize import METHODS, masked_minimize
from .experts import AbstractExpertFamily, GaussianExpert, PoissonExpert, SoftmaxExpert


def _as_leaf(value):
    # NumPy arrays stay NumPy (static masks such as MixtureOfExperts.pinned must be usable as
    # indices under jit); everything else becomes a jax array.
    return value if isinstance(value, np.ndarray) else jnp.asarray(value)


class MoEParams(eqx.Module):
    r"""Parameters of a K-expert mixture.

    Args:
        gate: gate weights $W$, shape (K, d); row 0 is pinned (see the module docstring).
        experts: expert coefficients, shape (K, d) (linear, Poisson) or (K, d, C) (softmax classifier).
        sigma: noise standard deviations, shape (K,), for linear-Gaussian experts; None otherwise.

    Example:
        >>> import jax.numpy as jnp, emjax
        >>> p = emjax.MoEParams(gate=jnp.zeros((3, 2)), experts=jnp.ones((3, 2)), sigma=jnp.ones(3))
        >>> p.num_experts, p.dim
        (3, 2)
    """

    gate: Array
    experts: Array
    sigma: Array | None = None

    def __init__(self, gate, experts, sigma=None):
        self.gate = _as_leaf(gate)
        self.experts = _as_leaf(experts)
        self.sigma = None if sigma is None else _as_leaf(sigma)

    @property
    def num_experts(self) -> int:
        """K."""
        return self.gate.shape[-2]

    @property
    def dim(self) -> int:
        """The feature dimension d."""
        return self.gate.shape[-1]


class MixtureOfExperts(eqx.Module):
    r"""A softmax-gated mixture of ``num_experts`` experts of one family (see the module docstring).

    Args:
        expert: the expert family (e.g. ``GaussianExpert()``).
        num_experts: K >= 2.
        ridge: λ >= 0; the model's objective becomes $L + \tfrac{\lambda}{2}(\|W\|^2 + \|B\|^2)$ over
            the free gate and expert entries (σ excluded). Every solver minimises it: the EM and
            mirror-descent M-steps, gradient EM's surrogate steps, gradient descent and optax
            solvers (EM for a penalised likelihood is still monotone, in the penalised objective).
            :func:`emjax.neg_log_likelihood` and fit traces report L itself. Default 0: the exact
            EM of the likelihood. A small ridge keeps the parameters of an expert that has lost
            all its data, or whose data are separable, bounded.
        m_step_method: the inner solver of the gate and of iterative expert M-steps: ``"newton"``
            (dense, damped), ``"lbfgs"``, or ``"auto"`` (default: Newton for sub-problems of at most
            256 entries, L-BFGS above; see :mod:`emjax._minimize`). Closed-form M-steps (linear
            experts) ignore it.
        m_step_max_steps: bound on inner steps per sub-problem (default 50 Newton / 100 L-BFGS
            steps). With a small bound an L-BFGS M-step is a generalized EM step: it decreases
            the surrogate without minimising it, so L still never increases.
    """

    expert: AbstractExpertFamily
    num_experts: int = eqx.field(static=True)
    ridge: float = eqx.field(static=True, default=0.0)
    m_step_method: str = eqx.field(static=True, default="auto")
    m_step_max_steps: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if not isinstance(self.num_experts, int) or isinstance(self.num_experts, bool) or self.num_experts < 2:
            raise ValueError(f"num_experts must be a Python int >= 2; got {self.num_experts!r}")
        ridge_is_number = isinstance(self.ridge, (int, float)) and not isinstance(self.ridge, bool)
        if not (ridge_is_number and np.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"ridge must be a finite number >= 0; got {self.ridge!r}")
        if self.m_step_method not in METHODS:
            raise ValueError(f"m_step_method must be one of {METHODS}; got {self.m_step_method!r}")
        steps = self.m_step_max_steps
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
            raise ValueError(f"m_step_max_steps must be None or a Python int >= 1; got {steps!r}")

    def minimize(self, objective, init, free):
        """The model's masked inner solver (see ``m_step_method``), as used by every M-step."""
        return masked_minimize(objective, init, free, self.m_step_method, self.m_step_max_steps)

    def pinned(self, d: int) -> MoEParams:
        """Boolean masks (numpy) of the entries fixed by convention: gate row 0, pinned expert entries."""
        gate = np.zeros((self.num_experts, d), bool)
        gate[0] = True
        experts = np.broadcast_to(self.expert.pinned(d), (self.num_experts,) + self.expert.coef_shape(d))
        sigma = np.zeros(self.num_experts, bool) if self.expert.has_scale else None
        return MoEParams(gate=gate, experts=np.array(experts), sigma=sigma)

    def num_free_parameters(self, d: int) -> int:
        """Number of free (non-pinned) parameters."""
        pinned = self.pinned(d)
        leaves = [pinned.gate, pinned.experts] + ([pinned.sigma] if pinned.sigma is not None else [])
        return int(sum(np.sum(~leaf) for leaf in leaves))


def _check_classes(num_classes) -> int:
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be a Python int >= 2; got {num_classes!r}")
    return num_classes


class MoLinE(MixtureOfExperts):
    r"""Mixture of K linear-Gaussian experts, $y\mid x, z=k \sim N(x\cdot\beta_k, \sigma_k^2)$.

    Parameters: ``MoEParams(gate=(K, d), experts=(K, d), sigma=(K,))``. The M-step is weighted least
    squares with σ_k² = weighted residual variance, floored at 1e-8.

    Example:
        >>> import jax, emjax
        >>> model = emjax.MoLinE(3)
        >>> truth = emjax.testing.random_params(model, jax.random.key(0), d=2)
        >>> x, y = emjax.sample(model, truth, jax.random.key(1), 100)
        >>> truth.experts.shape, truth.sigma.shape
        ((3, 2), (3,))
    """

    def __init__(self, num_experts: int, ridge: float = 0.0, m_step_method: str = "auto",
                 m_step_max_steps: int | None = None):
        self.expert = GaussianExpert()
        self.num_experts = num_experts
        self.ridge = ridge
        self.m_step_method = m_step_method
        self.m_step_max_steps = m_step_max_steps


class MoLogE(MixtureOfExperts):
    r"""Mixture of K softmax-classifier experts, $P(y=c\mid x, z=k) = \mathrm{softmax}_c(x B_k)$.

    Parameters: ``MoEParams(gate=(K, d), experts=(K, d, C))`` with column 0 of each $B_k$ pinned.
    Labels are integers in {0, ..., C-1}. The M-step is a weighted multinomial regression, solved by
    Newton while $d\cdot C \le 256$ and by L-BFGS above (``m_step_method``, ``m_step_max_steps``).
    """

    def __init__(self, num_experts: int, num_classes: int = 2, ridge: float = 0.0, m_step_method: str = "auto",
                 m_step_max_steps: int | None = None):
        self.expert = SoftmaxExpert(num_classes=_check_classes(num_classes))
        self.num_experts = num_experts
        self.ridge = ridge
        self.m_step_method = m_step_method
        self.m_step_max_steps = m_step_max_steps


class MoPoE(MixtureOfExperts):
    r"""Mixture of K Poisson regression experts, $y\mid x, z=k \sim \mathrm{Poisson}(\exp(x\cdot\beta_k))$.

    Parameters: ``MoEParams(gate=(K, d), experts=(K, d))``. Built only from the generic expert
    interface (:class:`~emjax.models.experts.PoissonExpert`).
    """

    def __init__(self, num_experts: int, ridge: float = 0.0, m_step_method: str = "auto",
                 m_step_max_steps: int | None = None):
        self.expert = PoissonExpert()
        self.num_experts = num_experts
        self.ridge = ridge
        self.m_step_method = m_step_method
        self.m_step_max_steps = m_step_max_steps
