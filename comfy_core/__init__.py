"""comfy-core: ComfyUI's Stable Diffusion engine as an embeddable library."""
from .config import EngineConfig
from .errors import ComfyCoreError, InputFileError, Interrupted, ModelLoadError, NodeExecutionError, PromptError

__version__ = "0.1.0"

__all__ = [
    "ComfyCoreError",
    "Engine",
    "EngineConfig",
    "InputFileError",
    "Interrupted",
    "ModelLoadError",
    "NodeExecutionError",
    "PromptError",
    "__version__",
]


def __getattr__(name: str):
    # Engine pulls in torch; keep `import comfy_core` light for tools that only need config or errors.
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(name)
