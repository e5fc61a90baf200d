"""emjax.sklearn: scikit-learn's estimator checks, and the estimators' numbers against emjax's own functions.

Every fit compiles emjax's EM program once per data shape (a few seconds on a CPU), so the tests reuse
shapes where they can and keep n small.
"""

import functools
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import pandas as pd
import pytest
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import emjax
from emjax._padding import bucket_rows, pad_rows
from emjax.datasets import add_intercept
from emjax.sklearn import MixtureOfExpertsClassifier, MixtureOfExpertsRegressor
from emjax.sklearn._regressor import NonNegativePoissonExpert

ROOT = pathlib.Path(__file__).resolve().parents[1]
SKLEARN_1_6 = tuple(int(part) for part in sklearn.__version__.split(".")[:2]) >= (1, 6)

# ----------------------------------------------------------------------------------- estimator checks

# Small fits: one start, five steps, no tolerance (so no ConvergenceWarning for an unmet one). Every fit of a
# new data shape compiles emjax's EM program once (about 3 s of CPU); scikit-learn's checks fit about 15
# shapes per estimator, so the whole suite runs for the two classes, and the Poisson family (the same class,
# another emjax model and target tag) runs the checks whose code paths depend on the family.
CHECKED = [
    MixtureOfExpertsRegressor(n_init=1, max_iter=5, tol=None, random_state=0),
    MixtureOfExpertsClassifier(n_init=1, max_iter=5, tol=None, random_state=0),
]
POISSON = MixtureOfExpertsRegressor(family="poisson", n_init=1, max_iter=5, tol=None, random_state=0)
POISSON_CHECKS = {
    "check_estimator_tags_renamed",
    "check_valid_tag_types",  # target_tags.positive_only
    "check_regressors_train",  # non-integer y >= 0: the quasi-likelihood model (also read-only and float32 X)
    "check_supervised_y_no_nan",
}


def expected_failed_checks(estimator) -> dict[str, str]:
    """Checks the estimators are known to fail, with the reason."""
    return {
        "check_sample_weight_equivalence_on_dense_data": (
            "EM's data-driven starts weigh the rows (k-means++ draws row n with probability proportional to "
            "v_n D_n^2, the law of the repeated rows) but from other random numbers (one per row, not one per "
            "copy), so the start and, on a non-convex likelihood after max_iter=5 steps, the end point can "
            "differ (the regressor passes on scikit-learn's data, the classifier does not). From one start, "
            "integer weights give exactly the repeated rows' iterates (tests/test_weights.py)."
        )
    }


_check_kwargs = {"expected_failed_checks": expected_failed_checks} if SKLEARN_1_6 else {}


# A classifier's experts can separate blobs perfectly (Status.degenerate): the fit says so with a warning.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(CHECKED, **_check_kwargs)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def _check_name(check) -> str:
    while isinstance(check, functools.partial):
        check = check.func
    return check.__name__


def _poisson_checks():
    if not SKLEARN_1_6:  # estimator_checks_generator is new in scikit-learn 1.6
        return []
    from sklearn.utils.estimator_checks import estimator_checks_generator

    cases = [
        case for case in estimator_checks_generator(POISSON, legacy=True) if _check_name(case[1]) in POISSON_CHECKS
    ]
    assert {_check_name(check) for _, check in cases} == POISSON_CHECKS
    return [pytest.param(*case, id=f"{_check_name(case[1])}-{index}") for index, case in enumerate(cases)]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize(("estimator", "check"), _poisson_checks())
def test_scikit_learn_estimator_checks_poisson(estimator, check):
    check(estimator)


# ----------------------------------------------------------------------------------- data


def _mixture_data(n, seed, d=2):
    """A 2-expert MoLinE with well separated experts, as NumPy arrays (float64)."""
    model = emjax.MoLinE(2)
    truth = emjax.testing.random_params(model, jax.random.key(seed), d, gate_norm=2.0, expert_norm=3.0, sigma=0.3)
    x, y = emjax.sample(model, truth, jax.random.key(seed + 1), n)
    return np.asarray(x), np.asarray(y)


def _regression():
    """A fitted regressor and its data. No module fixture (conftest spreads this file's tests over the
    xdist workers one by one): a second fit of the same shapes reuses the compiled program."""
    X, y = _mixture_data(120, 0)
    est = MixtureOfExpertsRegressor(n_experts=2, n_init=3, max_iter=40, tol=1e-8, random_state=7)
    return est.fit(X, y), X, y


# Estimators pad the rows of a prediction to a bucketed count (emjax._padding): each row's value is the same
# function of that row, but XLA may vectorise a longer array differently, a few ulps apart.
ROWS_PADDED = 1e-13


def _direct(model, solver, key, X, y, n_init, max_iter, tol=None, weights=None):
    """What ``fit`` runs: :func:`emjax.fit_restarts` on the design matrix, its rows padded to ``bucket_rows(n)``
    with copies of the last row of weight 0 (the weights are 1 for the real rows without sample weights)."""
    x = add_intercept(X)
    n = x.shape[0]
    x, y, weights = pad_rows(bucket_rows(n) - n, x, np.asarray(y, float), weights)
    return emjax.fit_restarts(model, solver, key, x, y, n_init, max_iter, tol=tol, weights=weights)


# ----------------------------------------------------------------------------------- regressor oracles


def test_fits_of_sizes_in_one_bucket_share_one_program_and_equal_the_unpadded_fit():
    X, y = _mixture_data(120, 0)
    settings = dict(n_experts=2, n_init=2, max_iter=20, tol=None, random_state=7)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, secs, **kw: (
            compiles.append(kw.get("fun_name")) if event.endswith("backend_compile_duration") else None
        )
    )
    MixtureOfExpertsRegressor(**settings).fit(X[:100], y[:100])  # 100 and 105 rows: both padded to 112
    before = len(compiles)
    est = MixtureOfExpertsRegressor(**settings).fit(X[:105], y[:105])
    assert bucket_rows(100) == bucket_rows(105) == 112
    assert "_restarts" not in " ".join(map(str, compiles[before:])), compiles[before:]
    # the padding changes nothing but round-off: the fit of the 105 rows themselves
    x = add_intercept(X[:105])
    unpadded = emjax.fit_restarts(
        emjax.MoLinE(2), emjax.em(), jax.random.key(7), x, y[:105], 2, 20, weights=np.ones(105)
    )
    for got, want in zip(
        jax.tree_util.tree_leaves(est.params_), jax.tree_util.tree_leaves(unpadded.params), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert est.lower_bound_ == pytest.approx(-float(unpadded.final_loss), rel=1e-12)


def test_sample_weight_is_fit_restarts_with_weights():
    X, y = _mixture_data(120, 0)
    weights = np.asarray(jax.random.randint(jax.random.key(3), (120,), 0, 4), float)
    est = MixtureOfExpertsRegressor(n_experts=2, n_init=2, max_iter=20, tol=None, random_state=7)
    est.fit(X, y, sample_weight=weights)
    x = add_intercept(X)
    direct = _direct(emjax.MoLinE(2), emjax.em(), jax.random.key(7), X, y, 2, 20, weights=weights)
    for got, want in zip(jax.tree_util.tree_leaves(est.params_), jax.tree_util.tree_leaves(direct.params), strict=True):
        np.testing.assert_array_equal(got, np.asarray(want))
    weighted = -float(emjax.neg_log_likelihood(est.model_, direct.params, x, y, weights=weights))
    assert est.lower_bound_ == pytest.approx(weighted, rel=1e-12)
    with pytest.raises(ValueError, match="non-zero"):
        MixtureOfExpertsRegressor(n_init=1, max_iter=2).fit(X, y, sample_weight=np.zeros(120))


def test_regressor_fit_is_fit_restarts_with_the_same_key():
    est, X, y = _regression()
    x = add_intercept(X)
    direct = _direct(emjax.MoLinE(2), emjax.em(), jax.random.key(7), X, y, 3, 40, tol=1e-8)
    for got, want in zip(jax.tree_util.tree_leaves(est.params_), jax.tree_util.tree_leaves(direct.params), strict=True):
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
        np.testing.assert_array_equal(got, np.asarray(want))
    assert est.lower_bound_ == pytest.approx(-float(direct.final_loss), rel=1e-15)
    assert est.lower_bound_ == pytest.approx(
        -float(emjax.neg_log_likelihood(est.model_, direct.params, x, y)), rel=1e-12
    )
    assert est.n_iter_ == int(direct.num_steps) and 1 <= est.n_iter_ < 40
    assert est.converged_ is True and bool(direct.converged)
    assert int(est.result_.best_restart) == int(direct.best_restart)
    assert est.model_ == emjax.MoLinE(2) and est.n_features_in_ == 2 and not hasattr(est, "feature_names_in_")


def test_regressor_predictions_are_emjax_predictions():
    est, X, y = _regression()
    X_new = X[:17] + 0.25
    x = add_intercept(X_new)
    model, params = est.model_, est.params_
    np.testing.assert_allclose(est.predict(X_new), emjax.predict_mean(model, params, x), rtol=ROWS_PADDED)
    np.testing.assert_allclose(est.predict_variance(X_new), emjax.predict_variance(model, params, x), rtol=ROWS_PADDED)
    np.testing.assert_allclose(
        est.predict_quantiles(X_new, [0.1, 0.9]),
        emjax.predict_quantiles(model, params, x, [0.1, 0.9]),
        rtol=ROWS_PADDED,
    )
    np.testing.assert_allclose(est.gate_proba(X_new), emjax.gate_probabilities(model, params, x), rtol=ROWS_PADDED)
    y_new = y[:17]
    np.testing.assert_allclose(
        est.responsibilities(X_new, y_new), emjax.responsibilities(model, params, x, y_new), rtol=ROWS_PADDED
    )
    assert est.bic(X_new, y_new) == pytest.approx(float(emjax.bic(model, params, x, y_new)), rel=1e-14)
    assert est.aic(X_new, y_new) == pytest.approx(float(emjax.aic(model, params, x, y_new)), rel=1e-14)
    # score is scikit-learn's R² of the predictive mean
    residual = np.sum((y - est.predict(X)) ** 2)
    assert est.score(X, y) == pytest.approx(1 - residual / np.sum((y - y.mean()) ** 2), rel=1e-12)


def test_one_expert_is_ordinary_least_squares():
    X, y = _mixture_data(120, 0)
    est = MixtureOfExpertsRegressor(n_experts=1, n_init=1, max_iter=3, tol=None, random_state=0).fit(X, y)
    design = np.column_stack([X, np.ones(len(X))])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    np.testing.assert_allclose(est.params_.experts[0], beta, rtol=1e-10)
    np.testing.assert_allclose(est.predict(X), design @ beta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.params_.sigma[0] ** 2, np.mean((y - design @ beta) ** 2), rtol=1e-10)
    np.testing.assert_array_equal(est.gate_proba(X), np.ones((len(X), 1)))
    # without an intercept: least squares through the origin
    est = MixtureOfExpertsRegressor(1, n_init=1, max_iter=3, tol=None, fit_intercept=False, random_state=0).fit(X, y)
    beta0, *_ = np.linalg.lstsq(X, y, rcond=None)
    np.testing.assert_allclose(est.predict(X), X @ beta0, rtol=1e-10, atol=1e-12)


def test_random_state_none_draws_the_seed_from_numpys_global_generator():
    _, X, y = _regression()
    settings = dict(n_experts=2, n_init=3, max_iter=40, tol=1e-8)
    seed = int(np.random.RandomState(123).randint(np.iinfo(np.int32).max))
    np.random.seed(123)
    from_global = MixtureOfExpertsRegressor(**settings).fit(X, y)
    from_instance = MixtureOfExpertsRegressor(**settings, random_state=np.random.RandomState(123)).fit(X, y)
    direct = _direct(emjax.MoLinE(2), emjax.em(), jax.random.key(seed), X, y, 3, 40, tol=1e-8)
    for fitted in (from_global, from_instance):
        np.testing.assert_array_equal(fitted.params_.experts, np.asarray(direct.params.experts))


def test_accelerated_solvers_are_the_emjax_solvers():
    _, X, y = _regression()
    est = MixtureOfExpertsRegressor(2, n_init=2, max_iter=40, tol=1e-8, solver="squarem", random_state=3).fit(X, y)
    direct = _direct(emjax.MoLinE(2), emjax.squarem(emjax.em()), jax.random.key(3), X, y, 2, 40, tol=1e-8)
    np.testing.assert_array_equal(est.params_.experts, np.asarray(direct.params.experts))
    assert est.n_iter_ == int(direct.num_steps)


def test_poisson_family_counts_and_rates():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 2))
    y = rng.poisson(np.exp(np.where(X[:, 0] > 0, 1.0 + X[:, 1], 0.2 - X[:, 1]))).astype(float)
    est = MixtureOfExpertsRegressor(2, "poisson", n_init=2, max_iter=30, tol=None, random_state=1).fit(X, y)
    direct = _direct(emjax.MoPoE(2), emjax.em(), jax.random.key(1), X, y, 2, 30)
    assert est.model_ == emjax.MoPoE(2)
    np.testing.assert_array_equal(est.params_.experts, np.asarray(direct.params.experts))
    np.testing.assert_allclose(
        est.predict(X), emjax.predict_mean(est.model_, est.params_, add_intercept(X)), rtol=ROWS_PADDED
    )
    # non-integer rates: the Poisson quasi-likelihood (MoPoE's EM without its check that y holds counts)
    rates = y + 0.5
    est_rates = MixtureOfExpertsRegressor(2, "poisson", n_init=2, max_iter=30, tol=None, random_state=1).fit(X, rates)
    quasi = emjax.MixtureOfExperts(NonNegativePoissonExpert(), 2)
    assert est_rates.model_ == quasi
    direct = _direct(quasi, emjax.em(), jax.random.key(1), X, rates, 2, 30)
    np.testing.assert_array_equal(est_rates.params_.experts, np.asarray(direct.params.experts))
    assert np.all(np.isfinite(direct.losses)) and direct.losses[-1] < direct.losses[0]
    with pytest.raises(ValueError, match="y must hold counts"):
        est.bic(X, rates)  # the count model refuses rates
    with pytest.raises(ValueError, match=r"needs responses y >= 0"):
        MixtureOfExpertsRegressor(2, "poisson").fit(X, y - 1)


# ----------------------------------------------------------------------------------- classifier


def test_classifier_with_string_labels_is_mologe_on_their_indices():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 2))
    codes = np.where(X[:, 0] * X[:, 1] > 0, 2, np.where(X[:, 0] > 0, 0, 1))
    names = np.array(["cat", "dog", "emu"])
    y = names[codes]
    est = MixtureOfExpertsClassifier(2, n_init=2, max_iter=30, tol=None, ridge=1e-3, random_state=5).fit(X, y)
    np.testing.assert_array_equal(est.classes_, names)
    model = emjax.MoLogE(2, num_classes=3, ridge=1e-3)
    direct = _direct(model, emjax.em(), jax.random.key(5), X, codes, 2, 30)
    np.testing.assert_array_equal(est.params_.experts, np.asarray(direct.params.experts))
    assert est.model_ == model and est.lower_bound_ == pytest.approx(-float(direct.final_loss), rel=1e-15)
    proba = est.predict_proba(X)
    np.testing.assert_allclose(proba, emjax.predict_proba(model, est.params_, add_intercept(X)), rtol=ROWS_PADDED)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_array_equal(est.predict(X), names[np.argmax(proba, axis=1)])
    np.testing.assert_allclose(np.exp(est.predict_log_proba(X)), proba, rtol=1e-14)
    assert est.score(X, y) == pytest.approx(np.mean(est.predict(X) == y))
    assert est.score(X, y) > 0.8  # one softmax expert cannot beat about 0.5 here (the XOR part)
    np.testing.assert_allclose(
        est.responsibilities(X, y),
        emjax.responsibilities(model, est.params_, add_intercept(X), codes),
        rtol=ROWS_PADDED,
    )
    assert est.bic(X, y) == pytest.approx(float(emjax.bic(model, est.params_, add_intercept(X), codes)), rel=1e-14)
    with pytest.raises(ValueError, match=r"labels not seen in fit: \['gnu'\]"):
        est.responsibilities(X[:2], ["cat", "gnu"])
    with pytest.raises(ValueError, match="at least 2 classes; got 1 class"):
        MixtureOfExpertsClassifier().fit(X, np.full(len(X), "cat"))
    with pytest.raises(ValueError, match="Unknown label type"):
        MixtureOfExpertsClassifier().fit(X, X[:, 0])


# ----------------------------------------------------------------------------------- scikit-learn tooling


def test_pipeline_and_grid_search_choose_more_than_one_expert():
    X, y = _mixture_data(200, 10)
    X = 5 * X + 3  # the scaler has something to do
    pipeline = make_pipeline(
        StandardScaler(), MixtureOfExpertsRegressor(n_init=2, max_iter=60, tol=1e-6, random_state=0)
    )
    grid = {"mixtureofexpertsregressor__n_experts": [1, 2, 3]}
    # Two folds of 100 rows: every fit of one K has the same shape (one compilation per K); no refit.
    search = GridSearchCV(pipeline, grid, cv=KFold(2, shuffle=True, random_state=0), refit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # K=3 on 2-expert data may not converge in 60 steps
        search.fit(X, y)
    scores = search.cv_results_["mean_test_score"]
    assert search.best_params_["mixtureofexpertsregressor__n_experts"] >= 2
    assert scores[1] > scores[0] + 0.2 and max(scores) == search.best_score_  # R² about 0.01, 0.56, 0.56


def test_dataframes_name_the_features():
    X, y = _mixture_data(120, 0)
    frame = pd.DataFrame(X, columns=["age", "dose"])
    est = MixtureOfExpertsRegressor(2, n_init=3, max_iter=40, tol=1e-8, random_state=7).fit(frame, pd.Series(y))
    np.testing.assert_array_equal(est.feature_names_in_, ["age", "dose"])
    table = est.summary(frame, y)
    assert isinstance(table, emjax.FitSummary) and table.num_restarts == 3 and table.status_name == "Status.ok"
    names = [row.name for row in table.coefficients if row.block == "expert[0]"]
    assert names == ["expert[0].age", "expert[0].dose", "expert[0].intercept"]
    assert table.log_likelihood == pytest.approx(len(y) * est.lower_bound_, rel=1e-12)
    assert table.bic == pytest.approx(est.bic(frame, y), rel=1e-12)
    with pytest.raises(ValueError, match="feature names"):
        est.predict(frame[["dose", "age"]])  # scikit-learn's check of the names


def test_pickle_keeps_numpy_parameters_and_predictions():
    est, X, _ = _regression()
    again = pickle.loads(pickle.dumps(est))
    assert type(again.params_.gate) is np.ndarray
    np.testing.assert_array_equal(again.predict(X), est.predict(X))


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"n_experts": 0}, "n_experts must be an int >= 1"),
        ({"n_experts": 2.0}, "n_experts must be an int >= 1"),
        ({"n_init": 0}, "n_init must be an int >= 1"),
        ({"max_iter": -1}, "max_iter must be an int >= 0"),
        ({"tol": -1.0}, "tol must be None or a finite number >= 0"),
        ({"ridge": float("nan")}, "ridge must be a finite number >= 0"),
        ({"solver": "newton"}, "solver must be one of"),
        ({"fit_intercept": "yes"}, "fit_intercept must be True or False"),
        ({"family": "binomial"}, "family must be one of"),
        ({"random_state": "seed"}, "cannot be used to seed"),
    ],
)
def test_hyperparameters_are_checked_in_fit(setting, message):
    est = MixtureOfExpertsRegressor(**setting)  # stored unchanged, not checked: scikit-learn's convention
    assert est.get_params()[next(iter(setting))] is next(iter(setting.values()))
    with pytest.raises(ValueError, match=message):
        est.fit(np.zeros((4, 1)), np.zeros(4))


def test_an_unmet_tolerance_warns():
    X, y = _mixture_data(120, 0)
    est = MixtureOfExpertsRegressor(2, n_init=1, max_iter=1, tol=1e-12, random_state=0)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        est.fit(X, y)
    assert est.converged_ is False and est.n_iter_ == 1


def test_optional_import_and_float32_without_x64():
    """Without scikit-learn, ``import emjax`` works and ``import emjax.sklearn`` names the install command;
    with it and without x64, the estimators compute in float32 (a fresh process: x64 is off there)."""
    code = textwrap.dedent("""
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "sklearn":
                    raise ImportError(f"No module named {name!r} (blocked by the test)")

        blocker = Blocked()
        sys.meta_path.insert(0, blocker)
        import emjax
        assert "sklearn" not in sys.modules
        try:
            import emjax.sklearn
        except ImportError as error:
            print("message:", error)
        sys.meta_path.remove(blocker)

        import jax, numpy as np
        from emjax.sklearn import MixtureOfExpertsRegressor
        assert not jax.config.jax_enable_x64
        X = np.random.default_rng(0).normal(size=(40, 2))
        est = MixtureOfExpertsRegressor(2, n_init=1, max_iter=3, tol=None, random_state=0).fit(X, X[:, 0])
        print("dtypes:", est.params_.experts.dtype, est.predict(X).dtype, jax.config.jax_enable_x64)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert "needs scikit-learn" in result.stdout and 'pip install "emjax[experiments]"' in result.stdout
    assert "dtypes: float32 float32 False" in result.stdout


def test_public_surface():
    import emjax.sklearn as sk

    assert sk.__all__ == ["MixtureOfExpertsClassifier", "MixtureOfExpertsRegressor"]
    assert "sklearn" not in emjax.__all__
    assert set(MixtureOfExpertsRegressor().get_params()) == {
        "n_experts",
        "family",
        "n_init",
        "max_iter",
        "tol",
        "ridge",
        "solver",
        "fit_intercept",
        "random_state",
    }
    assert set(MixtureOfExpertsClassifier().get_params()) == set(MixtureOfExpertsRegressor().get_params()) - {"family"}
    for cls in (MixtureOfExpertsRegressor, MixtureOfExpertsClassifier):
        for name in ("fit", "predict", "gate_proba", "responsibilities", "aic", "bic", "summary"):
            assert getattr(cls, name).__doc__, (cls, name)
