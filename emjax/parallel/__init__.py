"""Data-parallel EM: rows sharded over a mesh's ``"data"`` axis, independent fits over ``"cells"``, many hosts."""

from ._cells import fit_cells as fit_cells
from ._distributed import initialize as initialize
from ._mesh import CELL_AXIS as CELL_AXIS
from ._mesh import DATA_AXIS as DATA_AXIS
from ._mesh import data_mesh as data_mesh
from ._mesh import shard_cells as shard_cells
from ._mesh import shard_rows as shard_rows

__all__ = ["CELL_AXIS", "DATA_AXIS", "data_mesh", "fit_cells", "initialize", "shard_cells", "shard_rows"]
