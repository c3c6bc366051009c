"""acula-edge: health-audio encoders from the GPU lab to the point of care.

The device-side surface is small and light (numpy + one runtime; never torch at import):

- :func:`load` — open an exported bundle folder and get a model for ``classify``/``embed``/``zero_shot``/``stream``;
- :class:`FrontendConfig`, :class:`Windowing`, :func:`preset` — the one definition of the log-mel front-end;
- :class:`LogMel`, :class:`LogMelStream` — the numpy front-end, offline and streaming;
- :func:`load_audio`, :func:`load_dataset` — audio files and dataset specs;
- errors in :mod:`acula_edge.errors`.

Training and export live in ``acula_edge.align``, ``acula_edge.distill`` and ``acula_edge.export`` (import torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from acula_edge.audio import load_audio
from acula_edge.data import load_dataset
from acula_edge.errors import AculaEdgeError
from acula_edge.features import LogMel, LogMelStream
from acula_edge.frontend import FrontendConfig, Windowing, preset

if TYPE_CHECKING:  # pragma: no cover
    from acula_edge.runtime.model import EdgeModel


def load(bundle_dir: str, num_threads: int | None = None, **options: Any) -> "EdgeModel":
    """Load an exported bundle (see acula_edge.runtime.model.load)."""
    from acula_edge.runtime.model import load as _load

    return _load(bundle_dir, num_threads=num_threads, **options)


__all__ = ["AculaEdgeError", "FrontendConfig", "LogMel", "LogMelStream", "Windowing", "__version__", "load",
           "load_audio", "load_dataset", "preset"]
