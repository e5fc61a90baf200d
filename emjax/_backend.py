"""Known XLA faults of installed jaxlib releases that make emjax's answers wrong, and their workaround.

jaxlib 0.10.2's CPU compiler fuses a matrix product, elementwise work and a sum over rows into one
YNNPACK kernel ("__ynn_fusion", fusion type "reduce") that returns wrong sums at some sizes
(jax-ml/jax#39103; 0.10.1 is correct). In emjax it hit the Gaussian experts' σ update: vmapped over
experts, the residual sum of squares over n = 17,000-26,000 rows (float64) was off by up to 50%, so
``em_step`` gave a different σ called directly than under ``vmap``, and EM increased the loss.
The smallest program we found that shows it (K = 3 rows of ``c``, d = 5, n = 20,000, float64)::

    f = lambda x, y, w, c: jnp.sum(w.T * jnp.square(y[None] - c @ x.T), axis=1)
    jax.jit(f)(x, y, w, c)   # != f(x, y, w, c) evaluated op by op, relative error 2e-3

emjax's requirements exclude that release; this module warns when it is present anyway (installed
with ``--no-deps``, say) and the user has not disabled the fusion with :data:`WORKAROUND_FLAG`,
which must be in ``XLA_FLAGS`` before JAX starts its backend. emjax never sets it at import.
"""

from __future__ import annotations

import os
import warnings

import jaxlib

#: jaxlib releases whose CPU compiler returns wrong results on emjax's programs, with the upstream report.
MISCOMPILING_JAXLIB = {"0.10.2": "jax-ml/jax#39103 (a fused matrix product and row sum returns wrong sums)"}
#: Disables the faulty YNNPACK fusions of XLA's CPU compiler (accepted by jaxlib 0.10.1 and later).
WORKAROUND_FLAG = "--xla_cpu_experimental_ynn_fusion_type="


def miscompiling_jaxlib(version: str | None = None, xla_flags: str | None = None) -> str | None:
    """The fault affecting ``version`` (default: the installed jaxlib) unless ``xla_flags`` (default:
    ``$XLA_FLAGS``) already disables it; None when this jaxlib is safe."""
    version = jaxlib.__version__ if version is None else version
    xla_flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    fault = MISCOMPILING_JAXLIB.get(version)
    if fault is None or "xla_cpu_experimental_ynn_fusion_type" in xla_flags:
        return None
    return fault


def warn_if_miscompiling() -> None:
    """A ``RuntimeWarning`` when the installed jaxlib is known to compute emjax's programs wrongly on a CPU."""
    fault = miscompiling_jaxlib()
    if fault is not None:
        warnings.warn(
            f"jaxlib {jaxlib.__version__} miscompiles emjax's programs on the CPU: {fault}. Install another "
            f"release (pip install 'jax!={jaxlib.__version__}' 'jaxlib!={jaxlib.__version__}'), or start Python with "
            f"XLA_FLAGS={WORKAROUND_FLAG} set.",
            RuntimeWarning,
            stacklevel=3,
        )
