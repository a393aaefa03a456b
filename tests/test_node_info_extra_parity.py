"""/object_info parity for the built-in nodes beyond the first 61 (ComfyUI's comfy_extras families).

Each `tests/data/object_info/<family>.json` holds real ComfyUI 0.3.64 entries copied from its full /object_info:
`{"nodes": {name: entry}, "file_list_inputs": [[node, input], ...]}`. Every node listed there must be registered by
the engine and report the same fields in the same order, except the prose (ours is our own words, present exactly
where ComfyUI has it) and combo lists of model files (they list the machine the dump was taken on).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fixtures_nodes import without_prose

from comfy_core.nodes import register_builtin_nodes
from comfy_core.nodes.registry import NodeRegistry

DATA = Path(__file__).parent / "data" / "object_info"


def _load() -> tuple[dict[str, dict[str, Any]], set[tuple[str, str]]]:
    nodes: dict[str, dict[str, Any]] = {}
    file_lists: set[tuple[str, str]] = set()
    for path in sorted(DATA.glob("*.json")):
        data = json.loads(path.read_text())
        nodes.update(data["nodes"])
        file_lists.update((node, field) for node, field in data.get("file_list_inputs", []))
    return nodes, file_lists


REFERENCE, FILE_LIST_INPUTS = _load()


@pytest.fixture(scope="module")
def registry() -> NodeRegistry:
    registry = NodeRegistry()
    register_builtin_nodes(registry)
    return registry


def _normalized(name: str, info: dict[str, Any]) -> dict[str, Any]:
    info = without_prose(info)
    for node, field in FILE_LIST_INPUTS:
        if node == name:
            for section in info["input"].values():
                if field in section:
                    section[field][0] = []
    return info


def test_reference_files_are_well_formed():
    for path in DATA.glob("*.json"):
        data = json.loads(path.read_text())
        assert set(data) <= {"nodes", "file_list_inputs"}, path.name
        assert data["nodes"], path.name


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_node_info_matches_comfyui(registry, name):
    assert name in registry, f"{name} is not registered"
    ours = registry.info(name)
    assert list(ours) == list(REFERENCE[name])  # same fields, same order
    assert _normalized(name, ours) == _normalized(name, REFERENCE[name])


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_prose_is_our_own(registry, name):
    ours, theirs = registry.info(name), REFERENCE[name]
    if theirs["description"]:
        assert ours["description"] != theirs["description"]
    for section, specs in theirs["input"].items():
        for key, spec in specs.items():
            if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("tooltip"):
                assert ours["input"][section][key][1]["tooltip"] != spec[1]["tooltip"], key
