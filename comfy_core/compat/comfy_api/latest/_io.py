"""`comfy_api.latest.io`: the V3 node schema (inputs, outputs, hidden values), `ComfyNode` and `NodeOutput`.

An input serializes as ComfyUI's V3 nodes report it in `/object_info`: `[io_type, {options}]`, the options dict always
present (possibly empty), unset (None) options left out, keys in ComfyUI's order. Combos are `["COMBO",
{"multiselect": ..., "options": [...]}]`. Each type (`Int`, `Image`, `Custom("MY_TYPE")`...) is a class holding its
`io_type` and nested `Input` / `Output` classes, as in ComfyUI.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ....graph_utils import ExecutionBlocker


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


def _pruned(values: dict[str, Any]) -> dict[str, Any]:
    """The options that are set: ComfyUI leaves None out but keeps False and empty lists."""
    return {k: v for k, v in values.items() if v is not None}


class RemoteOptions:
    """A combo whose choices the frontend fetches from a route."""

    def __init__(self, route: str, refresh_button: bool, control_after_refresh: str = "first",
                 timeout: int | None = None, max_retries: int | None = None, refresh: int | None = None):
        self.route, self.refresh_button, self.control_after_refresh = route, refresh_button, control_after_refresh
        self.timeout, self.max_retries, self.refresh = timeout, max_retries, refresh

    def as_dict(self) -> dict[str, Any]:
        return _pruned({"route": self.route, "refresh_button": self.refresh_button,
                        "control_after_refresh": self.control_after_refresh, "timeout": self.timeout,
                        "max_retries": self.max_retries, "refresh": self.refresh})


class _ComfyType(ABC):
    Type: Any = Any
    io_type: str = ""


class _IO:
    """Base of inputs and outputs; `Parent` is the type class it belongs to (set by `comfytype`)."""

    Parent: type[_ComfyType] = _ComfyType

    @property
    def io_type(self) -> str:
        return self.Parent.io_type

    def get_io_type(self) -> str:
        return self.io_type

    def validate(self) -> None:
        """Hook for types with constraints of their own."""


class Input(_IO):
    """A socket input (a link from another node)."""

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, extra_dict: dict[str, Any] | None = None, raw_link: bool | None = None):
        self.id, self.display_name, self.optional, self.tooltip = id, display_name, optional, tooltip
        self.lazy, self.extra_dict, self.raw_link = lazy, extra_dict or {}, raw_link

    def as_dict(self) -> dict[str, Any]:
        return _pruned({"display_name": self.display_name, "tooltip": self.tooltip, "lazy": self.lazy,
                        "rawLink": self.raw_link}) | _pruned(self.extra_dict)

    def get_all(self) -> list[Input]:
        return [self]


class WidgetInput(Input):
    """An input the frontend can also show as a widget (a constant value)."""

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                 lazy: bool | None = None, default: Any = None, socketless: bool | None = None,
                 widget_type: str | None = None, force_input: bool | None = None,
                 extra_dict: dict[str, Any] | None = None, raw_link: bool | None = None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict, raw_link)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | _pruned({"default": self.default, "socketless": self.socketless,
                                            "widgetType": self.widget_type, "forceInput": self.force_input})

    def get_io_type(self) -> str:
        return self.widget_type or super().get_io_type()


class Output(_IO):
    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,
                 is_output_list: bool = False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list


class ComfyTypeI(_ComfyType):
    """A type with inputs only."""

    class Input(Input):
        pass


class ComfyTypeIO(ComfyTypeI):
    """A type with inputs and outputs (every socket type)."""

    class Output(Output):
        pass


def comfytype(io_type: str, **_: Any):
    """Class decorator binding `io_type` to a type class; its `Input`/`Output` become subclasses that know it."""
    def decorate(cls: type) -> type:
        if not issubclass(cls, _ComfyType):
            cls = type(cls.__name__, (cls, ComfyTypeIO), {"__module__": cls.__module__, "__doc__": cls.__doc__})
        cls.io_type = io_type
        for slot in ("Input", "Output"):
            inner = getattr(cls, slot, None)
            if inner is not None:  # a subclass per type, so the shared base classes keep no Parent
                setattr(cls, slot, type(slot, (inner,), {"Parent": cls, "__module__": cls.__module__,
                                                         "__qualname__": f"{cls.__qualname__}.{slot}"}))
        return cls
    return decorate


def Custom(io_type: str) -> type[ComfyTypeIO]:
    """A socket type of a pack's own (`io.Custom("MY_TYPE").Input("x")`)."""
    return comfytype(io_type)(type(f"Custom_{io_type}", (ComfyTypeIO,), {"__module__": __name__}))


@comfytype(io_type="BOOLEAN")
class Boolean(ComfyTypeIO):
    Type = bool

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: bool | None = None,
                     label_on: str | None = None, label_off: str | None = None, socketless: bool | None = None,
                     force_input: bool | None = None, extra_dict: dict | None = None, raw_link: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.label_on, self.label_off = label_on, label_off

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _pruned({"label_on": self.label_on, "label_off": self.label_off})


def _display(mode: NumberDisplay | str | None) -> str | None:
    return mode.value if isinstance(mode, NumberDisplay) else mode


@comfytype(io_type="INT")
class Int(ComfyTypeIO):
    Type = int

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: int | None = None,
                     min: int | None = None, max: int | None = None, step: int | None = None,
                     control_after_generate: bool | None = None, display_mode: NumberDisplay | None = None,
                     socketless: bool | None = None, force_input: bool | None = None, extra_dict: dict | None = None,
                     raw_link: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate, self.display_mode = control_after_generate, display_mode

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _pruned({"min": self.min, "max": self.max, "step": self.step,
                                                "control_after_generate": self.control_after_generate,
                                                "display": _display(self.display_mode)})


@comfytype(io_type="FLOAT")
class Float(ComfyTypeIO):
    Type = float

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: float | None = None,
                     min: float | None = None, max: float | None = None, step: float | None = None,
                     round: float | None = None, display_mode: NumberDisplay | None = None,
                     socketless: bool | None = None, force_input: bool | None = None, extra_dict: dict | None = None,
                     raw_link: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.min, self.max, self.step, self.round, self.display_mode = min, max, step, round, display_mode

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _pruned({"min": self.min, "max": self.max, "step": self.step,
                                                "round": self.round, "display": _display(self.display_mode)})


@comfytype(io_type="STRING")
class String(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, multiline: bool = False,
                     placeholder: str | None = None, default: str | None = None,
                     dynamic_prompts: bool | None = None, socketless: bool | None = None,
                     force_input: bool | None = None, extra_dict: dict | None = None, raw_link: bool | None = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input,
                             extra_dict, raw_link)
            self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _pruned({"multiline": self.multiline, "placeholder": self.placeholder,
                                                "dynamicPrompts": self.dynamic_prompts})


def _enum_value(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value


@comfytype(io_type="COMBO")
class Combo(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        """A dropdown; `options` may be a list or an Enum class (its values are the choices)."""

        multiselect = False

        def __init__(self, id: str, options: list[Any] | type[Enum] | None = None, display_name: str | None = None,
                     optional: bool = False, tooltip: str | None = None, lazy: bool | None = None,
                     default: Any = None, control_after_generate: bool | None = None,
                     upload: UploadType | None = None, image_folder: FolderType | None = None,
                     remote: RemoteOptions | None = None, socketless: bool | None = None,
                     extra_dict: dict | None = None, raw_link: bool | None = None):
            if isinstance(options, type) and issubclass(options, Enum):
                options = [member.value for member in options]
            super().__init__(id, display_name, optional, tooltip, lazy, _enum_value(default), socketless, None,
                             None, extra_dict, raw_link)
            self.options, self.control_after_generate = options, control_after_generate
            self.upload, self.image_folder, self.remote = upload, image_folder, remote

        def as_dict(self) -> dict[str, Any]:
            upload = {self.upload.value: True} if self.upload is not None else {}
            return super().as_dict() | _pruned({
                "multiselect": self.multiselect, "options": self.options,
                "control_after_generate": self.control_after_generate, **upload,
                "image_folder": _enum_value(self.image_folder),
                "remote": self.remote.as_dict() if self.remote else None})

    class Output(Output):
        def __init__(self, id: str | None = None, display_name: str | None = None, options: list | None = None,
                     tooltip: str | None = None, is_output_list: bool = False):
            super().__init__(id, display_name, tooltip, is_output_list)
            self.options = options if options is not None else []


@comfytype(io_type="COMBO")
class MultiCombo(ComfyTypeI):
    """A dropdown where several choices can be picked; the value is the list of picked choices."""

    Type = list

    class Input(Combo.Input):
        multiselect = True

        def __init__(self, id: str, options: list[Any], display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, lazy: bool | None = None, default: list | None = None,
                     placeholder: str | None = None, chip: bool | None = None,
                     control_after_generate: bool | None = None, socketless: bool | None = None,
                     extra_dict: dict | None = None, raw_link: bool | None = None):
            super().__init__(id, options, display_name, optional, tooltip, lazy, default, control_after_generate,
                             socketless=socketless, extra_dict=extra_dict, raw_link=raw_link)
            self.placeholder, self.chip = placeholder, chip

        def as_dict(self) -> dict[str, Any]:
            return super().as_dict() | _pruned({"multi_select": True, "placeholder": self.placeholder,
                                                "chip": self.chip})


def _socket(io_type: str, name: str) -> type[ComfyTypeIO]:
    return comfytype(io_type)(type(name, (ComfyTypeIO,), {"__module__": __name__, "__qualname__": name}))


Image = _socket("IMAGE", "Image")
Mask = _socket("MASK", "Mask")
Latent = _socket("LATENT", "Latent")
Conditioning = _socket("CONDITIONING", "Conditioning")
Sampler = _socket("SAMPLER", "Sampler")
Sigmas = _socket("SIGMAS", "Sigmas")
Noise = _socket("NOISE", "Noise")
Guider = _socket("GUIDER", "Guider")
Model = _socket("MODEL", "Model")
Clip = _socket("CLIP", "Clip")
Vae = _socket("VAE", "Vae")
ControlNet = _socket("CONTROL_NET", "ControlNet")
ClipVision = _socket("CLIP_VISION", "ClipVision")
ClipVisionOutput = _socket("CLIP_VISION_OUTPUT", "ClipVisionOutput")
StyleModel = _socket("STYLE_MODEL", "StyleModel")
Gligen = _socket("GLIGEN", "Gligen")
UpscaleModel = _socket("UPSCALE_MODEL", "UpscaleModel")
LatentOperation = _socket("LATENT_OPERATION", "LatentOperation")
Hooks = _socket("HOOKS", "Hooks")
Audio = _socket("AUDIO", "Audio")
Video = _socket("VIDEO", "Video")
Photomaker = _socket("PHOTOMAKER", "Photomaker")
AnyType = _socket("*", "AnyType")


@comfytype(io_type="COMFY_MULTITYPED_V3")
class MultiType(ComfyTypeI):
    """An input accepting several socket types; `id` may be another input whose options (and type) it takes."""

    Type = Any

    class Input(Input):
        def __init__(self, id: str | Input, types: list[type[_ComfyType] | _ComfyType],
                     display_name: str | None = None, optional: bool = False, tooltip: str | None = None,
                     extra_dict: dict | None = None, raw_link: bool | None = None):
            self.input_override = id if isinstance(id, Input) else None
            if self.input_override is not None:
                base = self.input_override
                super().__init__(base.id, base.display_name, base.optional, base.tooltip, base.lazy,
                                 base.extra_dict, base.raw_link)
            else:
                super().__init__(id, display_name, optional, tooltip, None, extra_dict, raw_link)
            self.types = types

        def get_io_type(self) -> str:
            names = [self.input_override.get_io_type()] if self.input_override is not None else []
            names += [t.io_type for t in self.types]
            return ",".join(dict.fromkeys(names))  # ComfyUI's comma union, duplicates dropped

        def as_dict(self) -> dict[str, Any]:
            return self.input_override.as_dict() if self.input_override is not None else super().as_dict()


class Hidden(str, Enum):
    """Values the executor supplies instead of the prompt (`cls.hidden.<name>` inside `execute`)."""

    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    """The hidden values of one call; names the schema did not ask for read as None."""

    def __init__(self, **values: Any):
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        return None

    @classmethod
    def from_kinds(cls, values: dict[str, Any]) -> HiddenHolder:
        """From {"UNIQUE_ID": ..., "PROMPT": ...} (the executor's names) to attributes (`unique_id`, `prompt`)."""
        return cls(**{Hidden(kind).name: value for kind, value in values.items()})


@dataclass
class Schema:
    """Everything a V3 node declares: its id, labels, inputs, outputs, hidden values and flags."""

    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list[Input] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    hidden: list[Hidden] = field(default_factory=list)
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def finalize(self) -> Schema:
        """Add the hidden values the flags imply (output nodes get the prompt for image metadata, API nodes their
        keys) and give outputs without an id one; returns self."""
        self.inputs, self.outputs, self.hidden = list(self.inputs or []), list(self.outputs or []), list(self.hidden or [])
        implied = ([Hidden.auth_token_comfy_org, Hidden.api_key_comfy_org] if self.is_api_node else []) + (
            [Hidden.prompt, Hidden.extra_pnginfo] if self.is_output_node else [])
        self.hidden += [h for h in implied if h not in self.hidden]
        for index, output in enumerate(self.outputs):
            if output.id is None:
                output.id = f"_{index}_{output.io_type}_"
        return self

    def validate(self) -> None:
        """Input and output ids must be unique, within and across the two lists (ComfyUI's rule)."""
        input_ids = [i.id for inp in self.inputs for i in inp.get_all()]
        output_ids = [o.id for o in self.outputs]
        issues = [f"{kind} ids must be unique, but {sorted(k for k, n in Counter(ids).items() if n > 1)} are not"
                  for kind, ids in (("Input", input_ids), ("Output", output_ids)) if len(set(ids)) != len(ids)]
        shared = set(input_ids) & set(output_ids)
        if shared:
            issues.append(f"ids must be unique between inputs and outputs, but {sorted(shared)} are not")
        if issues:
            raise ValueError(f"node {self.node_id!r}: " + "; ".join(issues))
        for item in [*self.inputs, *self.outputs]:
            item.validate()

    def v1_inputs(self) -> dict[str, dict[str, Any]]:
        """INPUT_TYPES: required/optional as `(io_type, options)`, hidden as V1's bare kind strings."""
        spec: dict[str, dict[str, Any]] = {"required": {}}
        for inp in self.inputs:
            spec.setdefault("optional" if inp.optional else "required", {})[inp.id] = (inp.get_io_type(),
                                                                                        inp.as_dict())
        if self.hidden:
            spec["hidden"] = {h.name: h.value for h in self.hidden}
        return spec


class ComfyNode:
    """Base class of V3 nodes. Subclasses define `define_schema` and `execute` (classmethods, `execute` may be
    async) and optionally `validate_inputs`, `fingerprint_inputs` and `check_lazy_status`."""

    hidden: HiddenHolder | None = None  # set on the per-call class the executor runs

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs: Any) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs: Any) -> bool | str:
        """V1's VALIDATE_INPUTS: True, or an error message."""
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs: Any) -> Any:
        """V1's IS_CHANGED: the node re-runs when this value changes (NaN: always)."""
        raise NotImplementedError

    @classmethod
    def check_lazy_status(cls, **kwargs: Any) -> list[str]:
        """The lazy inputs needed now; None values are inputs not evaluated yet."""
        return [name for name, value in kwargs.items() if value is None]


class _UIOutput(ABC):
    """Something a node shows in the frontend (`NodeOutput(ui=...)`): `as_dict()` gives the `ui` mapping."""

    @abstractmethod
    def as_dict(self) -> dict[str, Any]:
        ...


class NodeOutput:
    """What `execute` returns: the output values in order, plus optional `ui`, `expand` (a GraphBuilder graph;
    needs `Schema.enable_expand`) and `block_execution` (a message: downstream nodes are blocked)."""

    def __init__(self, *args: Any, ui: _UIOutput | dict | None = None, expand: dict | None = None,
                 block_execution: str | None = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self) -> tuple[Any, ...] | None:
        return self.args or None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeOutput:
        """From a V1-style `{"result": ..., "ui": ..., "expand": ...}` dict."""
        result = data.get("result", ())
        if isinstance(result, ExecutionBlocker):
            return cls(block_execution=result.message)
        return cls(*result, ui=data.get("ui"), expand=data.get("expand"))

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


__all__ = [
    "AnyType",
    "Audio",
    "Boolean",
    "Clip",
    "ClipVision",
    "ClipVisionOutput",
    "Combo",
    "ComfyNode",
    "ComfyTypeI",
    "ComfyTypeIO",
    "Conditioning",
    "ControlNet",
    "Custom",
    "Float",
    "FolderType",
    "Gligen",
    "Guider",
    "Hidden",
    "HiddenHolder",
    "Hooks",
    "Image",
    "Input",
    "Int",
    "Latent",
    "LatentOperation",
    "Mask",
    "Model",
    "MultiCombo",
    "MultiType",
    "NodeOutput",
    "Noise",
    "NumberDisplay",
    "Output",
    "Photomaker",
    "RemoteOptions",
    "Sampler",
    "Schema",
    "Sigmas",
    "String",
    "StyleModel",
    "UploadType",
    "UpscaleModel",
    "Vae",
    "Video",
    "WidgetInput",
    "comfytype",
]
