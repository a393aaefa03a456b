"""Engine configuration: one msgspec Struct, loadable from JSON, with every root and budget in one place."""
from __future__ import annotations

from pathlib import Path

import msgspec


class EngineConfig(msgspec.Struct, kw_only=True):
    """Where files live, which device runs the models, and how much the engine may keep around.

    Relative paths are resolved against the current directory when the engine starts.
    """

    models_dir: str = "models"
    input_dir: str = "input"
    output_dir: str = "output"
    temp_dir: str = "temp"
    user_dir: str = "user"  # per-user workflows and settings (ComfyUI's user/ folder)
    multi_user: bool = False  # users picked by the Comfy-User header; otherwise everyone is "default"
    custom_nodes_dirs: list[str] = []
    # while loading custom nodes, provide ComfyUI's modules (folder_paths, comfy.*, nodes, server, comfy_execution)
    # under their top-level names when nothing else provides them (see comfy_core.compat)
    comfy_compat: bool = True
    # extra search folders per model kind, e.g. {"checkpoints": ["/data/sd"]} (like extra_model_paths.yaml)
    extra_model_paths: dict[str, list[str]] = {}
    annotators_dir: str | None = None  # HED and other preprocessor weights; default <models_dir>/annotators
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1" ...
    dtype: str = "auto"  # "auto" (fp16 on CUDA, fp32 on CPU) | "float32" | "float16" | "bfloat16"
    attention_backend: str = "auto"  # "auto" | "triton" | "sdpa" | "reference"
    cpu_model_budget_bytes: int = 12 * 1024**3
    gpu_model_budget_bytes: int = 0  # 0 = whatever the device has
    cache_max_entries: int = 512  # node output cache
    cache_mode: str = "lru"  # "lru" | "classic" (ComfyUI's default: only the last prompt's results) | "none"
    max_history: int = 10_000
    state_dir: str | None = None  # keep the queue and history here (SQLite) so they survive a restart
    save_metadata: bool = True  # PNG text chunks `prompt` / `workflow`
    # "none" | "latent2rgb" | "auto" (= latent2rgb, as ComfyUI) | "taesd" (models/vae_approx/taesd*_decoder.*)
    preview_method: str = "none"
    preview_size: int = 512

    @classmethod
    def from_file(cls, path: str | Path) -> "EngineConfig":
        return msgspec.json.decode(Path(path).read_bytes(), type=cls)

    def resolved(self, base: Path | None = None) -> "EngineConfig":
        """A copy with every directory made absolute (against `base` or the current directory)."""
        base = (base or Path.cwd()).resolve()

        def absolute(p: str) -> str:
            path = Path(p).expanduser()
            return str(path if path.is_absolute() else (base / path).resolve())

        return msgspec.structs.replace(
            self,
            models_dir=absolute(self.models_dir),
            input_dir=absolute(self.input_dir),
            output_dir=absolute(self.output_dir),
            temp_dir=absolute(self.temp_dir),
            user_dir=absolute(self.user_dir),
            custom_nodes_dirs=[absolute(p) for p in self.custom_nodes_dirs],
            extra_model_paths={k: [absolute(p) for p in v] for k, v in self.extra_model_paths.items()},
            annotators_dir=absolute(self.annotators_dir) if self.annotators_dir else None,
            state_dir=absolute(self.state_dir) if self.state_dir else None,
        )
