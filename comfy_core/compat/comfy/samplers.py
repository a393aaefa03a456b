"""ComfyUI's `comfy.samplers`: the sampler and scheduler names, for custom nodes' combo inputs.

The lists are fresh copies of comfy-core's name tuples (ComfyUI's are lists, and packs concatenate them with lists);
changing them changes nothing in the engine.
"""
from __future__ import annotations

from typing import Any, ClassVar

from ...errors import ComfyCoreError
from ...sampling.samplers import KSAMPLER_NAMES as _KSAMPLER_NAMES
from ...sampling.schedulers import SCHEDULER_NAMES as _SCHEDULER_NAMES

KSAMPLER_NAMES: list[str] = list(_KSAMPLER_NAMES)
SAMPLER_NAMES: list[str] = list(_KSAMPLER_NAMES)
SCHEDULER_NAMES: list[str] = list(_SCHEDULER_NAMES)


class KSampler:
    """Only the name lists: custom nodes sample through `nodes.common_ksampler` or a KSampler node."""

    SAMPLERS: ClassVar[list[str]] = list(_KSAMPLER_NAMES)
    SCHEDULERS: ClassVar[list[str]] = list(_SCHEDULER_NAMES)

    def __init__(self, *args: Any, **kwargs: Any):
        raise ComfyCoreError("comfy.samplers.KSampler objects are not available in comfy-core; "
                             "use nodes.common_ksampler or the KSampler node")
