r"""Full-data quantities summed over a stream of batches: the loss, its gradient and information matrices.

Every mean over samples is a sum of per-batch sums, so one pass over the batches gives the
full-data $L(\theta)$, $\nabla L(\theta)$, $I_c(\theta)$ (the Hessian of the EM surrogate, docs/math.md
§5.6) and $I_{miss}(\theta)$ exactly, in memory independent of n. One pass is enough for either
full-batch polish step of :func:`emjax.streaming.fit_stream`:

* ``"em_gradient"``: $\theta^+ = \theta - I_c(\theta)^{-1}\nabla L(\theta)$, Lange's (1995) *EM gradient*
  algorithm, the EM iteration with its M-step replaced by one Newton step on the surrogate. Its
  Jacobian at a fixed point is $I - I_c^{-1}\nabla^2 L = I_c^{-1} I_{miss}$, EM's own (docs/math.md §5): the
  same fixed point at the same local rate as full-batch EM.
* ``"newton"``: $\theta^+ = \theta - (I_c - I_{miss})^{-1}\nabla L(\theta)$, Newton on L itself
  (Louis' identity $\nabla^2 L = I_c - I_{miss}$): the same fixed point, reached quadratically.

The information matrices may be estimated on a prefix of the stream (``curvature_rows``): the step
then uses an exact gradient with a slightly inexact Hessian, so it still stops exactly at
$\nabla L = 0$, the full-batch fixed point; only its rate changes, by about the relative error of
the estimate (of order $1/\sqrt{\text{rows}}$).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import validate
from .._dtypes import as_arrays
from .._information import complete_information, missing_information
from ..models._weighted import weighted_arrays


def split_batch(batch):
    """``(x, y, weights)`` from a batch ``(x, y)`` (weights None) or ``(x, y, weights)``."""
    if not (isinstance(batch, (tuple, list)) and len(batch) in (2, 3)):
        raise ValueError(f"each batch must be a pair (x, y) or a triple (x, y, weights); got {type(batch).__name__}")
    return (*batch, None) if len(batch) == 2 else tuple(batch)


def flat_mask(model, params, trainable) -> np.ndarray:
    """What may change (not pinned, trainable), flattened like the parameters."""
    return np.asarray(model.flat_free_mask(params, trainable), bool)


def flat_ridge(model, params) -> np.ndarray:
    """λ on every penalised entry of the flat vector: the curvature of the model's penalty (0 without one)."""
    free = model.free_mask(params)
    vector = model.flatten(params)

    def penalty(v):
        value = model.penalty(model.unflatten(v, params), free)
        return jnp.zeros((), v.dtype) if value is None else value

    # The penalty is a ridge: its Hessian is diagonal, the same at every point.
    return np.asarray(jnp.diag(jax.hessian(penalty)(vector)), np.float64)


def batch_size_of(x, weights):
    """What one batch adds to the sums' denominator: its rows, or the sum of its observation weights."""
    return x.shape[0] if weights is None else jnp.sum(jnp.asarray(weights, x.dtype))


@eqx.filter_jit
def batch_gradient_sums(model, params, x, y, weights=None):
    """Sums over one batch of the (weighted) per-sample loss and its flat gradient (one pass)."""
    model, params, x, y = weighted_arrays(model, weights, params, x, y)
    count = batch_size_of(x, weights)

    def mean_loss(vector):
        return model.loss(model.unflatten(vector, params), x, y)

    loss, gradient = jax.value_and_grad(mean_loss)(model.flatten(params))
    return count * loss, count * gradient


@eqx.filter_jit
def batch_curvature_sums(model, params, x, y, with_missing: bool = False, weights=None):
    """Sums over one batch of $I_c$ and (optionally) $I_{miss}$, over the flat free parameters."""
    params, x, y = as_arrays(params, x, y)
    count = batch_size_of(x, weights)
    information = complete_information(model, params, x, y, weights=weights)
    missing = missing_information(model, params, x, y, weights=weights) if with_missing else jnp.zeros_like(information)
    return count * information, count * missing


class PassSums(eqx.Module):
    """Full-data mean loss and flat gradient, and mean complete and missing information, from one pass.

    Float64 NumPy. ``information`` and ``missing`` are means over the first ``curvature_rows``
    rows (all of them by default); ``missing`` is zero unless the pass was asked for it."""

    loss: float
    gradient: np.ndarray
    information: np.ndarray
    missing: np.ndarray
    num_rows: int
    curvature_rows: int


def full_pass(
    model, params, batches, validate_batch=None, with_missing: bool = False, curvature_rows: int | None = None
) -> PassSums:
    r"""One pass over ``batches``: exact full-data loss and gradient, information matrices on a prefix.

    Args:
        model, params: any emjax model and its parameters.
        batches: an iterable of ``(x, y)`` pairs or ``(x, y, weights)`` triples (observation weights:
            the sums are then weighted and divided by the total weight, as :func:`emjax.fit` weighs).
        validate_batch: ``check(x, y, weights)`` run on each batch (default: the public functions' checks).
        with_missing: also sum $I_{miss}$ (:func:`emjax.missing_information`), for Newton on L.
        curvature_rows: sum the information matrices over the batches that start within the
            first ``curvature_rows`` rows only (None: every row). Their autodiff Hessians cost
            about P gradient passes each; the loss and gradient always cover every row.

    Returns:
        :class:`PassSums`. Over every row they equal, up to round-off, the in-memory
        :func:`emjax.neg_log_likelihood`, :func:`emjax.neg_log_likelihood_grad` and
        :func:`emjax.complete_information` (and :func:`emjax.missing_information`) on the
        concatenated data.
    """
    if validate_batch is None:

        def validate_batch(x, y, weights=None):
            validate(model, params, x, y, weights)

    loss, gradient, information, missing, rows, curved = 0.0, 0.0, 0.0, 0.0, 0, 0
    total, curved_total = 0.0, 0.0  # rows, or the observation weights, summed
    for batch in batches:
        x, y, weights = split_batch(batch)
        validate_batch(x, y, weights)
        batch_loss, batch_gradient = batch_gradient_sums(model, params, x, y, weights)
        loss += float(batch_loss)
        gradient = gradient + np.asarray(batch_gradient, np.float64)
        size = float(np.shape(x)[0] if weights is None else np.sum(np.asarray(weights, np.float64)))
        if curvature_rows is None or curved < curvature_rows:
            batch_information, batch_missing = batch_curvature_sums(model, params, x, y, bool(with_missing), weights)
            information = information + np.asarray(batch_information, np.float64)
            missing = missing + np.asarray(batch_missing, np.float64)
            curved += int(np.shape(x)[0])
            curved_total += size
        rows += int(np.shape(x)[0])
        total += size
    if rows == 0:
        raise ValueError("the batch source yielded no batches")
    return PassSums(
        loss=loss / total,
        gradient=gradient / total,
        information=information / curved_total,
        missing=missing / curved_total,
        num_rows=rows,
        curvature_rows=curved,
    )


def newton_direction(sums: PassSums, vector: np.ndarray, ridge: np.ndarray, free: np.ndarray) -> np.ndarray:
    r"""$(I_c - I_{miss} + \lambda)^{-1}(\nabla L + \lambda\theta)$ on the free entries (zero elsewhere), where
    that Hessian of $L$ is positive definite; the EM-gradient step's $(I_c + \lambda)^{-1}$ otherwise.

    With ``sums.missing`` zero this is always the EM-gradient step. Away from a local minimum (where
    $\nabla^2 L$ is indefinite) Newton on L could head for a saddle; the EM-gradient step, a descent
    step on EM's path, is used there instead. Eigenvalues are floored at round-off level, so the
    solve stays defined where $I_c$ is singular.
    """
    index = np.flatnonzero(free)
    gradient = np.where(free, sums.gradient + ridge * vector, 0.0)[index]

    def eigen(matrix):
        block = matrix[np.ix_(index, index)]
        return np.linalg.eigh((block + block.T) / 2)

    complete = sums.information + np.diag(ridge)
    values, vectors = eigen(complete - sums.missing)
    if np.any(sums.missing) and values.size and values[0] <= 0:
        values, vectors = eigen(complete)
    floor = np.finfo(np.float64).eps * 1e3 * max(float(np.max(np.abs(values), initial=0.0)), 1.0)
    direction = np.zeros_like(vector)
    direction[index] = vectors @ ((vectors.T @ gradient) / np.maximum(np.abs(values), floor))
    return direction
