"""ComfyUI's `comfy.utils`: progress bars, resizing and weights files, on comfy-core's own implementations."""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch

from ...context import NodeContext, current_or_none
from ...models.state_dict import open_state_dict
from ...upscale import bislerp, common_upscale, lanczos, repeat_to_batch_size  # noqa: F401 - re-exported API

log = logging.getLogger(__name__)

PROGRESS_BAR_ENABLED = True


def set_progress_bar_global_hook(function: Any) -> None:
    log.warning("comfy.utils.set_progress_bar_global_hook ignored: comfy-core reports progress per engine")


def _preview_bytes(preview: Any) -> bytes | None:
    """ComfyUI passes previews as (format, PIL image, max size); the engine wants encoded JPEG bytes."""
    if isinstance(preview, (bytes, bytearray)):
        return bytes(preview)
    if not isinstance(preview, tuple) or len(preview) < 2 or not hasattr(preview[1], "save"):
        return None
    image = preview[1]
    if len(preview) > 2 and preview[2]:
        image = image.copy()
        image.thumbnail((preview[2], preview[2]))
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=95)
    return out.getvalue()


class ProgressBar:
    """Progress of the current node, sent as `progress` events; each update is also an interrupt point.

    Bound to the node running when the bar is made, so updates from the node's worker threads report there too.
    Outside an engine it only counts.
    """

    def __init__(self, total: int, node_id: str | None = None):
        self.total = total
        self.current = 0
        self._ctx: NodeContext | None = current_or_none()

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        ctx = self._ctx or current_or_none()
        if ctx is not None:
            ctx.progress(self.current, self.total, _preview_bytes(preview) if preview is not None else None)

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)


def load_torch_file(ckpt: str | Path, safe_load: bool = False, device: Any = None,
                    return_metadata: bool = False) -> Any:
    """A weights file as a dict of tensors on `device` (CPU by default); pickles are always read safely
    (weights only), whatever `safe_load` says. With `return_metadata`, also the safetensors metadata (or None)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    sd = open_state_dict(ckpt)
    try:
        tensors = {k: sd[k].to(device) for k in sd}
        metadata = sd.metadata() or None
    finally:
        sd.close()
    return (tensors, metadata) if return_metadata else tensors


def save_torch_file(sd: dict[str, torch.Tensor], ckpt: str | Path, metadata: dict[str, str] | None = None) -> None:
    import safetensors.torch

    safetensors.torch.save_file(sd, str(ckpt), metadata=metadata)


def calculate_parameters(sd: dict[str, torch.Tensor], prefix: str = "") -> int:
    return sum(v.nelement() for k, v in sd.items() if k.startswith(prefix))


def state_dict_prefix_replace(state_dict: dict[str, Any], replace_prefix: dict[str, str],
                              filter_keys: bool = False) -> dict[str, Any]:
    """Keys starting with each old prefix get the new one (others kept unless `filter_keys`)."""
    out = {} if filter_keys else state_dict
    for old, new in replace_prefix.items():
        for key in [k for k in state_dict if k.startswith(old)]:
            out[new + key[len(old):]] = state_dict.pop(key)
    return out
