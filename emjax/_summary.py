r"""A printed account of a fit, as statsmodels' and flexmix's ``summary``: fit statistics and coefficient tables.

For a fitted $\hat\theta$ (a local minimum of the mean negative log-likelihood $L$ over $n$ samples),
:func:`summary` gathers

* the log-likelihood $\ell(\hat\theta) = -n\,L(\hat\theta)$ (a total, not a mean),
* the number $k$ of estimated parameters and the criteria $\mathrm{AIC} = -2\ell + 2k$ and
  $\mathrm{BIC} = -2\ell + k\log n$ (:func:`emjax.aic`, :func:`emjax.bic`),
* per estimated entry $\hat\theta_j$ its standard error $\mathrm{se}_j =
  \sqrt{[(n\nabla^2 L(\hat\theta))^{-1}]_{jj}}$ (:func:`emjax.standard_errors`), the Wald statistic
  $z_j = \hat\theta_j / \mathrm{se}_j$ and its two-sided normal p-value
  $P(|Z| > |z_j|) = \mathrm{erfc}(|z_j|/\sqrt2)$ for the hypothesis $\theta_j = 0$,

and, given a :class:`emjax.FitResult`, how the run ended (status by name, steps, convergence, final
loss). Entries that are not estimated, pinned by the model's convention (gate row 0, class column 0
of a softmax expert) or frozen by ``trainable``, are listed with their value and no standard error.

The Wald tests are asymptotic and local: they assume $\hat\theta$ is an interior local minimum with a
positive definite observed information. The labels of the experts are arbitrary (any permutation
fits equally well), and with K experts where fewer would do, the information is near singular:
compare K by BIC first (``MoLinE(1)`` is the one-expert baseline).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import numpy as np

from ._checks import check_model, check_trainable, validate
from ._dtypes import as_data
from ._fit import FitResult
from ._inference import aic, bic, num_parameters, standard_errors
from ._likelihood import neg_log_likelihood
from ._status import Status
from ._validation import check_features, is_concrete
from .models import HMEParams, MoEParams, SymParams

WIDTH = 78
COLUMNS = ("estimate", "std. error", "z", "P>|z|")


class Coefficient(NamedTuple):
    r"""One row of a coefficient table of :class:`FitSummary`.

    Attributes:
        block: the table it belongs to: ``"gate"``, ``"expert[k]"``, ``"sigma"``; ``"w"`` and
            ``"beta"`` for the symmetric models.
        name: the entry, e.g. ``"gate[1].x0"``, ``"expert[2].x1"``, ``"expert[0].class1.x0"``,
            ``"sigma[0]"``, ``"beta.x1"`` (feature names replace ``x0, x1, ...`` when given).
        estimate: the parameter value $\hat\theta_j$.
        std_error: its standard error (NaN when not estimated, or when the observed information is
            not positive definite there).
        z: $\hat\theta_j / \mathrm{se}_j$ (NaN when not estimated).
        p_value: $\mathrm{erfc}(|z|/\sqrt2)$, the two-sided normal p-value (NaN when not estimated).
        fixed: ``""`` for an estimated entry, ``"pinned"`` (fixed by the model's convention) or
            ``"frozen"`` (held fixed by ``trainable``).
    """

    block: str
    name: str
    estimate: float
    std_error: float
    z: float
    p_value: float
    fixed: str


@dataclasses.dataclass(frozen=True)
class FitSummary:
    r"""What :func:`emjax.summary` returns: the statistics of a fit and its coefficient tables.

    Immutable, computed once, on the host (not a pytree; never jitted). ``str()`` and ``repr()``
    print the tables; the data are in the attributes, :meth:`to_dict` and :meth:`to_dataframe`.

    Attributes:
        model: the model in words, e.g. ``"MoLinE(K=2)"``.
        num_observations: n (the sum of the observation weights, when weighted).
        num_parameters: k, the number of estimated parameters.
        log_likelihood: $-nL(\hat\theta)$, the total log-likelihood.
        aic, bic: $-2\ell + 2k$ and $-2\ell + k\log n$.
        coefficients: one :class:`Coefficient` per parameter entry, pinned and frozen ones included,
            in the order of the printed tables.
        status: the run's :class:`emjax.Status` code, or None when only parameters were given.
        num_steps: the steps the run applied (None without a result).
        converged: whether the run met its tolerance (None without a result).
        final_loss: the loss at the last iterate, $L(\hat\theta)$ (None without a result).
        best_restart, num_restarts: for a result of :func:`emjax.fit_restarts`, the index of the
            returned restart and the number of restarts (None otherwise).
        ridge: the model's ridge λ (0 for none).
    """

    model: str
    num_observations: int | float
    num_parameters: int
    log_likelihood: float
    aic: float
    bic: float
    coefficients: tuple[Coefficient, ...]
    status: int | None = None
    num_steps: int | None = None
    converged: bool | None = None
    final_loss: float | None = None
    best_restart: int | None = None
    num_restarts: int | None = None
    ridge: float = 0.0

    @property
    def status_name(self) -> str | None:
        """The status by name, e.g. ``"Status.ok"`` (None without a result)."""
        return None if self.status is None else Status.name_of(self.status)

    @property
    def blocks(self) -> tuple[str, ...]:
        """The names of the coefficient tables, in order."""
        return tuple(dict.fromkeys(row.block for row in self.coefficients))

    def to_dict(self) -> dict[str, np.ndarray]:
        """The coefficient rows as columns: a dict of NumPy arrays keyed by the :class:`Coefficient` fields."""
        return {
            field: np.asarray([getattr(row, field) for row in self.coefficients], dtype=_COLUMN_DTYPES[field])
            for field in Coefficient._fields
        }

    def to_dataframe(self):
        """The coefficient rows as a pandas DataFrame indexed by ``name`` (needs pandas, an optional dependency).

        Raises:
            ImportError: if pandas is not installed (:meth:`to_dict` needs nothing).
        """
        try:
            import pandas as pd
        except ImportError as error:
            raise ImportError(
                "FitSummary.to_dataframe needs pandas (pip install pandas); FitSummary.to_dict() and "
                "FitSummary.coefficients give the same table without it"
            ) from error
        return pd.DataFrame(self.to_dict()).set_index("name")

    def __str__(self) -> str:
        return _render(self)

    def __repr__(self) -> str:
        return _render(self)


_COLUMN_DTYPES = {
    "block": object,
    "name": object,
    "estimate": float,
    "std_error": float,
    "z": float,
    "p_value": float,
    "fixed": object,
}


def summary(model, result_or_params, x, y, trainable=None, *, feature_names=None, weights=None) -> FitSummary:
    r"""Summarise a fit: log-likelihood, AIC, BIC, the run's status, and every coefficient with its
    standard error, Wald z and two-sided p-value (as statsmodels' ``summary()`` or flexmix's
    ``summary(refit(...))``).

    With $\ell = -nL(\hat\theta)$, $k$ = :func:`emjax.num_parameters`,
    $\mathrm{se}_j = \sqrt{[(n\nabla^2 L(\hat\theta))^{-1}]_{jj}}$ (:func:`emjax.standard_errors`):
    AIC $= -2\ell + 2k$, BIC $= -2\ell + k\log n$, $z_j = \hat\theta_j/\mathrm{se}_j$ and
    $p_j = \mathrm{erfc}(|z_j|/\sqrt2)$. Computed eagerly on the host (call it outside ``jit``).

    Args:
        model: the fitted model.
        result_or_params: a :class:`emjax.FitResult` of one fit (of :func:`emjax.fit` or
            :func:`emjax.fit_restarts`; index a batched result first), or parameters alone (then
            the run's lines are left out).
        x, y: the data the model was fitted to (arrays, Python lists, or a pandas DataFrame and
            Series: the DataFrame's column names then name the features).
        trainable: the mask the fit was run with, if any: frozen entries are not estimated (they
            are listed as ``frozen``, and not counted in k).
        feature_names: names of the d columns of x (default: a DataFrame's columns, else
            ``x0, x1, ...``).
        weights: the observation weights the fit was run with, if any: the log-likelihood is
            $\sum_n v_n\log p_n$ and n is $\sum_n v_n$ (:func:`emjax.bic`).

    Returns:
        A :class:`FitSummary`; ``print`` it, or read ``.coefficients``, ``.to_dict()``,
        ``.to_dataframe()``.

    Raises:
        ValueError: on invalid arguments, a batched result, traced values, or ``feature_names`` of
            the wrong length.

    Example:
        >>> import jax, emjax
        >>> model = emjax.MoLinE(2)
        >>> truth = emjax.testing.random_params(model, jax.random.key(0), d=2)
        >>> x, y = emjax.sample(model, truth, jax.random.key(1), 500)
        >>> result = emjax.fit(model, emjax.em(), truth, x, y, 50)
        >>> table = emjax.summary(model, result, x, y)
        >>> table.status_name, table.num_parameters, table.blocks
        ('Status.ok', 8, ('gate', 'expert[0]', 'expert[1]', 'sigma'))
        >>> text = str(table)  # print(table) shows the header and the four tables
        >>> "Status.ok" in text, [line.split()[0] for line in text.splitlines() if line.startswith("gate[")]
        (True, ['gate[0].x0', 'gate[0].x1', 'gate[1].x0', 'gate[1].x1'])
    """
    names_from_frame = _frame_columns(x)
    x, y = as_data(x, "x"), as_data(y, "y")
    weights = None if weights is None else as_data(weights, "weights")
    check_model(model)
    result = result_or_params if isinstance(result_or_params, FitResult) else None
    params = result.params if result is not None else result_or_params
    if not all(is_concrete(leaf) for leaf in jax.tree_util.tree_leaves((result_or_params, x, y, trainable, weights))):
        raise ValueError("summary reads values on the host: call it outside jit/vmap (got traced arrays)")
    run = _run_fields(result) if result is not None else {}  # first: a batched result gets its own message
    rows_of_x, d = check_features(x)
    validate(model, params, x, y, weights)
    n = rows_of_x if weights is None else float(np.sum(np.asarray(weights, dtype=float)))
    check_trainable(model, params, trainable)
    features = _feature_names(feature_names if feature_names is not None else names_from_frame, d)

    errors = standard_errors(model, params, x, y, trainable, weights)
    pinned = _broadcast_masks(model.free_mask(params, None), params, negate=True)
    estimated = _broadcast_masks(model.free_mask(params, trainable), params, negate=False)
    rows = []
    for field, value in _blocks(params):
        value = np.asarray(value, dtype=float)
        error = np.asarray(getattr(errors, field), dtype=float)
        for index in _entries(params, field, value.shape):
            block, name = _label(params, field, index, features, getattr(model, "tree", None))
            fixed = "" if estimated[field][index] else ("pinned" if pinned[field][index] else "frozen")
            rows.append(_row(block, name, float(value[index]), float(error[index]), fixed))
    loss = float(neg_log_likelihood(model, params, x, y, weights=weights))
    return FitSummary(
        model=model.describe(),
        num_observations=n,
        num_parameters=num_parameters(model, params, trainable),
        log_likelihood=-n * loss,
        aic=float(aic(model, params, x, y, trainable, weights)),
        bic=float(bic(model, params, x, y, trainable, weights)),
        coefficients=tuple(rows),
        ridge=float(getattr(model, "ridge", 0.0)),
        **run,
    )


# --------------------------------------------------------------------------- building the rows


def _frame_columns(x):
    """A DataFrame's column names (duck-typed: anything with ``columns`` and ``to_numpy``), else None."""
    columns = getattr(x, "columns", None)
    if columns is None or not callable(getattr(x, "to_numpy", None)):
        return None
    return [str(column) for column in columns]


def _feature_names(names, d: int) -> tuple[str, ...]:
    if names is None:
        return tuple(f"x{j}" for j in range(d))
    if isinstance(names, str):
        raise ValueError(f"feature_names must be a sequence of d = {d} names, not one string; got {names!r}")
    names = tuple(str(name) for name in names)
    if len(names) != d:
        raise ValueError(f"feature_names must name the d = {d} columns of x; got {len(names)} names")
    return names


def _run_fields(result: FitResult) -> dict:
    status = np.asarray(result.status)
    if status.ndim:
        raise ValueError(
            f"summary takes one fit; got a batched result (status of shape {status.shape}): pick one lane first, "
            "e.g. jax.tree.map(lambda leaf: leaf[i], result)"
        )
    fields = {
        "status": int(status),
        "num_steps": int(np.asarray(result.num_steps)),
        "converged": bool(np.asarray(result.converged)),
        "final_loss": float(np.asarray(result.final_loss)),
    }
    if result.best_restart is not None and result.restart_losses is not None:
        fields["best_restart"] = int(np.asarray(result.best_restart))
        fields["num_restarts"] = int(np.shape(result.restart_losses)[0])
    return fields


def _blocks(params):
    """(field, value) for every parameter block that is set, in declaration order."""
    for field in dataclasses.fields(params):
        value = getattr(params, field.name)
        if value is not None:
            yield field.name, value


def _broadcast_masks(masks, params, negate: bool) -> dict[str, np.ndarray]:
    out = {}
    for field, value in _blocks(params):
        mask = getattr(masks, field)
        mask = np.ones((), bool) if mask is None else np.asarray(mask, bool)
        mask = np.broadcast_to(mask, np.shape(value))
        out[field] = ~mask if negate else mask
    return out


def _entries(params, field: str, shape: tuple[int, ...]):
    """The indices of a block in table order: softmax experts class by class, then feature by feature."""
    if isinstance(params, MoEParams) and field == "experts" and len(shape) == 3:
        k, d, c = shape
        return [(e, j, cls) for e in range(k) for cls in range(c) for j in range(d)]
    return list(np.ndindex(shape))


def _label(params, field: str, index: tuple[int, ...], features, tree=None) -> tuple[str, str]:
    """(block, name) of one entry of a parameter block (``tree``: a hierarchical model's, naming its gate rows)."""
    if isinstance(params, HMEParams) and field == "gates" and tree is not None:
        row, j = index  # the logit of stepping into the node at this path (emjax.models._hme_tree)
        return "gates", f"gate[{tree.row_paths()[row]}].{features[j]}"
    if isinstance(params, (MoEParams, HMEParams)):
        if field == "gate":
            k, j = index
            return "gate", f"gate[{k}].{features[j]}"
        if field == "experts":
            k, j, *rest = index
            classes = "".join(f".class{c}" for c in rest)  # softmax experts: one coefficient per class
            return f"expert[{k}]", f"expert[{k}]{classes}.{features[j]}"
        if field == "sigma":
            return "sigma", f"sigma[{index[0]}]"
    if isinstance(params, SymParams) and len(index) == 1:
        return field, f"{field}.{features[index[0]]}"
    suffix = "".join(f"[{i}]" for i in index)
    return field, f"{field}{suffix}"


def _row(block: str, name: str, estimate: float, error: float, fixed: str) -> Coefficient:
    if fixed:
        return Coefficient(block, name, estimate, math.nan, math.nan, math.nan, fixed)
    z = estimate / error if error > 0 else math.nan
    p_value = math.erfc(abs(z) / math.sqrt(2)) if math.isfinite(z) else math.nan
    return Coefficient(block, name, estimate, error, z, p_value, fixed)


# --------------------------------------------------------------------------- printing


def _number(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}"


def _p_value(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if value == 0:  # below the smallest double: erfc underflowed
        return "<1e-300"
    return f"{value:.2e}" if value < 1e-4 else f"{value:.4f}"


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _header(table: FitSummary) -> list[str]:
    left = [
        ("Model:", table.model),
        ("No. observations:", f"{table.num_observations:g}"),
        ("No. parameters:", str(table.num_parameters)),
    ]
    right = [
        ("Log-likelihood:", f"{table.log_likelihood:.4f}"),
        ("AIC:", f"{table.aic:.4f}"),
        ("BIC:", f"{table.bic:.4f}"),
    ]
    if table.status is not None:
        left += [("Status:", table.status_name), ("Steps:", str(table.num_steps))]
        right += [("Final loss (mean NLL):", f"{table.final_loss:.6g}"), ("Converged:", _yes_no(table.converged))]
    if table.num_restarts is not None:
        left.append(("Restarts:", f"best of {table.num_restarts} (#{table.best_restart})"))
    if table.ridge:
        right.append(("Ridge:", f"{table.ridge:.6g}"))
    half = WIDTH // 2 - 1
    lines = []
    for i in range(max(len(left), len(right))):
        parts = []
        for column in (left, right):
            label, value = column[i] if i < len(column) else ("", "")
            # a value longer than its half (a big tree's description) pushes the line past WIDTH rather than fail
            parts.append(f"{label:<{max(half - len(value) - 1, len(label))}} {value}" if label else " " * half)
        lines.append("  ".join(parts).rstrip())
    return lines


def _render(table: FitSummary) -> str:
    name_width = max([len(row.name) for row in table.coefficients] + [12]) + 2
    widths = (12, 12, 10, 11)
    rule, thin = "=" * WIDTH, "-" * WIDTH
    lines = ["emjax fit summary".center(WIDTH).rstrip(), rule, *_header(table), rule]
    for block in table.blocks:
        heading = f"{block:<{name_width}}" + "".join(
            f"{column:>{w}}" for column, w in zip(COLUMNS, widths, strict=True)
        )
        lines += [heading, thin]
        for row in table.coefficients:
            if row.block != block:
                continue
            if row.fixed:
                cells = (_number(row.estimate), "-", "-", "-")
            else:
                cells = (_number(row.estimate), _number(row.std_error), _number(row.z), _p_value(row.p_value))
            line = f"{row.name:<{name_width}}" + "".join(f"{cell:>{w}}" for cell, w in zip(cells, widths, strict=True))
            lines.append(f"{line}   ({row.fixed})" if row.fixed else line)
        lines.append(rule)
    lines += _notes(table)
    return "\n".join(lines)


_STATUS_NOTES = {
    Status.max_steps: "the tolerance was not met; the estimates may not be at a minimum yet.",
    Status.nonfinite: "the run went non-finite; these are its last finite parameters.",
    Status.degenerate: "an expert lost its support; its standard errors are not to be trusted.",
}


def _notes(table: FitSummary) -> list[str]:
    fixed = {row.fixed for row in table.coefficients}
    notes = []
    if "pinned" in fixed:
        notes.append("pinned: fixed by the model's convention (gate row 0, class column 0); not estimated.")
    if "frozen" in fixed:
        notes.append("frozen: held fixed by trainable; not estimated, not counted in No. parameters.")
    if any(not row.fixed and math.isnan(row.std_error) for row in table.coefficients):
        notes.append(
            "Some standard errors are NaN: the observed information is not positive definite here "
            "(not a local minimum of the loss?)."
        )
    if table.ridge:
        notes.append("Ridge: the estimates are penalised; standard errors use the unpenalised observed information.")
    if table.status is not None and table.status in _STATUS_NOTES:
        notes.append(f"{table.status_name}: {_STATUS_NOTES[table.status]}")
    notes.append("z and P>|z|: Wald test of each coefficient = 0 against a standard normal (two-sided).")
    return notes
