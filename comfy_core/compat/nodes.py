"""ComfyUI's `nodes` module: `MAX_RESOLUTION`, the node class mappings of the engine running the current node, the
built-in node classes (to subclass: `class MySampler(nodes.KSampler)`), and `common_ksampler`.

`SaveImage` / `PreviewImage` are the built-ins plus ComfyUI's instance attributes (`type`, `output_dir`), which
their subclasses in packs set in `__init__` to pick the folder.
`NODE_CLASS_MAPPINGS` / `NODE_DISPLAY_NAME_MAPPINGS` are copies of the engine's registry taken at each access: a pack
reads the nodes registered so far (built-ins, then packs loaded before it); writing into the copy registers nothing.
"""
from __future__ import annotations

from typing import Any

from ..context import current
from ..nodes import image as _image
from ..nodes.inputs import MAX_RESOLUTION  # noqa: F401 - re-exported API
from ..nodes.sampling import attention_backend_choice, step_reporter
from ..sampling.ksampler import sample_latent
from .comfy.model_management import interrupt_current_processing


def __getattr__(name: str) -> Any:
    """Per-engine attributes (PEP 562): the class mappings, and built-in node classes by their node name."""
    if name.startswith("__"):
        raise AttributeError(name)
    registry = current().registry
    if registry is None:
        raise AttributeError(f"module 'nodes' has no attribute {name!r} (no node registry in this context)")
    if name == "NODE_CLASS_MAPPINGS":
        return dict(registry.classes)
    if name == "NODE_DISPLAY_NAME_MAPPINGS":
        return dict(registry.display_names)
    if name in registry.builtin:
        return registry.classes[name]
    raise AttributeError(f"module 'nodes' has no attribute {name!r} in comfy-core")


class _FolderAttributes:
    """ComfyUI's `self.type` ("output" | "temp") and `self.output_dir`, mapped onto the built-ins' `kind`."""

    @property
    def kind(self) -> str:
        return self.__dict__.get("type") or type(self).default_kind

    @property
    def output_dir(self) -> str:
        return self.__dict__.get("_output_dir") or str(current().storage.root(self.kind))

    @output_dir.setter
    def output_dir(self, value: str) -> None:
        self.__dict__["_output_dir"] = value


class SaveImage(_FolderAttributes, _image.SaveImage):
    default_kind = "output"


class PreviewImage(_FolderAttributes, _image.PreviewImage):
    default_kind = "temp"


def common_ksampler(model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive: list,
                    negative: list, latent: dict[str, Any], denoise: float = 1.0, disable_noise: bool = False,
                    start_step: int | None = None, last_step: int | None = None,
                    force_full_denoise: bool = False) -> tuple[dict[str, Any]]:
    """Denoise a LATENT dict as the KSampler nodes do (progress and interrupts included); returns `(latent,)`."""
    out = sample_latent(model, latent, positive, negative, seed=seed, steps=steps, cfg=cfg,
                        sampler_name=sampler_name, scheduler=scheduler, denoise=denoise, add_noise=not disable_noise,
                        start_step=start_step, last_step=last_step, force_full_denoise=force_full_denoise,
                        on_step=step_reporter(model), attention_backend=attention_backend_choice())
    return (out,)


def before_node_execution() -> None:
    current().check_interrupted()


def interrupt_processing(value: bool = True) -> None:
    interrupt_current_processing(value)
