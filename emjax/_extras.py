"""The optional ``experiments`` extra (matplotlib, scikit-learn): imported where needed, never by ``import emjax``."""

from __future__ import annotations

import importlib

INSTALL = 'pip install "emjax[experiments]"'
_DISTRIBUTIONS = {"matplotlib": "matplotlib", "sklearn": "scikit-learn"}


def require(module: str, purpose: str):
    """Import ``module`` (from the experiments extra), or raise an ImportError that names the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        top = module.partition(".")[0]
        raise ImportError(
            f"{purpose} needs {_DISTRIBUTIONS.get(top, top)}, which emjax's core does not install; "
            f"install the experiments extra: {INSTALL}"
        ) from error
