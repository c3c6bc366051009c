"""Device runtime: load a bundle, run it on its backend, stream live audio. numpy + one runtime, never torch.

- :func:`load` -> :class:`EdgeModel` (``classify``, ``classify_file``, ``embed``, ``zero_shot``, ``stream``);
- :class:`StreamSession` (``push``/``finish``/``reset``) emitting :class:`WindowEvent` and :class:`RecordingUpdate`;
- :class:`ClassificationResult`, :class:`ZeroShotResult`, :class:`WindowQuality`;
- :class:`QualityConfig` (window quality thresholds), :class:`DecisionConfig` (hysteresis / debounce).
"""

from acula_edge.runtime.aggregation import DecisionConfig
from acula_edge.runtime.model import EdgeModel, load
from acula_edge.runtime.quality import QualityConfig
from acula_edge.runtime.results import (ClassificationResult, RecordingUpdate, WindowEvent, WindowQuality,
                                        ZeroShotResult)
from acula_edge.runtime.streaming import StreamSession

__all__ = ["ClassificationResult", "DecisionConfig", "EdgeModel", "QualityConfig", "RecordingUpdate",
           "StreamSession", "WindowEvent", "WindowQuality", "ZeroShotResult", "load"]
