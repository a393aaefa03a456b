"""V3 node classes (`io.ComfyNode`) as V1 node classes the registry and executor run unchanged.

`adapt(node)` builds a class with INPUT_TYPES (from `define_schema()`, called afresh each time so dynamic choices
stay current), RETURN_TYPES/RETURN_NAMES/OUTPUT_IS_LIST/OUTPUT_TOOLTIPS, the flags, `INFO_V3 = True` (so
`/object_info` reports the V3 shape) and a FUNCTION that calls `execute` on a per-call subclass of the V3 class whose
`hidden` holds the call's hidden values (ComfyUI runs a clone the same way, so nodes never share them).
`fingerprint_inputs`, `validate_inputs` and `check_lazy_status` become IS_CHANGED, VALIDATE_INPUTS and
check_lazy_status, only where the class overrides them (the executor treats their presence as meaningful).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import inspect
import logging
from collections.abc import Awaitable
from typing import Any

from ...errors import ComfyCoreError
from ...graph_utils import ExecutionBlocker
from .latest._io import Combo, ComfyNode, HiddenHolder, NodeOutput, Schema, _UIOutput

log = logging.getLogger(__name__)


class NodeDefinitionError(ComfyCoreError, TypeError):
    """A V3 node class that cannot be registered, or a node output that breaks its schema's rules."""


def is_v3_node(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, ComfyNode)


def run_sync(value: Any) -> Any:
    """`value`, awaited when it is awaitable; in a fresh thread (same contextvars) when a loop already runs here."""
    if not inspect.isawaitable(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_awaited(value))
    context = contextvars.copy_context()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(context.run, asyncio.run, _awaited(value)).result()


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value


def _overrides(node: type[ComfyNode], name: str) -> bool:
    def function(owner: type) -> Any:
        attr = getattr(owner, name)
        return getattr(attr, "__func__", attr)
    return function(node) is not function(ComfyNode)


def schema_of(node: type[ComfyNode]) -> Schema:
    """The finalized, validated schema; a class without one is a NodeDefinitionError."""
    if not _overrides(node, "define_schema") or not _overrides(node, "execute"):
        raise NodeDefinitionError(f"V3 node {node.__name__} must define both define_schema() and execute()")
    schema = node.define_schema()
    if not isinstance(schema, Schema):
        raise NodeDefinitionError(f"{node.__name__}.define_schema() returned {type(schema).__name__}, not io.Schema")
    schema.finalize().validate()
    return schema


def _accepted(fn: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments `fn` takes: all with **kwargs, else those it names (a pack's hook need not list every input)."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in {p.name for p in params}}


class _Calls:
    """Turns the executor's keyword arguments (inputs plus hidden values by name) into a V3 call."""

    def __init__(self, node: type[ComfyNode], schema: Schema):
        self.node, self.schema = node, schema
        self.hidden: dict[str, str] = schema.v1_inputs().get("hidden", {})  # argument name -> kind

    def split(self, kwargs: dict[str, Any]) -> tuple[type[ComfyNode], dict[str, Any]]:
        """(a per-call subclass whose `hidden` holds this call's values, the remaining inputs)."""
        values = {kind: kwargs.get(name) for name, kind in self.hidden.items()}
        if self.schema.is_input_list:  # every argument arrives as a list then; a hidden value is one value
            values = {kind: value[0] if isinstance(value, list) and value else value for kind, value in values.items()}
        inputs = {k: v for k, v in kwargs.items() if k not in self.hidden}
        clone = type(self.node.__name__, (self.node,), {"hidden": HiddenHolder.from_kinds(values),
                                                         "__module__": self.node.__module__})
        return clone, inputs

    def hook(self, name: str, kwargs: dict[str, Any]) -> Any:
        clone, inputs = self.split(kwargs)
        fn = getattr(clone, name)
        return run_sync(fn(**_accepted(fn, inputs)))


def to_v1_result(value: Any, schema: Schema, node_name: str) -> dict[str, Any]:
    """A V3 return value (NodeOutput, tuple, V1 dict, None or ExecutionBlocker) as V1's {"result", "ui", "expand"}."""
    if value is None:
        value = NodeOutput()
    elif isinstance(value, tuple):
        value = NodeOutput(*value)
    elif isinstance(value, dict):
        value = NodeOutput.from_dict(value)
    elif isinstance(value, ExecutionBlocker):
        value = NodeOutput(block_execution=value.message)
    elif not isinstance(value, NodeOutput):
        raise NodeDefinitionError(f"{node_name}.execute() returned {type(value).__name__}; expected io.NodeOutput")
    if value.expand is not None and not schema.enable_expand:
        raise NodeDefinitionError(f"{node_name} returned an expansion but its schema does not set enable_expand=True")
    result: dict[str, Any] = {"result": ExecutionBlocker(value.block_execution)
                              if value.block_execution is not None else value.args}
    ui = value.ui.as_dict() if isinstance(value.ui, _UIOutput) else value.ui
    if ui is not None:  # plain lists and dicts: SavedResult is a dict subclass, `animated` a tuple
        result["ui"] = {key: [dict(v) if isinstance(v, dict) else v for v in values] for key, values in ui.items()}
    if value.expand is not None:
        result["expand"] = value.expand
    return result


def _multiselect_check(schema: Schema, values: dict[str, Any]) -> str | None:
    """ComfyUI's per-item check of multi-select combo values (the generic combo check expects one choice)."""
    for inp in schema.inputs:
        if not (isinstance(inp, Combo.Input) and inp.multiselect) or values.get(inp.id) is None:
            continue
        picked = values[inp.id] if isinstance(values[inp.id], list) else [values[inp.id]]
        wrong = [v for v in picked if v not in (inp.options or [])]
        if wrong:
            return f"{inp.id}: {wrong} not in {inp.options}"
    return None


def _validate_inputs(node: type[ComfyNode], schema: Schema, calls: _Calls) -> Any:
    """VALIDATE_INPUTS with the signature ComfyUI's validation reads: the names `validate_inputs` takes (their
    built-in checks are skipped, as in ComfyUI) plus the multi-select combos, which are checked here."""
    multiselect = [i.id for i in schema.inputs if isinstance(i, Combo.Input) and i.multiselect]
    custom = _overrides(node, "validate_inputs")
    params = list(inspect.signature(node.validate_inputs).parameters.values()) if custom else []
    named = [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    keyword = inspect.Parameter.KEYWORD_ONLY
    signature = inspect.Signature(
        [inspect.Parameter(name, keyword, default=None) for name in dict.fromkeys(named + multiselect)]
        + [p for p in params if p.kind == p.VAR_KEYWORD])

    def VALIDATE_INPUTS(**kwargs: Any) -> bool | str:
        problem = _multiselect_check(schema, kwargs)
        if problem is not None:
            return problem
        if not custom:
            return True
        wanted = kwargs if any(p.kind == p.VAR_KEYWORD for p in params) else {k: kwargs[k] for k in named
                                                                                 if k in kwargs}
        return calls.hook("validate_inputs", wanted)

    VALIDATE_INPUTS.__signature__ = signature  # type: ignore[attr-defined]
    return staticmethod(VALIDATE_INPUTS)


def _execute_methods(node: type[ComfyNode], calls: _Calls) -> dict[str, Any]:
    """FUNCTION and the method it names: async when `execute` is (the executor awaits those)."""
    name = node.__name__

    def execute_v3(self, **kwargs: Any) -> dict[str, Any]:
        clone, inputs = calls.split(kwargs)
        return to_v1_result(clone.execute(**inputs), calls.schema, name)

    async def execute_v3_async(self, **kwargs: Any) -> dict[str, Any]:
        clone, inputs = calls.split(kwargs)
        return to_v1_result(await clone.execute(**inputs), calls.schema, name)

    if inspect.iscoroutinefunction(node.execute):
        return {"FUNCTION": "execute_v3_async", "execute_v3_async": execute_v3_async}
    return {"FUNCTION": "execute_v3", "execute_v3": execute_v3}


def adapt(node: type[ComfyNode]) -> tuple[str, type]:
    """(node id, V1 class) for a V3 node class; NodeDefinitionError if its schema is unusable."""
    schema = schema_of(node)
    calls = _Calls(node, schema)
    outputs = schema.outputs
    attrs: dict[str, Any] = {
        "__doc__": node.__doc__, "__module__": node.__module__, "V3_CLASS": node, "INFO_V3": True,
        "INPUT_TYPES": classmethod(lambda cls: schema_of(node).v1_inputs()),
        "RETURN_TYPES": tuple(o.io_type for o in outputs),
        "RETURN_NAMES": tuple(o.display_name or o.io_type for o in outputs),
        "OUTPUT_IS_LIST": tuple(bool(o.is_output_list) for o in outputs),
        "OUTPUT_TOOLTIPS": tuple(o.tooltip or None for o in outputs),
        "DISPLAY_NAME": schema.display_name, "CATEGORY": schema.category, "DESCRIPTION": schema.description,
        "OUTPUT_NODE": schema.is_output_node, "INPUT_IS_LIST": schema.is_input_list,
        "NOT_IDEMPOTENT": schema.not_idempotent, "DEPRECATED": schema.is_deprecated,
        "EXPERIMENTAL": schema.is_experimental, "API_NODE": schema.is_api_node,
        **_execute_methods(node, calls),
    }
    if _overrides(node, "fingerprint_inputs"):
        attrs["IS_CHANGED"] = classmethod(lambda cls, **kwargs: calls.hook("fingerprint_inputs", kwargs))
    if _overrides(node, "validate_inputs") or any(isinstance(i, Combo.Input) and i.multiselect
                                                   for i in schema.inputs):
        attrs["VALIDATE_INPUTS"] = _validate_inputs(node, schema, calls)
    if _overrides(node, "check_lazy_status"):
        attrs["check_lazy_status"] = lambda self, **kwargs: calls.hook("check_lazy_status", kwargs)
    return schema.node_id, type(node.__name__, (), attrs)


def entrypoint_nodes(entrypoint: Any) -> dict[str, type]:
    """A V3 pack's nodes by id: `comfy_entrypoint()` (sync or async), the extension's `on_load()`, then its
    `get_node_list()`, each class adapted. A class that cannot be adapted is logged and left out, not the pack."""
    extension = run_sync(entrypoint())
    on_load = getattr(extension, "on_load", None)
    if on_load is not None:
        run_sync(on_load())
    mappings: dict[str, type] = {}
    for node in run_sync(extension.get_node_list()) or ():
        try:
            if not is_v3_node(node):
                raise NodeDefinitionError(f"{node!r} is not an io.ComfyNode subclass")
            node_id, cls = adapt(node)
        except Exception:  # one broken node class must not hide the pack's others
            log.exception("V3 node %r skipped", getattr(node, "__name__", node))
            continue
        if node_id in mappings:
            log.warning("V3 node id %r listed twice; the later class wins", node_id)
        mappings[node_id] = cls
    return mappings
