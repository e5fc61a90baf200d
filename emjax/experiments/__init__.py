"""The paper's experiments as functions: settings, sweeps, CSV summaries and figures (``emjax reproduce``)."""

from ._synthetic import EXPERIMENTS as EXPERIMENTS
from ._synthetic import FigureSettings as FigureSettings
from ._synthetic import MimSettings as MimSettings
from ._synthetic import reproduce as reproduce
from ._synthetic import run_figures as run_figures
from ._synthetic import run_mim as run_mim
from ._table2 import Table2Cell as Table2Cell
from ._table2 import Table2Settings as Table2Settings
from ._table2 import run_table2 as run_table2
from ._table2 import summarise_table2 as summarise_table2
