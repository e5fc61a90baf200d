"""Mini-batch (stochastic) EM over data streamed in batches, from memory or memory-mapped ``.npy`` files."""

from ._batches import ArrayBatches as ArrayBatches
from ._batches import NpyBatches as NpyBatches
from ._minibatch import StreamResult as StreamResult
from ._minibatch import fit_stream as fit_stream
from ._passes import PassSums as PassSums
from ._passes import full_pass as full_pass
from ._schedule import RobbinsMonro as RobbinsMonro

__all__ = ["ArrayBatches", "NpyBatches", "PassSums", "RobbinsMonro", "StreamResult", "fit_stream", "full_pass"]
