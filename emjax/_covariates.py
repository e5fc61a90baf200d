r"""Separate gate and expert covariates, and offsets: flexmix's concomitant models as frozen entries.

A K-expert model reads one design matrix x for the gate and the experts alike. A gate on covariates
$u_n$ (width $d_g$) and experts on covariates $v_n$ (width $d_e$), with an optional offset $o_n$,

.. math::

    \pi_k(u_n) = \mathrm{softmax}_k(u_n \cdot W_k), \qquad
    \eta_{nk} = v_n \cdot \beta_k + o_n \quad(\text{Poisson: } \log\mu_{nk};\ \text{Gaussian: the mean}),

is the same model on the joint design $x_n = [u_n \mid v_n \mid o_n]$ with some coefficients *frozen*:
the gate's coefficients on expert-only and offset columns at 0, the experts' coefficients on gate-only
columns at 0 and on the offset column at 1. A column that both blocks use (an intercept) appears
once in x, and the gate and the experts each keep their own free coefficients on it.

Freezing entries at fixed values restricts the natural parameters to an affine subspace; the
complete-data law of the restricted model is still an exponential family in the free entries (the
offset only moves the base measure). So every result that emjax states for its models holds for the
restricted one unchanged: EM is mirror descent with unit step on the free coordinates, it never
increases the loss, and the missing-information matrix, its spectral radius (the rate of EM) and
the standard errors are those of the free block of the information matrices. In code the
restriction is nothing but the ``trainable`` mask that every solver, :func:`emjax.fit_restarts`,
:func:`emjax.standard_errors`, :func:`emjax.bic` and :func:`emjax.summary` already honour.

Example:
    >>> import jax, numpy as np, emjax
    >>> rng = np.random.default_rng(0)
    >>> n = 200
    >>> ones, u, v = np.ones(n), rng.normal(size=n), rng.normal(size=n)
    >>> exposure = rng.uniform(1, 3, size=n)
    >>> y = rng.poisson(exposure * np.exp(0.5 + 0.3 * v))
    >>> cov = emjax.covariates(gate=np.c_[ones, u], expert=np.c_[ones, v], offset=np.log(exposure))
    >>> cov.x.shape  # columns: 1, u, v, log exposure (the intercept is shared)
    (200, 4)
    >>> model = emjax.MoPoE(2)
    >>> result = emjax.fit_restarts(model, emjax.em(trainable=cov.trainable(model)), jax.random.key(0),
    ...                             cov.x, y, num_restarts=2, num_steps=20, params=cov.fixed(model))
    >>> cov.gate_coefficients(result.params).shape, cov.expert_coefficients(result.params).shape
    ((2, 2), (2, 2))
    >>> emjax.num_parameters(model, result.params, cov.trainable(model))  # 2 (K - 1) + 2 K
    6
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._checks import check_covariates_model
from ._dtypes import as_data, check_precision, working_dtype
from ._validation import check_array, check_finite, check_real, is_concrete, shape_of
from .models import MoEParams


class Covariates(eqx.Module):
    r"""The joint design of a mixture whose gate and experts read different covariates (module docstring).

    Build it with :func:`emjax.covariates`. Fit the model on :attr:`x` with the mask
    :meth:`trainable` and the frozen values :meth:`fixed`; read the two blocks back with
    :meth:`gate_coefficients` and :meth:`expert_coefficients`.

    Attributes:
        x: the joint design, shape (n, d): the gate's columns, then the expert columns that are not
            already a gate column, then the offset (when given).
        gate_columns: for each of the $d_g$ gate covariates, its column of x (static).
        expert_columns: for each of the $d_e$ expert covariates, its column of x (static).
        has_offset: True when the last column of x is the offset (static).
        feature_names: a name for each column of x (for :func:`emjax.summary`).
    """

    x: Array
    gate_columns: tuple[int, ...] = eqx.field(static=True)
    expert_columns: tuple[int, ...] = eqx.field(static=True)
    has_offset: bool = eqx.field(static=True)
    feature_names: tuple[str, ...] = eqx.field(static=True)

    @property
    def dim(self) -> int:
        """d, the width of :attr:`x`."""
        return self.x.shape[1]

    @property
    def gate(self) -> Array:
        """The gate covariates, shape (n, d_g)."""
        return self.x[:, np.asarray(self.gate_columns)]

    @property
    def expert(self) -> Array:
        """The expert covariates, shape (n, d_e)."""
        return self.x[:, np.asarray(self.expert_columns)]

    @property
    def offset(self) -> Array | None:
        """The offset, shape (n,), or None."""
        return self.x[:, -1] if self.has_offset else None

    def new_rows(self, gate, expert, offset=None) -> Covariates:
        """The same layout (columns, names, frozen entries) on new rows, e.g. to predict with a fitted model.

        ``gate`` and ``expert`` have this design's widths; a column the gate and the experts share here must
        be equal in the new rows too (an intercept always is); ``offset`` is required exactly when this
        design has one.

        Raises:
            ValueError: for other widths, a shared column that differs, or an offset given or missing.
        """
        gate, expert, offset, _, _ = _checked_rows(gate, expert, offset)
        d_g, d_e = len(self.gate_columns), len(self.expert_columns)
        if shape_of(gate, "gate")[1] != d_g or shape_of(expert, "expert")[1] != d_e:
            raise ValueError(
                f"new rows must have this design's widths, gate {d_g} and expert {d_e} columns; got "
                f"{shape_of(gate, 'gate')[1]} and {shape_of(expert, 'expert')[1]}"
            )
        if (offset is not None) != self.has_offset:
            raise ValueError(
                "pass offset= exactly when the design has an offset" + (" (it has)" if self.has_offset else "")
            )
        for j, column in enumerate(self.expert_columns):
            if column < d_g and is_concrete(gate) and is_concrete(expert):
                if not np.array_equal(np.asarray(gate)[:, column], np.asarray(expert)[:, j]):
                    raise ValueError(
                        f"expert column {j} ({self.feature_names[column]}) is the gate's column {column} in this "
                        "design, but the new rows' values differ"
                    )
        x = _joint_design(gate, expert, offset, self.expert_columns)
        return Covariates(x, self.gate_columns, self.expert_columns, self.has_offset, self.feature_names)

    def _check_model(self, model) -> None:
        check_covariates_model(model, self.has_offset)

    def trainable(self, model) -> MoEParams:
        r"""The mask (True = estimated) for ``model`` on :attr:`x`: the gate on its columns, the experts on theirs.

        Hand it to the solver (``emjax.em(trainable=...)``) and to :func:`emjax.standard_errors`,
        :func:`emjax.num_parameters`, :func:`emjax.bic` and :func:`emjax.summary`. The model's own
        pinned entries (gate row 0, a classifier's class column 0) stay pinned; σ is estimated.

        Raises:
            ValueError: for a model that is not a K-expert mixture, or an offset with experts
                that have no linear predictor (softmax classifiers).
        """
        self._check_model(model)
        k, d = model.num_experts, self.dim
        gate = np.zeros((k, d), bool)
        gate[:, list(self.gate_columns)] = True
        experts = np.zeros((k,) + model.expert.coef_shape(d), bool)
        experts[:, list(self.expert_columns)] = True
        sigma = np.ones(k, bool) if model.expert.has_scale else None
        return MoEParams(gate=gate, experts=experts, sigma=sigma)

    def fixed(self, model, dtype=None) -> MoEParams:
        """Parameters of the full width d that hold the frozen values (0, and 1 for the experts' offset
        coefficient) and zeros (σ = 1) elsewhere: the ``params`` of :func:`emjax.fit_restarts`, which sets
        the frozen entries of every start from it."""
        self._check_model(model)
        return self.restrict(model, model.placeholder(self.dim, self.x.dtype if dtype is None else dtype))

    def restrict(self, model, params: MoEParams) -> MoEParams:
        """``params`` (full width d) with the frozen entries set to their values: the gate's entries off
        its columns and the experts' off theirs to 0, the experts' offset coefficient to 1.

        Use it on a start of one's own (e.g. from :func:`emjax.init_params`, which knows nothing of
        the restriction) before :func:`emjax.fit`; the estimated entries are returned unchanged.

        Raises:
            ValueError: for parameters whose shapes do not fit ``model`` on :attr:`x`.
        """
        self._check_model(model)
        model.check_params(params, self.dim)
        mask = self.trainable(model)
        dtype = working_dtype(params)
        value = np.zeros(mask.experts.shape)
        if self.has_offset:
            value[:, -1] = 1.0
        gate = jnp.where(mask.gate, params.gate, jnp.zeros((), dtype))
        experts = jnp.where(mask.experts, params.experts, jnp.asarray(value, dtype))
        return MoEParams(gate=gate, experts=experts, sigma=params.sigma)

    def estimated_index(self, model, params: MoEParams) -> np.ndarray:
        """Positions, in the flattened order of ``model.flatten(params)`` (the rows and columns of every
        information matrix), of the estimated entries: the block to slice from :func:`emjax.complete_information`,
        :func:`emjax.missing_information` and :func:`emjax.observed_information`."""
        return np.nonzero(np.asarray(model.flat_free_mask(params, self.trainable(model))))[0]

    def gate_coefficients(self, params: MoEParams) -> Array:
        """The gate's coefficients on the gate covariates, shape (K, d_g) (row 0 pinned)."""
        return params.gate[:, np.asarray(self.gate_columns)]

    def expert_coefficients(self, params: MoEParams) -> Array:
        """The experts' coefficients on the expert covariates, shape (K, d_e), or (K, d_e, C) for classifiers."""
        return params.experts[:, np.asarray(self.expert_columns)]


def _matrix(value, name: str):
    names = _frame_names(value)
    value = as_data(value, name)
    check_array(value, name)
    shape = shape_of(value, name)
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(
            f"{name} must have shape (n, d_{name[0]}) with at least one row and one column (a single covariate "
            f"as a column: {name}[:, None]; an intercept as a column of ones); got shape {shape}"
        )
    check_real(value, name)
    check_precision(value, name)
    check_finite(value, name)
    return value, names


def _frame_names(value):
    columns = getattr(value, "columns", None)  # a pandas (or polars) frame names its columns
    return None if columns is None else tuple(str(column) for column in columns)


def covariates(gate, expert, offset=None) -> Covariates:
    r"""Gate covariates $u$ (n, d_g), expert covariates $v$ (n, d_e) and an optional offset $o$ (n,),
    as one design with its frozen entries (:class:`Covariates`; see :mod:`emjax._covariates`).

    The gate is $\pi_k = \mathrm{softmax}_k(u_n\cdot W_k)$ and expert k's linear predictor is
    $v_n\cdot\beta_k + o_n$ (for Poisson experts, $\log E[y\mid z=k] = v_n\cdot\beta_k + \log t_n$ with
    $o = \log t$ the log exposure). No intercept is added: include a column of ones in ``gate``
    and/or ``expert`` (a column given to both, bit for bit, is one column of :attr:`Covariates.x`).

    Args:
        gate: the gate covariates, shape (n, d_g): a NumPy or jax array, a list of rows or a
            pandas DataFrame (whose column names name the features).
        expert: the expert covariates, shape (n, d_e), likewise.
        offset: None, or the offset, shape (n,) (e.g. ``np.log(exposure)``); only for experts with a
            linear predictor (Gaussian, Poisson), which :meth:`Covariates.trainable` checks.

    Returns:
        A :class:`Covariates`. Its :attr:`~Covariates.x` has the working dtype of the three inputs
        (:mod:`emjax._dtypes`).

    Raises:
        ValueError: for inputs that are not real, finite arrays of those shapes, or row counts that differ.

    Example:
        >>> import numpy as np, emjax
        >>> ones = np.ones(4)
        >>> cov = emjax.covariates(gate=np.c_[ones, [1.0, 2, 3, 4]], expert=np.c_[ones, [0.5, 0, 1, 2]])
        >>> cov.x.shape, cov.gate_columns, cov.expert_columns
        ((4, 3), (0, 1), (0, 2))
        >>> model = emjax.MoPoE(2)
        >>> cov.trainable(model).gate.astype(int).tolist()
        [[1, 1, 0], [1, 1, 0]]
    """
    gate, expert, offset, gate_names, expert_names = _checked_rows(gate, expert, offset)
    dtype = working_dtype(gate, expert, offset)
    gate, expert = jnp.asarray(gate, dtype), jnp.asarray(expert, dtype)
    d_g = gate.shape[1]
    gate_names = gate_names or tuple(f"gate{j}" for j in range(d_g))
    expert_names = expert_names or tuple(f"expert{j}" for j in range(expert.shape[1]))

    # An expert column equal to a gate column (bit for bit; typically the intercept) shares it: two
    # equal columns would make x's Gram matrix singular, which emjax reads as a degenerate fit.
    shared = _shared_columns(gate, expert)
    expert_columns, extra = [], []
    for j in range(expert.shape[1]):
        if shared[j] is not None:
            expert_columns.append(shared[j])
        else:
            expert_columns.append(d_g + len(extra))
            extra.append(j)
    names = list(gate_names) + [expert_names[j] for j in extra] + (["offset"] if offset is not None else [])
    return Covariates(
        x=_joint_design(gate, expert, offset, tuple(expert_columns)),
        gate_columns=tuple(range(d_g)),
        expert_columns=tuple(expert_columns),
        has_offset=offset is not None,
        feature_names=tuple(names),
    )


def _joint_design(gate, expert, offset, expert_columns: tuple[int, ...]) -> Array:
    """x = [gate | the expert columns that are not gate columns | offset], in the working dtype."""
    dtype = working_dtype(gate, expert, offset)
    d_g = gate.shape[1]
    extra = [j for j, column in enumerate(expert_columns) if column >= d_g]
    blocks = [jnp.asarray(gate, dtype), jnp.asarray(expert, dtype)[:, np.asarray(extra, int)]]
    if offset is not None:
        blocks.append(jnp.asarray(offset, dtype)[:, None])
    return jnp.concatenate(blocks, axis=1)


def _checked_rows(gate, expert, offset):
    """The three inputs validated (real, finite, one row per sample) and the DataFrames' column names."""
    gate, gate_names = _matrix(gate, "gate")
    expert, expert_names = _matrix(expert, "expert")
    n = shape_of(gate, "gate")[0]
    if shape_of(expert, "expert")[0] != n:
        raise ValueError(
            f"gate and expert must have one row per sample: gate has {n} rows, expert has "
            f"{shape_of(expert, 'expert')[0]}"
        )
    if offset is not None:
        offset = as_data(offset, "offset")
        check_array(offset, "offset")
        if shape_of(offset, "offset") != (n,):
            raise ValueError(
                f"offset must have shape (n,) = ({n},), one value per row; got {shape_of(offset, 'offset')}"
            )
        check_real(offset, "offset")
        check_precision(offset, "offset")
        check_finite(offset, "offset")
    return gate, expert, offset, gate_names, expert_names


def _shared_columns(gate, expert) -> list[int | None]:
    """For each expert column, the first gate column equal to it, else None (traced data: no sharing)."""
    if not (is_concrete(gate) and is_concrete(expert)):
        return [None] * expert.shape[1]
    gate, expert = np.asarray(gate), np.asarray(expert)
    shared = []
    for j in range(expert.shape[1]):
        equal = np.nonzero(np.all(gate == expert[:, j : j + 1], axis=0))[0]
        shared.append(int(equal[0]) if equal.size else None)
    return shared
