"""Input signatures: a digest of everything that determines a node's outputs.

signature(node) = hash(class_type, IS_CHANGED value, node id if the node is not idempotent, each declared input in
sorted order as its constant or as (upstream signature, slot)). Because upstream signatures are folded in, any change
upstream changes every signature downstream, and identical sub-graphs share one cache entry, as in ComfyUI.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import math
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec

from .graph import is_link
from .nodes.registry import NodeRegistry

log = logging.getLogger(__name__)

ALWAYS_RERUN = "nan"  # IS_CHANGED raised or returned NaN: never equal to anything, so the node always runs
CYCLE = "cycle"  # stands for the signature of a node a link leads back to


def _encode(value: Any) -> bytes:
    return msgspec.json.encode(value, enc_hook=repr)


def is_changed_value(cls: type, node_id: str, inputs: Mapping[str, Any]) -> Any:
    """Call IS_CHANGED like ComfyUI: constants by name, links as None, hidden UNIQUE_ID = id, PROMPT = {}."""
    fn = getattr(cls, "IS_CHANGED", None)
    if fn is None:
        return None
    spec = cls.INPUT_TYPES()
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    kwargs = {k: (None if is_link(v) else v) for k, v in inputs.items() if k in declared}
    for name, kind in spec.get("hidden", {}).items():
        kwargs[name] = {"UNIQUE_ID": node_id, "PROMPT": {}}.get(kind)
    try:
        if not _accepts(fn, kwargs):
            raise TypeError("IS_CHANGED does not accept every input")
        value = fn(**kwargs)
    except Exception:
        log.debug("IS_CHANGED of %s raised; the node always re-runs", cls, exc_info=True)
        return ALWAYS_RERUN
    if isinstance(value, float) and math.isnan(value):
        return ALWAYS_RERUN
    return value


def _accepts(fn, kwargs) -> bool:
    params = inspect.signature(fn).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return True
    return set(kwargs) <= {p.name for p in params}


def compute_signatures(prompt: Mapping[str, Any], node_ids: list[str], registry: NodeRegistry,
                       *, skip_broken: bool = False, known: Mapping[str, str] | None = None) -> dict[str, str]:
    """Signatures of `node_ids` and all their ancestors (validated nodes: no cycles, no dangling links).

    With `skip_broken`, a node whose signature cannot be computed (an unvalidated node with a bad link) is left
    out instead of raising: used to report which of *all* a prompt's nodes are cached. `known` signatures (of
    nodes already signed in this run) are reused, not recomputed; the result holds only the new ones.
    """
    signatures: dict[str, str] = dict(known or {})
    hidden_of: dict[str, dict] = {}

    def sign(node_id: str) -> str:
        """The digest of one node whose upstream nodes are all signed."""
        node = prompt[node_id]
        cls = registry.get(node["class_type"])
        changed = is_changed_value(cls, node_id, node["inputs"])
        if node["class_type"] not in hidden_of:
            hidden_of[node["class_type"]] = cls.INPUT_TYPES().get("hidden", {})
        hidden = hidden_of[node["class_type"]]
        parts: list[Any] = [node["class_type"], changed]
        if getattr(cls, "NOT_IDEMPOTENT", False) or "UNIQUE_ID" in hidden.values():
            parts.append(node_id)
        for name in sorted(node["inputs"]):
            value = node["inputs"][name]
            link = ["LINK", signatures.get(str(value[0]), CYCLE), value[1]] if is_link(value) else None
            parts.append([name, link or value])
        digest = hashlib.blake2b(_encode(parts), digest_size=16).hexdigest()
        if changed == ALWAYS_RERUN:
            digest += ":" + uuid.uuid4().hex  # unique per evaluation: never matches a cached entry
        return digest

    def visit(root: str) -> None:
        """Sign `root` after its upstream, depth first on an explicit stack (a 5000-node chain is deeper than
        Python's recursion limit). A link back to a node still being signed (a cycle, e.g. through an input the
        class does not declare, which validation skips) is signed as CYCLE: the executor reports the cycle."""
        stack, expanded = [root], set()
        while stack:
            node_id = stack[-1]
            if node_id in signatures:
                stack.pop()
                continue
            waiting = [str(v[0]) for v in prompt[node_id]["inputs"].values()  # KeyError: a link to a missing node
                       if is_link(v) and str(v[0]) not in signatures and str(v[0]) not in expanded]
            if waiting and node_id not in expanded:
                expanded.add(node_id)
                stack += waiting
                continue
            signatures[node_id] = sign(node_id)
            expanded.discard(node_id)
            stack.pop()

    for node_id in node_ids:
        try:
            visit(node_id)
        except (KeyError, IndexError, TypeError):
            if not skip_broken:
                raise
    return {k: v for k, v in signatures.items() if known is None or k not in known}
