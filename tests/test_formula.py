"""R-style formulas (issue 18, item 7): emjax.from_formula builds exactly the covariates one would by hand."""

import sys
from pathlib import Path

import numpy as np
import pytest

import emjax

pd = pytest.importorskip("pandas")
pytest.importorskip("formulaic")

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_patent_formulas_are_flexmix_example_design():
    data = pd.read_csv(FIXTURES / "patent.csv")
    design = emjax.from_formula(data, "Patents ~ lgRD", gate="~ RDS")
    ones = np.ones((len(data), 1))
    by_hand = emjax.covariates(gate=np.c_[ones, data["RDS"]], expert=np.c_[ones, data["lgRD"]])
    np.testing.assert_array_equal(design.covariates.x, by_hand.x)
    assert design.covariates.gate_columns == by_hand.gate_columns == (0, 1)
    assert design.covariates.expert_columns == by_hand.expert_columns == (0, 2)
    assert design.covariates.feature_names == ("Intercept", "RDS", "lgRD")
    np.testing.assert_array_equal(design.y, data["Patents"].to_numpy(float))


def test_transforms_factors_and_a_constant_gate():
    data = pd.DataFrame(
        {
            "y": [1.0, 2.0, 0.5, 4.0, 3.0, 2.5],
            "x": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            "site": ["a", "b", "c", "a", "b", "c"],
        }
    )
    design = emjax.from_formula(data, "y ~ x + I(x**2) + site")
    x = data["x"].to_numpy()
    expected = np.c_[np.ones(6), x, x**2, data["site"] == "b", data["site"] == "c"].astype(float)
    np.testing.assert_array_equal(design.covariates.x, expected)  # "~ 1": the gate is the shared intercept
    assert design.covariates.gate_columns == (0,)
    assert design.covariates.feature_names == ("Intercept", "x", "I(x ** 2)", "site[T.b]", "site[T.c]")
    # new rows are coded with the fitted levels, even when a level is missing from them
    new = design.transform(pd.DataFrame({"x": [10.0], "site": ["c"]}))
    np.testing.assert_array_equal(new.x, [[1.0, 10.0, 100.0, 0.0, 1.0]])


def test_offsets_by_column_name_or_array():
    data = pd.DataFrame({"y": [1.0, 3.0, 2.0, 6.0], "x": [0.0, 1.0, 0.5, 2.0], "exposure": [1.0, 2.0, 1.5, 3.0]})
    data["log_t"] = np.log(data["exposure"])
    named = emjax.from_formula(data, "y ~ x", offset="log_t")
    given = emjax.from_formula(data, "y ~ x", offset=np.log(data["exposure"].to_numpy()))
    np.testing.assert_array_equal(named.covariates.x, given.covariates.x)
    np.testing.assert_array_equal(named.covariates.x[:, -1], data["log_t"])
    assert named.covariates.has_offset and named.covariates.feature_names[-1] == "offset"
    new = data.iloc[:2]
    np.testing.assert_array_equal(named.transform(new).x, named.covariates.x[:2])
    np.testing.assert_array_equal(given.transform(new, offset=new["log_t"].to_numpy()).x, given.covariates.x[:2])
    with pytest.raises(ValueError, match="pass the new rows' offset"):
        given.transform(new)


def test_bad_formulas_and_missing_values_raise():
    data = pd.DataFrame({"y": [1.0, 2.0, np.nan], "x": [0.0, 1.0, 2.0]})
    with pytest.raises(ValueError, match="two-sided"):
        emjax.from_formula(data, "~ x")
    with pytest.raises(ValueError, match="one-sided"):
        emjax.from_formula(data, "y ~ x", gate="y ~ x")
    with pytest.raises(Exception, match="(?i)missing|nan|null"):
        emjax.from_formula(data, "y ~ x")


def test_without_formulaic_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "formulaic", None)  # import formulaic now raises ImportError
    with pytest.raises(ImportError, match="pip install formulaic"):
        emjax.from_formula(pd.DataFrame({"y": [1.0], "x": [0.0]}), "y ~ x")
