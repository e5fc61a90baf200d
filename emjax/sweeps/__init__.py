"""Batched sweeps over named grids (``sweep``) and the ready-made cells of the paper's experiments."""

from ._store import ConfigurationMismatch as ConfigurationMismatch
from ._sweep import SweepResult as SweepResult
from ._sweep import describe_cell as describe_cell
from ._sweep import sweep as sweep
from ._cells import METHOD_LABELS as METHOD_LABELS
from ._cells import METHODS as METHODS
from ._cells import ConvergenceCell as ConvergenceCell
from ._cells import draw_truth as draw_truth
from ._cells import parameter_errors as parameter_errors
from ._cells import perturb_start as perturb_start
