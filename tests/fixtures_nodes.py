"""Shared node-test helpers: a NodeContext over fresh folders, and node_info entries with the prose masked.

`engine_config(tmp_path, **fields)` puts an engine's folders under tmp_path; `node_context(tmp_path, **fields)` builds what an engine gives its nodes (config, storage, model folders with every
kind's subfolder created) under tmp_path/{models,in,out,tmp}; `fields` are extra NodeContext fields (models, device,
dtype, ...). `without_prose(info)` replaces description/tooltip text by markers that keep *where* ComfyUI has prose
(ours is written in our own words), so two object_info entries can be compared field by field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from comfy_core.config import EngineConfig
from comfy_core.context import NodeContext
from comfy_core.folders import ModelFolders
from comfy_core.storage import Storage


def engine_config(tmp_path: Path, **fields: Any) -> EngineConfig:
    """An EngineConfig whose folders all live under tmp_path ({models,in,out,tmp}); `fields` override the rest."""
    return EngineConfig(models_dir=str(tmp_path / "models"), input_dir=str(tmp_path / "in"),
                        output_dir=str(tmp_path / "out"), temp_dir=str(tmp_path / "tmp"), **fields)


def node_context(tmp_path: Path, **fields: Any) -> NodeContext:
    cfg = engine_config(tmp_path)
    folders = ModelFolders(cfg.models_dir)
    folders.create_dirs()
    return NodeContext(config=cfg, storage=Storage(cfg.input_dir, cfg.output_dir, cfg.temp_dir), folders=folders,
                       **fields)


def without_prose(info: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a node_info entry: input tooltips -> "<tooltip>", a non-empty description -> "<description>",
    output tooltips -> "<tooltip>" (None, V3's "no tooltip", stays None)."""
    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: ("<tooltip>" if k == "tooltip" else walk(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    info = walk(info)
    info["description"] = "<description>" if info["description"] else ""
    if "output_tooltips" in info:
        info["output_tooltips"] = [None if t is None else "<tooltip>" for t in info["output_tooltips"]]
    return info
