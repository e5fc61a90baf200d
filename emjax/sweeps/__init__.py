"""Batched sweeps over named grids (``sweep``) and the ready-made cells of the paper's experiments."""

from ._cells import METHOD_LABELS as METHOD_LABELS
from ._cells import METHODS as METHODS
from ._cells import STEPPED as STEPPED
from ._cells import ConvergenceCell as ConvergenceCell
from ._cells import RateCell as RateCell
from ._cells import draw_truth as draw_truth
from ._cells import parameter_errors as parameter_errors
from ._cells import perturb_start as perturb_start
from ._store import ConfigurationMismatch as ConfigurationMismatch
from ._sweep import SweepResult as SweepResult
from ._sweep import describe_cell as describe_cell
from ._sweep import sweep as sweep
from ._tuning import STEP_GRIDS as STEP_GRIDS
from ._tuning import TunedSteps as TunedSteps
from ._tuning import tune_step_sizes as tune_step_sizes
