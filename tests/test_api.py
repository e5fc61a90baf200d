"""The public surface is a contract: pin it."""

import emjax

CONTRACT = {
    # issue 2
    "SymMoLinE", "SymMoLogE", "SymParams", "sample", "responsibilities", "neg_log_likelihood", "em_step",
    "mirror_map", "bregman_divergence", "mirror_descent_step", "gradient_descent_step", "gradient_em_step",
    "complete_information", "missing_information", "observed_information", "missing_information_matrix",
    "em_rate", "em", "mirror_descent", "gradient_em", "gradient_descent", "from_optax", "fit",
    # issue 3
    "MoLinE", "MoLogE", "MoPoE", "MoEParams", "init_params", "fit_restarts", "standard_errors", "aic", "bic",
    "Status",
    # issue 4
    "sweep", "SweepResult", "ConfigurationMismatch", "sweeps",
    # issue 5
    "datasets", "deep",
}

DATASETS_CONTRACT = {"digits", "fashion_mnist", "random_invert", "read_idx", "add_intercept", "ImageDataset"}
DEEP_CONTRACT = {"DeepMoE", "fit_em", "fit_end_to_end", "top_k_mask", "load_statistics", "neg_log_likelihood",
                 "surrogate", "responsibilities", "synthetic_nonlinear_moe"}

STREAMING_CONTRACT = {"fit_stream", "ArrayBatches", "NpyBatches", "RobbinsMonro", "StreamResult", "full_pass",
                      "PassSums"}
PARALLEL_CONTRACT = {"data_mesh", "shard_rows", "shard_cells", "fit_cells", "initialize"}

SWEEPS_CONTRACT = {"sweep", "ConvergenceCell", "RateCell", "tune_step_sizes", "STEP_GRIDS", "METHODS",
                   "SweepResult", "ConfigurationMismatch"}


def test_sweeps_names_are_exported():
    for name in SWEEPS_CONTRACT:
        assert hasattr(emjax.sweeps, name), name
    assert emjax.sweeps.sweep is emjax.sweep


def test_datasets_and_deep_names_are_exported():
    for module, names in ((emjax.datasets, DATASETS_CONTRACT), (emjax.deep, DEEP_CONTRACT),
                          (emjax.streaming, STREAMING_CONTRACT), (emjax.parallel, PARALLEL_CONTRACT)):
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
