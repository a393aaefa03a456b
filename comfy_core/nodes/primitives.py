"""Primitive value nodes (ComfyUI's PrimitiveInt/Float/String/Boolean): a widget value as an output."""
from __future__ import annotations

from typing import Any

_INT64_MAX = 9223372036854775807


class _Primitive:
    INFO_V3 = True
    FUNCTION = "execute"
    CATEGORY = "utils/primitive"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_primitive"
    SPEC: tuple[str, dict[str, Any]]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        kind, options = cls.SPEC
        return {"required": {"value": (kind, dict(options))}}

    def execute(self, value: Any) -> tuple[Any]:
        return (value,)


class PrimitiveString(_Primitive):
    DISPLAY_NAME = "String"
    RETURN_TYPES = ("STRING",)
    SPEC = ("STRING", {"multiline": False})


class PrimitiveStringMultiline(_Primitive):
    DISPLAY_NAME = "String (Multiline)"
    RETURN_TYPES = ("STRING",)
    SPEC = ("STRING", {"multiline": True})


class PrimitiveInt(_Primitive):
    DISPLAY_NAME = "Int"
    RETURN_TYPES = ("INT",)
    SPEC = ("INT", {"min": -_INT64_MAX, "max": _INT64_MAX, "control_after_generate": True})


class PrimitiveFloat(_Primitive):
    DISPLAY_NAME = "Float"
    RETURN_TYPES = ("FLOAT",)
    SPEC = ("FLOAT", {"min": -_INT64_MAX, "max": _INT64_MAX})


class PrimitiveBoolean(_Primitive):
    DISPLAY_NAME = "Boolean"
    RETURN_TYPES = ("BOOLEAN",)
    SPEC = ("BOOLEAN", {})


NODE_CLASS_MAPPINGS = {
    "PrimitiveString": PrimitiveString,
    "PrimitiveStringMultiline": PrimitiveStringMultiline,
    "PrimitiveInt": PrimitiveInt,
    "PrimitiveFloat": PrimitiveFloat,
    "PrimitiveBoolean": PrimitiveBoolean,
}

NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
