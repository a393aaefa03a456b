"""Built-in nodes, one module per family; each module exports NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS."""
from __future__ import annotations

import importlib

from .registry import NodeRegistry

BUILTIN_MODULES = (
    "latent", "image", "mask", "conditioning", "primitives", "text", "loaders", "vae", "sampling",
    "clip_vision", "controlnet", "preprocessors",
    # ComfyUI's comfy_extras families, one module each
    "custom_sampling", "latent_ops", "image_ops", "mask_ops", "strings", "model_patches", "model_merging",
    "upscale_models", "extras",
)


def register_builtin_nodes(registry: NodeRegistry) -> None:
    for name in BUILTIN_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue  # a node family not present in this build
        registry.register(module.NODE_CLASS_MAPPINGS, getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None),
                          builtin=True)
