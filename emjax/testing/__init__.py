r"""Problem generators and test helpers: random ground truths, perturbed starts, label-invariant errors.

These follow the package's calling rule (model, params, key, data or sizes, options):

* :func:`random_params` ``(model, key, d, gate_norm, expert_norm, sigma, dtype)``: a ground truth for
  any model (:class:`~emjax.SymParams` for the symmetric models, :class:`~emjax.MoEParams` for K experts);
* :func:`perturb` ``(params, key, relative_error)``: a start at a given relative error per block;
* :func:`relative_errors` ``(estimate, truth)``: sign-invariant errors of symmetric-model parameters;
* :func:`match_experts` ``(estimate, truth)``: relabel K experts to match a truth (the permutation).

Example:
    >>> import jax, emjax
    >>> from emjax.testing import match_experts, random_params
    >>> model = emjax.MoLinE(2)
    >>> truth = random_params(model, jax.random.key(0), d=3)
    >>> x, y = emjax.sample(model, truth, jax.random.key(1), 500)
    >>> result = emjax.fit(model, emjax.em(), emjax.init_params(model, jax.random.key(2), x, y), x, y, 20)
    >>> match_experts(result.params, truth).experts.shape
    (2, 3)
"""

from ._errors import match_experts as match_experts
from ._errors import relative_errors as relative_errors
from ._problems import perturb as perturb
from ._problems import random_params as random_params

__all__ = ["match_experts", "perturb", "random_params", "relative_errors"]
