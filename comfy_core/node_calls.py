"""Calling one node the way ComfyUI does: list mapping of inputs, ExecutionBlockers, and merging the per-call
results (tuples, `{"ui", "result", "expand"}` dicts, blockers) into per-slot output lists.

ComfyUI passes every input as a list; without `INPUT_IS_LIST` the function is called once per index (shorter lists
repeat their last item), with it once with the whole lists. A call whose inputs hold an ExecutionBlocker is not
made: the blocker is its result, and it becomes every output of that call.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from .cache import CachedResult
from .graph_utils import ExecutionBlocker


class NodeCall(NamedTuple):
    """One mapped call's return value, split into ComfyUI's parts."""

    values: Any  # tuple of outputs (links into `expand` for an expanding call), or None
    ui: dict[str, Any] | None
    expand: dict[str, Any] | None


def split_call(result: Any, n_out: int) -> NodeCall:
    if isinstance(result, ExecutionBlocker):
        return NodeCall((result,) * n_out, None, None)
    if isinstance(result, dict):
        values = result.get("result", ())
        if isinstance(values, ExecutionBlocker):
            values = (values,) * n_out
        return NodeCall(values, result.get("ui"), result.get("expand"))
    return NodeCall(result, None, None)


def format_inputs(inputs: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Inputs as execution_error's `current_inputs` shows them: plain values kept, anything else as str()."""
    keep = (int, float, str, bool, type(None))
    return {k: [v if isinstance(v, keep) else str(v) for v in vs] for k, vs in inputs.items()}


def merge_ui(uis: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The UI dicts of every call merged key by key (lists concatenated), None when there were none."""
    if not uis:
        return None
    merged = {k: list(v) for k, v in uis[0].items()}
    for ui in uis[1:]:
        for key in merged:
            merged[key] += list(ui.get(key, []))
    return merged


def first_blocker(kwargs: dict[str, Any], whole_lists: bool) -> ExecutionBlocker | None:
    for value in kwargs.values():
        for item in (value if whole_lists else (value,)):
            if isinstance(item, ExecutionBlocker):
                return item
    return None


def map_over_lists(fn: Callable[..., Any], inputs: dict[str, list[Any]], whole_lists: bool, ctx) -> list[Any]:
    """Call `fn` with ComfyUI's list semantics; `ctx` (the node's NodeContext) is an interrupt point before every
    call and learns each call's index (GraphBuilder id prefixes)."""
    if whole_lists:
        slices: Iterable[dict[str, Any]] = (inputs,)
    else:
        count = max(map(len, inputs.values()), default=0)
        if count <= 1:  # the usual case: one call
            slices = ({k: v[0] for k, v in inputs.items()},) if count else ({},)
        else:
            slices = ({k: v[min(i, len(v) - 1)] for k, v in inputs.items()} for i in range(count))
    results = []
    for index, kwargs in enumerate(slices):
        ctx.check_interrupted()
        blocker = first_blocker(kwargs, whole_lists)
        if blocker is not None:
            results.append(blocker)
            continue
        ctx.start_call(index)
        results.append(fn(**kwargs))
    return results


def merge_calls(cls: type, calls: list[NodeCall],
                resolve: Callable[[Any], list[Any] | None] | None = None) -> CachedResult:
    """Per output slot, the values of every call (OUTPUT_IS_LIST slots concatenate lists); `resolve` turns an
    expanding call's links into the linked node's output list."""
    n_out = len(getattr(cls, "RETURN_TYPES", ()))
    is_list = list(getattr(cls, "OUTPUT_IS_LIST", [False] * n_out))
    outputs: list[list[Any]] = [[] for _ in range(n_out)]
    for call in calls:
        values = call.values
        for i in range(n_out):
            value = values[i] if values is not None and i < len(values) else None
            resolved = resolve(value) if resolve is not None and call.expand is not None else None
            if resolved is not None:
                outputs[i] += resolved
            elif is_list[i] and isinstance(value, list):
                outputs[i] += value
            else:
                outputs[i].append(value)
    return CachedResult(outputs=outputs, ui=merge_ui([c.ui for c in calls if c.ui is not None]))
