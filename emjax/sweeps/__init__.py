"""Batched sweeps over named grids (``sweep``) and the ready-made cells of the paper's experiments."""

from ._store import ConfigurationMismatch as ConfigurationMismatch
from ._sweep import SweepResult as SweepResult
from ._sweep import describe_cell as describe_cell
from ._sweep import sweep as sweep
