"""Resources custom node packs ship for the frontend (ComfyUI's app/custom_node_manager.py): example workflow
templates and translations.

A pack is a folder under one of the custom node dirs. Its templates are the `.json` files in its subfolders whose
name contains `example` or `workflow`; its translations are `locales/<lang>/main.json` plus `nodeDefs.json`,
`commands.json` and `settings.json` (each under its own key), merged over all packs in name order.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

log = logging.getLogger(__name__)

EXTRA_LOCALE_FILES = ("nodeDefs.json", "commands.json", "settings.json")
_TEMPLATE_DIR_MARKERS = ("example", "workflow")


def _packs(custom_nodes_dirs: Iterable[str | Path]) -> list[Path]:
    packs = []
    for root in custom_nodes_dirs:
        root = Path(root)
        if root.is_dir():
            packs.extend(sorted(p for p in root.iterdir() if p.is_dir()))
    return packs


def template_dirs(pack: Path) -> list[Path]:
    """The pack's workflow template folders (matched case-sensitively, like ComfyUI's glob on Linux)."""
    return sorted(d for d in pack.iterdir() if d.is_dir() and any(m in d.name for m in _TEMPLATE_DIR_MARKERS))


def workflow_templates(custom_nodes_dirs: Iterable[str | Path]) -> dict[str, list[str]]:
    """GET /workflow_templates: {pack folder name: [template names without .json]}; packs without any are left out."""
    templates: dict[str, list[str]] = {}
    for pack in _packs(custom_nodes_dirs):
        names = {f.stem for d in template_dirs(pack) for f in d.glob("*.json") if f.is_file()}
        if names:
            templates.setdefault(pack.name, []).extend(sorted(names))
    return templates


def merge_json(base: Any, update: Any) -> Any:
    """Recursive merge: objects merge key by key, lists concatenate, anything else is replaced by `update`."""
    if isinstance(base, dict) and isinstance(update, dict):
        merged = dict(base)
        for key, value in update.items():
            merged[key] = merge_json(merged[key], value) if key in merged else value
        return merged
    if isinstance(base, list) and isinstance(update, list):
        return base + update
    return update


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = msgspec.json.decode(path.read_bytes())
    except (msgspec.DecodeError, OSError) as exc:
        log.error("cannot load locale file %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def translations(custom_nodes_dirs: Iterable[str | Path]) -> dict[str, Any]:
    """GET /i18n: {lang: {...main.json keys, "nodeDefs": ..., "commands": ..., "settings": ...}} over all packs."""
    merged: dict[str, Any] = {}
    for pack in _packs(custom_nodes_dirs):
        locales = pack / "locales"
        if not locales.is_dir():
            continue
        for lang_dir in sorted(d for d in locales.iterdir() if d.is_dir()):
            strings = _load(lang_dir / "main.json")
            for extra in EXTRA_LOCALE_FILES:
                data = _load(lang_dir / extra)
                if data:
                    strings[extra.removesuffix(".json")] = data
            current = merged.setdefault(lang_dir.name, {})
            if strings:
                merged[lang_dir.name] = merge_json(current, strings)
    return merged
