"""LoRA on the text side: a CLIP whose encoders run with its LoRA patches applied (see lora.py for the strategy)."""
from __future__ import annotations

from typing import Any

from .lora import LoraPatch, clip_patched
from .text_encoders import CLIP


class PatchedCLIP(CLIP):
    """A CLIP that applies its `patches` (by encoder role) around every encode; the shared encoder modules get their
    original weights back whenever an unpatched CLIP (or one with other patches) encodes next."""

    def encode_from_tokens(self, *args: Any, **kwargs: Any) -> Any:
        with clip_patched(self):
            return super().encode_from_tokens(*args, **kwargs)


def clip_with_patches(clip: CLIP, patches: dict[str, dict], strength: float, name: str = "") -> CLIP:
    """A clone of `clip` with one LoraPatch per text-encoder role that the LoRA touches."""
    new = tuple(LoraPatch(weights, float(strength), name, target=role) for role, weights in patches.items() if weights)
    return clip_with_added_patches(clip, new)


def clip_with_added_patches(clip: CLIP, new: tuple[LoraPatch, ...]) -> CLIP:
    """A clone of `clip` carrying its patches plus `new` (each aimed at an encoder role by its `target`)."""
    out = clip.clone()
    out.patches = tuple(getattr(clip, "patches", ())) + new
    if new and not isinstance(out, PatchedCLIP):
        out.__class__ = PatchedCLIP if type(clip) is CLIP else type("PatchedCLIP", (PatchedCLIP, type(clip)), {})
    return out
