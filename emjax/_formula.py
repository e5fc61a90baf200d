r"""Model formulas, as in R's flexmix: ``"y ~ x + I(x**2)"`` for the experts and ``"~ z"`` for the gate.

A thin layer over `formulaic <https://matthewwardrop.github.io/formulaic/>`_ (``pip install formulaic``, or
``pip install "emjax[formula]"``), the maintained Python implementation of Wilkinson formulas: it turns a
DataFrame and two formulas into the response and the :class:`~emjax.Covariates` of the model, so that
``flexmix(y ~ x, concomitant = FLXPmultinom(~ z))`` reads

.. code-block:: python

    design = emjax.from_formula(data, expert="y ~ x", gate="~ z")
    model = emjax.MoPoE(3)
    result = emjax.fit_restarts(model, emjax.em(trainable=design.covariates.trainable(model)), key,
                                design.covariates.x, design.y, 10, params=design.covariates.fixed(model))

As in R, each formula has an intercept unless it says ``- 1`` (or ``+ 0``); factors (strings,
categoricals, ``C(x)``) are dummy-coded; ``I(...)`` evaluates Python. Rows with missing values are an
error rather than silently dropped, so that the gate's and the experts' rows stay the same samples.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._covariates import Covariates, covariates

INSTALL_HINT = 'emjax.from_formula needs formulaic: pip install formulaic (or pip install "emjax[formula]")'


def _formulaic():
    try:
        import formulaic
    except ImportError as error:  # an optional dependency
        raise ImportError(INSTALL_HINT) from error
    return formulaic


@dataclasses.dataclass(frozen=True)
class FormulaDesign:
    """The response and covariates of a mixture given by formulas (:func:`from_formula`).

    Attributes:
        y: the response, shape (n,) (the left-hand side of the expert formula).
        covariates: the gate and expert covariates and the offset, as :class:`emjax.Covariates`; its
            ``feature_names`` are formulaic's column names (``Intercept``, ``x``, ``I(x ** 2)``, ...).
        expert_formula, gate_formula: the formulas as given.
    """

    y: np.ndarray
    covariates: Covariates
    expert_formula: str
    gate_formula: str
    _expert_spec: object = dataclasses.field(repr=False)
    _gate_spec: object = dataclasses.field(repr=False)
    _offset_column: str | None = dataclasses.field(repr=False)

    def transform(self, data, offset=None) -> Covariates:
        """The covariates of new rows ``data`` (for predictions), coded exactly as the fitted ones.

        Args:
            data: a DataFrame with the covariates' columns (the response is not needed).
            offset: the new rows' offset, when the design's offset was given as an array (a column
                name is read from ``data``).
        """
        if offset is None and self._offset_column is not None:
            offset = np.asarray(data[self._offset_column], float)
        if offset is None and self.covariates.has_offset:
            raise ValueError("this design has an offset given as an array: pass the new rows' offset=")
        gate = self._gate_spec.get_model_matrix(data, na_action="raise")
        expert = self._expert_spec.get_model_matrix(data, na_action="raise")
        return self.covariates.new_rows(gate, expert, offset)


def from_formula(data, expert: str, gate: str = "~ 1", offset=None) -> FormulaDesign:
    r"""The response and covariates of a mixture of experts from R-style formulas (module docstring).

    Args:
        data: a pandas DataFrame (or anything formulaic reads: a dict of columns).
        expert: the experts' two-sided formula, e.g. ``"y ~ x + I(x**2)"``.
        gate: the gate's one-sided formula, e.g. ``"~ z"``; default ``"~ 1"``, a constant gate (the
            mixing proportions of flexmix's default).
        offset: None, the name of a column of ``data``, or an array of shape (n,) (e.g. a log exposure
            for Poisson experts): added to each expert's linear predictor with coefficient 1.

    Returns:
        A :class:`FormulaDesign` (``.y``, ``.covariates``, ``.transform(new_data)``).

    Raises:
        ImportError: without formulaic, with the command that installs it.
        ValueError: for a one-sided expert formula, a two-sided gate formula, or missing values.

    Example:
        >>> import numpy as np, pandas as pd, emjax
        >>> data = pd.DataFrame({"y": [1.0, 2, 3, 5], "x": [0.0, 1, 2, 3], "z": [1.0, 0, 1, 0]})
        >>> design = emjax.from_formula(data, "y ~ x + I(x**2)", gate="~ z")
        >>> design.covariates.feature_names
        ('Intercept', 'z', 'x', 'I(x ** 2)')
        >>> design.y.tolist()
        [1.0, 2.0, 3.0, 5.0]
    """
    formulaic = _formulaic()
    for name, formula in (("expert", expert), ("gate", gate)):
        if not isinstance(formula, str):
            raise ValueError(f"{name} must be a formula string such as 'y ~ x'; got {type(formula).__name__}")
    if "~" not in expert or not expert.split("~", 1)[0].strip():
        raise ValueError(f"expert must be a two-sided formula 'response ~ covariates'; got {expert!r}")
    if gate.split("~", 1)[0].strip():
        raise ValueError(
            f"gate must be a one-sided formula '~ covariates' (the response is the experts'); got {gate!r}"
        )
    matrices = formulaic.model_matrix(expert, data, na_action="raise")
    gate_matrix = formulaic.model_matrix(gate, data, na_action="raise")
    response = np.asarray(matrices.lhs, float)
    if response.ndim != 2 or response.shape[1] != 1:
        raise ValueError(f"the expert formula's left-hand side must be one numeric column; got {response.shape[1]}")
    offset_column = offset if isinstance(offset, str) else None
    if offset_column is not None:
        offset = np.asarray(data[offset_column], float)
    return FormulaDesign(
        y=response[:, 0],
        covariates=covariates(gate=gate_matrix, expert=matrices.rhs, offset=offset),
        expert_formula=expert,
        gate_formula=gate,
        _expert_spec=matrices.rhs.model_spec,
        _gate_spec=gate_matrix.model_spec,
        _offset_column=offset_column,
    )
