"""Input-spec pieces shared by the built-in node families (what their INPUT_TYPES return), with ComfyUI's values."""
from __future__ import annotations

from typing import Any

MAX_RESOLUTION = 16384  # ComfyUI's bound on every pixel size / position input
CROP_METHODS = ["disabled", "center"]


def int_input(default: int, minimum: int, maximum: int = MAX_RESOLUTION, step: int | None = 1,
              **extra: Any) -> tuple[str, dict[str, Any]]:
    """An INT input spec with ComfyUI's key order: default, min, max, step (left out when None), then `extra`."""
    options: dict[str, Any] = {"default": default, "min": minimum, "max": maximum}
    if step is not None:
        options["step"] = step
    return ("INT", {**options, **extra})
