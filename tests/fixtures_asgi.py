"""Shared helpers for the ASGI tests and benches: real engines on temp dirs, test nodes, a real uvicorn server."""
from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from comfy_core import Engine, EngineConfig, context


def make_engine(root: Path, **overrides: Any) -> Engine:
    """An engine whose folders all live under `root` (not started), user data included: not the repo's ./user."""
    overrides.setdefault("user_dir", str(root / "user"))
    config = EngineConfig(models_dir=str(root / "models"), input_dir=str(root / "input"),
                          output_dir=str(root / "output"), temp_dir=str(root / "temp"), **overrides)
    engine = Engine(config)
    engine.register_nodes(asgi_nodes())
    return engine


def noise_jpeg(size: int = 64, seed: int = 0) -> bytes:
    """An incompressible JPEG (random pixels), to make preview frames of a predictable, non-trivial size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


class AsgiSteps:
    """Output node: `steps` progress updates (optionally with a preview frame each), then UI text."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 10**9}),
                             "steps": ("INT", {"default": 3, "min": 1, "max": 100000}),
                             "delay": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0}),
                             "preview_size": ("INT", {"default": 0, "min": 0, "max": 4096}),
                             "ui_bytes": ("INT", {"default": 0, "min": 0, "max": 10**8})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    def run(self, value, steps, delay, preview_size, ui_bytes):
        ctx = context.current()
        preview = noise_jpeg(preview_size, value) if preview_size else None
        for i in range(steps):
            if delay:
                time.sleep(delay)
            ctx.progress(i + 1, steps, preview)
        return {"ui": {"text": [str(value) + "x" * ui_bytes]}}


class AsgiFail:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 100})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    def run(self, value):
        raise ValueError(f"test failure {value}")


class Gate:
    """A node that runs until `release()` (or an interrupt): makes queue and reconnect tests deterministic."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Event()
        gate = self

        class AsgiGate:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {"default": 0, "min": 0, "max": 10**9})}}

            RETURN_TYPES = ()
            FUNCTION = "run"
            OUTPUT_NODE = True
            CATEGORY = "test"

            def run(self, value):
                ctx = context.current()
                gate.entered.set()
                while not gate.opened.wait(0.01):
                    ctx.check_interrupted()
                return {"ui": {"text": [str(value)]}}

        self.node_class = AsgiGate

    def release(self) -> None:
        self.opened.set()


def asgi_nodes() -> dict[str, type]:
    return {"AsgiSteps": AsgiSteps, "AsgiFail": AsgiFail}


def image_prompt(prefix: str = "asgi", width: int = 16, height: int = 8, color: int = 0xFF8000) -> dict[str, Any]:
    """EmptyImage -> SaveImage, with `_meta` titles as the frontend's API export writes them."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1,
                                                     "color": color}, "_meta": {"title": "Empty Image"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix},
              "_meta": {"title": "Save Image"}},
    }


def steps_prompt(value: int = 1, steps: int = 3, delay: float = 0.0, preview_size: int = 0,
                 ui_bytes: int = 0) -> dict[str, Any]:
    """One AsgiSteps output node: `steps` progress events (+ previews), then UI text of about `ui_bytes` bytes."""
    return {"1": {"class_type": "AsgiSteps", "inputs": {"value": value, "steps": steps, "delay": delay,
                                                       "preview_size": preview_size, "ui_bytes": ui_bytes}}}


def png_bytes(width: int = 8, height: int = 8, mode: str = "RGBA", color: Any = (10, 20, 30, 128), **text: str) -> bytes:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    out = io.BytesIO()
    Image.new(mode, (width, height), color).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve `app` with a real uvicorn on 127.0.0.1:<free port> in a thread; yields "http://127.0.0.1:<port>"."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
