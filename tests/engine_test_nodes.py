"""Small model-free nodes used to exercise validation and execution (ComfyUI-style V1 classes)."""
from __future__ import annotations

import time

from comfy_core import context


class AnyType(str):
    """ComfyUI custom-node idiom: an output/input type that matches everything."""

    def __ne__(self, other: object) -> bool:
        return False


ANY = AnyType("*")


class Number:
    CALLS: list = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -1000, "max": 1000})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, value):
        Number.CALLS.append(value)
        return (value,)


class Add:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"default": 0, "min": 0, "max": 100}), "b": ("INT,FLOAT",)},
                "optional": {"c": ("FLOAT", {"default": 0.0})}}

    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("sum",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, a, b, c=0.0):
        return (int(a + b + c),)


class Show:
    """Output node: records what it got as UI text."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}, "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT"}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    def run(self, value, unique_id=None, prompt=None):
        return {"ui": {"text": [str(value)], "node": [unique_id], "nodes_in_prompt": [len(prompt)]}}


class Choose:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mode": (["fast", "slow"],), "many": ([f"o{i}" for i in range(25)],)}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, mode, many):
        return (f"{mode}-{many}",)


class ShowText:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, text):
        return {"ui": {"text": [text]}}


class Fail:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        raise ValueError(f"cannot handle {value}")


class Slow:
    """Reports progress every step and honours interrupts through the node context."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "steps": ("INT", {"default": 5, "min": 1, "max": 10000}),
                             "delay": ("FLOAT", {"default": 0.01})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, steps, delay):
        ctx = context.current()
        for i in range(steps):
            time.sleep(delay)
            ctx.progress(i + 1, steps)
        return (value,)


class Split:
    """OUTPUT_IS_LIST: one input becomes a list of values."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"count": ("INT", {"default": 3, "min": 1, "max": 100})}}

    RETURN_TYPES = ("INT", "INT")
    OUTPUT_IS_LIST = (True, False)
    FUNCTION = "run"

    def run(self, count):
        return (list(range(count)), count)


class Total:
    """INPUT_IS_LIST: receives whole lists."""

    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"values": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, values):
        return (sum(values),)


class Even:
    """VALIDATE_INPUTS names `value`, so its min/max are not enforced (ComfyUI semantics)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"min": 0, "max": 10})}}

    @classmethod
    def VALIDATE_INPUTS(cls, value):
        if value is None:
            return True
        return True if value % 2 == 0 else f"{value} is odd"

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        return (value,)


class Explodes:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    @classmethod
    def VALIDATE_INPUTS(cls, value):
        raise RuntimeError("validator exploded")

    RETURN_TYPES = ("INT",)
    OUTPUT_NODE = True
    FUNCTION = "run"

    def run(self, value):
        return (value,)


class Anything:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"thing": (ANY,)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    def run(self, thing):
        return {"ui": {"text": [repr(thing)]}}


class Volatile:
    """IS_CHANGED returns NaN: always re-runs."""

    RUNS: list = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    @classmethod
    def IS_CHANGED(cls, value):
        return float("nan")

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        Volatile.RUNS.append(value)
        return (value,)


NODES = {cls.__name__: cls for cls in
         (Number, Add, Show, Choose, ShowText, Fail, Slow, Split, Total, Even, Explodes, Anything, Volatile)}
