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


def combo_input(options: list[str], default: str | None = None, **extra: Any) -> tuple[str, dict[str, Any]]:
    """A V3-schema COMBO input as ComfyUI reports it: default (when given), multiselect, options, then `extra`."""
    spec: dict[str, Any] = {} if default is None else {"default": default}
    return ("COMBO", {**spec, "multiselect": False, "options": list(options), **extra})


class AnyType(str):
    """The `*` socket type: equal to every type in ComfyUI's link check (which compares with `!=`)."""

    def __ne__(self, other: object) -> bool:
        return False


ANY_TYPE = AnyType("*")
