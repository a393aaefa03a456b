"""Node registry: ComfyUI-style node classes by name, and their `/object_info` description.

A node class is what ComfyUI calls a V1 node: `INPUT_TYPES()` classmethod, `RETURN_TYPES`, `FUNCTION`, `CATEGORY`,
and optionally `RETURN_NAMES`, `OUTPUT_NODE`, `INPUT_IS_LIST`, `OUTPUT_IS_LIST`, `IS_CHANGED`, `VALIDATE_INPUTS`,
`check_lazy_status`, `NOT_IDEMPOTENT`, `DESCRIPTION`, `OUTPUT_TOOLTIPS`, `DEPRECATED`, `EXPERIMENTAL`, `API_NODE`.
Custom node packages written for ComfyUI register here unchanged.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    """Tuples become lists, as aiohttp's JSON encoding of INPUT_TYPES does."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def node_info(name: str, cls: type, display_name: str | None = None) -> dict[str, Any]:
    """The `/object_info` entry of one V1 node class, with ComfyUI's field order."""
    inputs = cls.INPUT_TYPES()
    outputs = list(getattr(cls, "RETURN_TYPES", ()))
    info: dict[str, Any] = {
        "input": _jsonable(inputs),
        "input_order": {section: list(spec.keys()) for section, spec in inputs.items()},
        "output": outputs,
        "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(outputs))),
        "output_name": list(getattr(cls, "RETURN_NAMES", outputs)),
        "name": name,
        "display_name": display_name or name,
        "description": getattr(cls, "DESCRIPTION", ""),
        "python_module": getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"),
        "category": getattr(cls, "CATEGORY", "sd"),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
    }
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = list(cls.OUTPUT_TOOLTIPS)
    if getattr(cls, "DEPRECATED", False):
        info["deprecated"] = True
    if getattr(cls, "EXPERIMENTAL", False):
        info["experimental"] = True
    if hasattr(cls, "API_NODE"):
        info["api_node"] = cls.API_NODE
    if getattr(cls, "INFO_V3", False):
        return _as_v3_info(info, cls, display_name)
    return info


def _as_v3_info(info: dict[str, Any], cls: type, display_name: str | None) -> dict[str, Any]:
    """The entry as ComfyUI reports a V3 (schema) node: every flag present, tooltips per output (null if none),
    and `display_name` null unless the schema names one. Set `INFO_V3 = True` on nodes ComfyUI ships as V3."""
    outputs = info["output"]
    v3 = {key: info[key] for key in ("input", "input_order", "output", "output_is_list", "output_name")}
    if "hidden" in v3["input"]:  # V3 reports each hidden kind as a one-element array: {"unique_id": ["UNIQUE_ID"]}
        v3["input"] = {**v3["input"], "hidden": {k: v if isinstance(v, list) else [v]
                                                  for k, v in v3["input"]["hidden"].items()}}
    v3["output_tooltips"] = list(getattr(cls, "OUTPUT_TOOLTIPS", [None] * len(outputs)))
    v3["name"] = info["name"]
    v3["display_name"] = display_name or getattr(cls, "DISPLAY_NAME", None)
    for key in ("description", "python_module", "category", "output_node"):
        v3[key] = info[key]
    v3["deprecated"] = bool(getattr(cls, "DEPRECATED", False))
    v3["experimental"] = bool(getattr(cls, "EXPERIMENTAL", False))
    v3["api_node"] = bool(getattr(cls, "API_NODE", False))
    return v3


class NodeRegistry:
    """Node classes by name plus display names; one per engine (no global registry)."""

    def __init__(self) -> None:
        self.classes: dict[str, type] = {}
        self.display_names: dict[str, str] = {}
        self.builtin: set[str] = set()
        self.web_dirs: dict[str, Path] = {}
        self.custom_routes: list[Any] = []  # aiohttp-style routes custom nodes declared (compat.server.RouteDef)

    def register(
        self,
        class_mappings: Mapping[str, type],
        display_names: Mapping[str, str] | None = None,
        *,
        builtin: bool = False,
    ) -> list[str]:
        """Add node classes; a custom node cannot replace a built-in one (ComfyUI ignores such names too)."""
        added = []
        for name, cls in class_mappings.items():
            if name in self.builtin and not builtin:
                log.warning("custom node %r ignored: it would replace a built-in node", name)
                continue
            self.classes[name] = cls
            added.append(name)
            if builtin:
                self.builtin.add(name)
        for name, display in (display_names or {}).items():
            if name in added:
                self.display_names[name] = display
        return added

    def __contains__(self, name: object) -> bool:
        return name in self.classes

    def get(self, name: str) -> type | None:
        return self.classes.get(name)

    def info(self, name: str) -> dict[str, Any]:
        return node_info(name, self.classes[name], self.display_names.get(name))

    def all_info(self) -> dict[str, dict[str, Any]]:
        """Every node's info; a node whose INPUT_TYPES raises is left out and logged, as ComfyUI does."""
        result = {}
        for name in self.classes:
            try:
                result[name] = self.info(name)
            except Exception:  # a broken custom node must not break /object_info
                log.exception("object_info failed for node %r", name)
        return result

    def load_custom_nodes(self, folders: Iterable[str | Path], *, comfy_compat: bool = True) -> list[str]:
        """Import every custom node module/package in `folders`; a failing one is logged and skipped.

        With `comfy_compat`, ComfyUI's modules (`folder_paths`, `comfy.*`, `nodes`, `server`, `comfy_execution`)
        are made importable first, where nothing else provides them (see `comfy_core.compat`). Packs that use them
        at import time need the engine's `NodeContext` installed around this call (`Engine.__init__` does that).
        """
        entries = [entry for folder in map(Path, folders) if folder.is_dir()
                   for entry in sorted(folder.iterdir()) if _module_location(entry) is not None]
        if entries and comfy_compat:
            from ..compat import install

            install()
        elif entries:
            log.info("ComfyUI compatibility modules are off (EngineConfig.comfy_compat=False): custom node packs "
                     "that import folder_paths, comfy, nodes, server or comfy_execution will be skipped")
        return [entry.name for entry in entries if self._load_one(entry, comfy_compat)]

    def _load_one(self, entry: Path, comfy_compat: bool) -> bool:
        module_name, location, search = _module_location(entry)
        unique = f"comfy_core_custom_nodes.{id(self):x}.{module_name}"
        try:
            spec = importlib.util.spec_from_file_location(unique, location, submodule_search_locations=search)
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module
            spec.loader.exec_module(module)
            mappings = _pack_mappings(module, comfy_compat)
        except ModuleNotFoundError as exc:
            sys.modules.pop(unique, None)
            _log_missing_module(entry, exc, comfy_compat)
            return False
        except Exception:
            sys.modules.pop(unique, None)
            log.exception("custom node package %s failed to load; skipped", entry)
            return False
        builtin_classes = {self.classes[name] for name in self.builtin}
        for cls in mappings.values():
            if cls not in builtin_classes:  # a pack may list `nodes.KSampler` itself: keep the built-in's module
                cls.RELATIVE_PYTHON_MODULE = f"custom_nodes.{module_name}"
        self.register(mappings, getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None))
        web = getattr(module, "WEB_DIRECTORY", None)
        if web:
            self.web_dirs[module_name] = (entry if entry.is_dir() else entry.parent) / web
        return True


def _pack_mappings(module: Any, comfy_compat: bool) -> dict[str, type]:
    """A pack's node classes: its NODE_CLASS_MAPPINGS, else what its V3 `comfy_entrypoint()` lists. V3 classes
    (`comfy_api.latest.io.ComfyNode`) run through the compat adapter, which needs `comfy_compat`."""
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if mappings is None and hasattr(module, "comfy_entrypoint") and comfy_compat:
        from ..compat.comfy_api.v1_adapter import entrypoint_nodes

        return entrypoint_nodes(module.comfy_entrypoint)
    if mappings is None:
        raise AttributeError(f"module {module.__name__!r} has no NODE_CLASS_MAPPINGS"
                             + (" (V3 comfy_entrypoint needs EngineConfig.comfy_compat)"
                                if hasattr(module, "comfy_entrypoint") else ""))
    if comfy_compat:
        from ..compat.comfy_api.v1_adapter import adapt, is_v3_node

        return {name: adapt(cls)[1] if is_v3_node(cls) else cls for name, cls in mappings.items()}
    return mappings


def _module_location(entry: Path) -> tuple[str, Path, list[str] | None] | None:
    """(module name, file to execute, package search path) of a custom node entry; None if it is not one."""
    if entry.name.endswith(".disabled") or entry.name == "__pycache__" or entry.name.startswith("."):
        return None
    if entry.is_dir():
        init = entry / "__init__.py"
        return (entry.name, init, [str(entry)]) if init.is_file() else None
    if entry.suffix == ".py":
        return entry.stem, entry, None
    return None


def _log_missing_module(entry: Path, exc: ModuleNotFoundError, comfy_compat: bool) -> None:
    """One clear line when a pack needs a ComfyUI module; the traceback otherwise."""
    from ..compat import TOP_LEVEL_NAMES

    missing = exc.name or ""
    if missing.partition(".")[0] not in TOP_LEVEL_NAMES:
        log.error("custom node package %s failed to load (missing module %r); skipped", entry, missing,
                  exc_info=exc)
    elif comfy_compat:
        log.warning("custom node package %s skipped: it imports ComfyUI's %r, which comfy-core does not provide",
                    entry, missing)
    else:
        log.warning("custom node package %s skipped: it imports ComfyUI's %r and EngineConfig.comfy_compat is "
                    "off", entry, missing)
