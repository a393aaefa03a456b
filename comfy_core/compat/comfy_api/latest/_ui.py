"""`comfy_api.latest.ui`: what a V3 node shows in the frontend (`io.NodeOutput(ui=ui.PreviewImage(image))`).

Images are written through the engine's storage (the running node's engine, as the built-in SaveImage and
PreviewImage nodes do), so they land in that engine's output/temp folders and are served by `/view`.
"""
from __future__ import annotations

import secrets
from typing import Any

import torch

from ._io import ComfyNode, FolderType, _UIOutput

_PREVIEW_LETTERS = "abcdefghijklmnopqrstupvxyz"  # ComfyUI's alphabet for preview prefixes


class SavedResult(dict):
    """One saved file as the frontend addresses it: {"filename", "subfolder", "type"}."""

    def __init__(self, filename: str, subfolder: str, type: FolderType | str):
        super().__init__(filename=filename, subfolder=subfolder, type=FolderType(type).value)

    @property
    def filename(self) -> str:
        return self["filename"]

    @property
    def subfolder(self) -> str:
        return self["subfolder"]

    @property
    def type(self) -> FolderType:
        return FolderType(self["type"])


class SavedImages(_UIOutput):
    """Saved images; `is_animated` tells the frontend to show them as an animation."""

    def __init__(self, results: list[SavedResult], is_animated: bool = False):
        self.results, self.is_animated = results, is_animated

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.results, **({"animated": (True,)} if self.is_animated else {})}


class ImageSaveHelper:
    """Saving IMAGE batches [B,H,W,C] as PNG files, with the prompt as metadata when the node has it hidden."""

    @staticmethod
    def save_images(images: torch.Tensor, filename_prefix: str, folder_type: FolderType,
                    cls: type[ComfyNode] | None = None, compress_level: int = 4) -> list[SavedResult]:
        from ....nodes.image import (
            SaveImage,  # the built-in node's writer: same file names, counters, metadata
        )

        saver = SaveImage()
        saver.kind, saver.compress_level = FolderType(folder_type).value, compress_level
        hidden = cls.hidden if cls is not None and cls.hidden is not None else None
        saved = saver.save_images(images, filename_prefix, prompt=hidden.prompt if hidden else None,
                                  extra_pnginfo=hidden.extra_pnginfo if hidden else None)
        return [SavedResult(**item) for item in saved["ui"]["images"]]

    @staticmethod
    def get_save_images_ui(images: torch.Tensor, filename_prefix: str, cls: type[ComfyNode] | None = None,
                           compress_level: int = 4) -> SavedImages:
        return SavedImages(ImageSaveHelper.save_images(images, filename_prefix, FolderType.output, cls,
                                                       compress_level))


class PreviewImage(_UIOutput):
    """Shows `image` [B,H,W,C] in the node: written to the temp folder under a random `ComfyUI_temp_xxxxx` prefix."""

    def __init__(self, image: torch.Tensor, animated: bool = False, cls: type[ComfyNode] | None = None, **_: Any):
        prefix = "ComfyUI_temp_" + "".join(secrets.choice(_PREVIEW_LETTERS) for _ in range(5))
        self.values = ImageSaveHelper.save_images(image, prefix, FolderType.temp, cls, compress_level=1)
        self.animated = animated

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.values, "animated": (self.animated,)}


class PreviewMask(PreviewImage):
    """Shows a MASK [B,H,W] (or [H,W]) as grey images."""

    def __init__(self, mask: torch.Tensor, animated: bool = False, cls: type[ComfyNode] | None = None, **kwargs: Any):
        grey = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).movedim(1, -1).expand(-1, -1, -1, 3)  # [B,H,W,3]
        super().__init__(grey, animated, cls, **kwargs)


class PreviewText(_UIOutput):
    """Shows a text in the node."""

    def __init__(self, value: str, **_: Any):
        self.value = value

    def as_dict(self) -> dict[str, Any]:
        return {"text": (self.value,)}


__all__ = ["ImageSaveHelper", "PreviewImage", "PreviewMask", "PreviewText", "SavedImages", "SavedResult"]
