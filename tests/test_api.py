"""The public surface is a contract: pin it."""

import emjax

CONTRACT = {
    # issue 2
    "SymMoLinE",
    "SymMoLogE",
    "SymParams",
    "sample",
    "responsibilities",
    "neg_log_likelihood",
    "em_step",
    "mirror_map",
    "bregman_divergence",
    "mirror_descent_step",
    "gradient_descent_step",
    "gradient_em_step",
    "complete_information",
    "missing_information",
    "observed_information",
    "missing_information_matrix",
    "em_rate",
    "em",
    "mirror_descent",
    "gradient_em",
    "gradient_descent",
    "from_optax",
    "fit",
    # issue 3
    "MoLinE",
    "MoLogE",
    "MoPoE",
    "MoEParams",
    "init_params",
    "fit_restarts",
    "standard_errors",
    "aic",
    "bic",
    "Status",
    # issue 4
    "sweep",
    "SweepResult",
    "ConfigurationMismatch",
    "sweeps",
    # issue 5
    "datasets",
    "deep",
    # issue 16
    "squarem",
    "anderson",
    # issue 18
    "gate_probabilities",
    "predict_mean",
    "predict_variance",
    "predict_quantiles",
    "predict_proba",
    "predict_log_proba",
    "summary",
    "FitSummary",
    # separate gate and expert covariates, offsets
    "covariates",
    "Covariates",
    # hierarchical mixtures of experts
    "HierarchicalMoE",
    "HMEParams",
    # R-style formulas (formulaic, optional)
    "from_formula",
    "FormulaDesign",
}

DATASETS_CONTRACT = {
    "digits",
    "fashion_mnist",
    "fashion_mnist_folder",
    "random_invert",
    "read_idx",
    "add_intercept",
    "ImageDataset",
}
DEEP_CONTRACT = {
    "DeepMoE",
    "fit_em",
    "fit_end_to_end",
    "top_k_mask",
    "load_statistics",
    "neg_log_likelihood",
    "surrogate",
    "responsibilities",
    "synthetic_nonlinear_moe",
}

STREAMING_CONTRACT = {
    "fit_stream",
    "ArrayBatches",
    "NpyBatches",
    "RobbinsMonro",
    "StreamResult",
    "full_pass",
    "PassSums",
}
PARALLEL_CONTRACT = {"data_mesh", "shard_rows", "shard_cells", "fit_cells", "initialize"}

SWEEPS_CONTRACT = {
    "sweep",
    "ConvergenceCell",
    "RateCell",
    "tune_step_sizes",
    "STEP_GRIDS",
    "METHODS",
    "SweepResult",
    "ConfigurationMismatch",
}


def test_sweeps_names_are_exported():
    for name in SWEEPS_CONTRACT:
        assert hasattr(emjax.sweeps, name), name
    assert emjax.sweeps.sweep is emjax.sweep


def test_datasets_and_deep_names_are_exported():
    for module, names in (
        (emjax.datasets, DATASETS_CONTRACT),
        (emjax.deep, DEEP_CONTRACT),
        (emjax.streaming, STREAMING_CONTRACT),
        (emjax.parallel, PARALLEL_CONTRACT),
    ):
        for name in names:
            assert hasattr(module, name), name
            assert getattr(module, name).__doc__, name


def test_status_codes():
    assert {s.name for s in emjax.Status} >= {"ok", "max_steps", "nonfinite", "degenerate"}


def test_contract_names_are_exported():
    assert CONTRACT <= set(emjax.__all__)
    for name in emjax.__all__:
        assert hasattr(emjax, name), name


def test_everything_public_is_documented():
    for name in emjax.__all__:
        assert getattr(emjax, name).__doc__, name


def test_version():
    assert isinstance(emjax.__version__, str) and emjax.__version__.count(".") >= 2


TESTING_CONTRACT = {"random_params", "perturb", "relative_errors", "match_experts"}
SOLVER_CLASSES = {"EM", "MirrorDescent", "GradientDescent", "GradientEM", "OptaxSolver", "Squarem", "Anderson"}


def test_generators_and_test_helpers_live_in_emjax_testing_only():
    assert set(emjax.testing.__all__) == TESTING_CONTRACT
    for name in TESTING_CONTRACT | {"random_moe_params"}:
        assert name not in emjax.__all__ and not hasattr(emjax, name), name
    for name in TESTING_CONTRACT:
        assert getattr(emjax.testing, name).__doc__, name


def test_solvers_have_one_public_form_the_factories():
    from emjax import _acceleration, _solvers

    for name in SOLVER_CLASSES:
        assert name not in emjax.__all__ and not hasattr(emjax, name), name
    for factory, cls in (
        (emjax.em(), _solvers.EM),
        (emjax.mirror_descent(0.5), _solvers.MirrorDescent),
        (emjax.gradient_descent(0.1), _solvers.GradientDescent),
        (emjax.gradient_em(0.1), _solvers.GradientEM),
        (emjax.squarem(emjax.em()), _acceleration.Squarem),
        (emjax.anderson(emjax.em()), _acceleration.Anderson),
    ):
        assert isinstance(factory, cls) and isinstance(factory, emjax.AbstractSolver)


def _public_functions():
    import inspect

    for module in (emjax, emjax.testing, emjax.deep, emjax.sweeps, emjax.streaming, emjax.parallel, emjax.datasets):
        for name in getattr(module, "__all__", dir(module)):
            value = getattr(module, name)
            if inspect.isfunction(value) and not name.startswith("_"):
                yield f"{module.__name__}.{name}", value


def test_one_calling_rule_model_params_key_data_options():
    """A PRNG key comes after the model (or a sweep's cell), the solver and the params, before anything else."""
    import inspect

    before_key = {"model", "cell", "solver", "params", "truth"}
    checked = 0
    for name, function in _public_functions():
        positional = [
            p.name
            for p in inspect.signature(function).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if "model" in positional:
            assert positional[0] == "model", (name, positional)
        if "key" in positional:
            head = positional[: positional.index("key")]
            assert set(head) <= before_key, (name, positional)
            checked += 1
    assert checked >= 8
