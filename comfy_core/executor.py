"""Runs one validated prompt: dependency order from the outputs, cache lookups by input signature, list mapping,
hidden inputs, progress and interrupts, and ComfyUI's events and history record.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from . import context as node_context
from .cache import CachedResult, OutputCache
from .errors import Interrupted
from .events import (Event, Executed, Executing, ExecutionCached, ExecutionError, ExecutionInterrupted,
                     ExecutionStart, ExecutionSuccess, PreviewFrame, Progress, ProgressState, now_ms)
from .graph import _type_name, is_link
from .nodes.registry import NodeRegistry
from .signature import compute_signatures

log = logging.getLogger(__name__)


class RunRecord(msgspec.Struct):
    """What one execution produced: ComfyUI's history `outputs`/`status` plus the error, if any."""

    outputs: dict[str, dict[str, Any]]
    status_str: str
    completed: bool
    messages: list[list[Any]]
    error: ExecutionError | None = None
    interrupted: bool = False


class _NodeFailure(Exception):
    def __init__(self, node_id: str, exc: BaseException, inputs: dict[str, Any]):
        self.node_id, self.exc, self.inputs = node_id, exc, inputs


def execution_order(prompt: Mapping[str, Any], outputs: list[str], is_cached: Callable[[str], bool]) -> list[str]:
    """Post-order DFS from the outputs: outputs always, upstream nodes only while they are not cached."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str, root: bool) -> None:
        if node_id in seen or (not root and is_cached(node_id)):
            return
        seen.add(node_id)
        for value in prompt[node_id]["inputs"].values():
            if is_link(value):
                visit(str(value[0]), False)
        order.append(node_id)

    for output in outputs:
        visit(output, True)
    return order


def _format_inputs(inputs: dict[str, list[Any]]) -> dict[str, list[Any]]:
    keep = (int, float, str, bool, type(None))
    return {k: [v if isinstance(v, keep) else str(v) for v in vs] for k, vs in inputs.items()}


def _merge_ui(uis: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not uis:
        return None
    merged = {k: list(v) for k, v in uis[0].items()}
    for ui in uis[1:]:
        for key in merged:
            merged[key] += list(ui.get(key, []))
    return merged


class _PromptRun:
    """The state of one prompt's execution: results so far, UI outputs, per-node progress, recorded messages."""

    def __init__(self, prompt: dict[str, Any], prompt_id: str, emit: Callable[[Event], None]):
        self.prompt, self.prompt_id, self._emit = prompt, prompt_id, emit
        self.messages: list[list[Any]] = []
        self.results: dict[str, CachedResult] = {}
        self.ui_outputs: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []
        self.states: dict[str, dict[str, Any]] = {}

    def emit(self, event: Event) -> None:
        self._emit(event)

    def record(self, event: Event) -> None:
        """Emit and keep for the history entry's status messages."""
        self.messages.append([event.TYPE, event.to_builtins()])
        self._emit(event)

    def node_state(self, node_id: str, state: str, value: float = 0, total: float = 1) -> None:
        """progress_state: every started node with its progress (entries are replaced, never mutated)."""
        self.states[node_id] = {"value": value, "max": total, "state": state, "node_id": node_id,
                                "prompt_id": self.prompt_id, "display_node_id": node_id, "parent_node_id": None,
                                "real_node_id": node_id}
        self._emit(ProgressState(prompt_id=self.prompt_id, nodes=dict(self.states)))

    def progress_hook(self, node_id: str, wants_previews: bool):
        def on_progress(value: int, total: int, preview: Any) -> None:
            self._emit(Progress(value=value, max=total, prompt_id=self.prompt_id, node=node_id))
            self.node_state(node_id, "running", value, total)
            if preview is not None and wants_previews:
                self._emit(PreviewFrame(image=preview, image_type="image/jpeg", prompt_id=self.prompt_id,
                                        node_id=node_id))
        return on_progress


class Executor:
    """Executes prompts for one engine; holds the output cache and the node instances between prompts."""

    def __init__(self, registry: NodeRegistry, cache: OutputCache):
        self.registry = registry
        self.cache = cache
        self.instances: dict[tuple[str, str], Any] = {}
        self._specs: dict[type, dict[str, Any]] = {}  # INPUT_TYPES per class, for the prompt being run

    def execute(self, prompt: dict[str, Any], outputs: list[str], prompt_id: str, extra_data: dict[str, Any],
                ctx: node_context.NodeContext, emit: Callable[[Event], None]) -> RunRecord:
        run = _PromptRun(prompt, prompt_id, emit)
        run.record(ExecutionStart(prompt_id=prompt_id, timestamp=now_ms()))
        self._specs = {}
        signatures = self._signatures(prompt, outputs, ctx)
        cached = {n: r for n in prompt if n in signatures and (r := self.cache.get(signatures[n])) is not None}
        run.record(ExecutionCached(nodes=list(cached), prompt_id=prompt_id, timestamp=now_ms()))
        self._forget_instances(prompt)
        run.results.update(cached)
        run.ui_outputs.update({n: r.ui for n, r in cached.items() if r.ui is not None})
        try:
            for node_id in execution_order(prompt, outputs, lambda n: n in cached):
                if node_id in cached:
                    run.emit(Executed(node=node_id, display_node=node_id, output=cached[node_id].ui,
                                      prompt_id=prompt_id))
                else:
                    self._execute_node(run, node_id, signatures[node_id], extra_data, ctx)
        except _NodeFailure as failure:
            run.node_state(failure.node_id, "error")
            return self._failed(run, failure)
        run.record(ExecutionSuccess(prompt_id=prompt_id, timestamp=now_ms()))
        return RunRecord(outputs=run.ui_outputs, status_str="success", completed=True, messages=run.messages)

    def _signatures(self, prompt, outputs, ctx) -> dict[str, str]:
        """Signatures of the outputs' sub-graph, plus those of the other nodes that have one (ComfyUI reports
        every cached node of the prompt, even those that will not run)."""
        with node_context.use(ctx):  # IS_CHANGED may need engine services (LoadImage hashes its input file)
            signatures = compute_signatures(prompt, outputs, self.registry)
            others = [n for n in prompt if n not in signatures]
            return {**compute_signatures(prompt, others, self.registry, skip_broken=True), **signatures}

    def _execute_node(self, run: _PromptRun, node_id: str, signature: str, extra_data, ctx) -> None:
        run.node_state(node_id, "running")
        result = self._run_node(run, node_id, extra_data, ctx)
        run.results[node_id] = result
        self.cache.put(signature, result)
        run.executed.append(node_id)
        if result.ui is not None:
            run.ui_outputs[node_id] = result.ui
            run.emit(Executed(node=node_id, display_node=node_id, output=result.ui, prompt_id=run.prompt_id))
        run.node_state(node_id, "finished", 1, 1)

    def _failed(self, run: _PromptRun, failure: _NodeFailure) -> RunRecord:
        node_type = run.prompt[failure.node_id]["class_type"]
        if isinstance(failure.exc, Interrupted):
            run.record(ExecutionInterrupted(prompt_id=run.prompt_id, node_id=failure.node_id, node_type=node_type,
                                            executed=run.executed, timestamp=now_ms()))
            return RunRecord(outputs=run.ui_outputs, status_str="error", completed=False, messages=run.messages,
                             interrupted=True)
        exc = failure.exc
        error = ExecutionError(
            prompt_id=run.prompt_id, node_id=failure.node_id, node_type=node_type, executed=run.executed,
            exception_message=str(exc), exception_type=_type_name(exc),
            traceback=traceback.format_tb(exc.__traceback__), current_inputs=_format_inputs(failure.inputs),
            current_outputs=list(run.prompt), timestamp=now_ms())
        run.record(error)
        return RunRecord(outputs=run.ui_outputs, status_str="error", completed=False, messages=run.messages,
                         error=error)

    def _forget_instances(self, prompt: Mapping[str, Any]) -> None:
        live = {(i, n["class_type"]) for i, n in prompt.items()}
        self.instances = {k: v for k, v in self.instances.items() if k in live}

    def _instance(self, node_id: str, class_type: str) -> Any:
        key = (node_id, class_type)
        if key not in self.instances:
            self.instances[key] = self.registry.get(class_type)()
        return self.instances[key]

    def _run_node(self, run: _PromptRun, node_id: str, extra_data, ctx) -> CachedResult:
        node = run.prompt[node_id]
        inputs: dict[str, list[Any]] = {}
        try:
            ctx.check_interrupted()
            cls = self.registry.get(node["class_type"])
            inputs = self._gather_inputs(node_id, node, cls, run.results, run.prompt, extra_data)
            run.emit(Executing(node=node_id, display_node=node_id, prompt_id=run.prompt_id))
            node_ctx = ctx.for_node(node_id, run.progress_hook(node_id, ctx.wants_previews))
            with node_context.use(node_ctx):
                calls = self._map_over_lists(self._instance(node_id, node["class_type"]), cls, inputs, node_ctx)
            return self._merge_calls(cls, calls)
        except Exception as exc:
            log.debug("node %s (%s) failed", node_id, node["class_type"], exc_info=True)
            raise _NodeFailure(node_id, exc, inputs) from exc

    def _gather_inputs(self, node_id, node, cls, results, prompt, extra_data) -> dict[str, list[Any]]:
        """Every input as a list: constants → [v], links → the upstream slot's list, hidden → [value]."""
        if cls not in self._specs:
            spec = cls.INPUT_TYPES()
            self._specs[cls] = {"declared": {**spec.get("required", {}), **spec.get("optional", {})},
                                "hidden": spec.get("hidden", {})}
        declared, hidden = self._specs[cls]["declared"], self._specs[cls]["hidden"]
        inputs: dict[str, list[Any]] = {}
        for name, value in node["inputs"].items():
            if is_link(value):
                inputs[name] = results[str(value[0])].outputs[value[1]]
            elif name in declared:
                inputs[name] = [value]
        hidden_values = {
            "PROMPT": prompt, "DYNPROMPT": prompt, "UNIQUE_ID": node_id,
            "EXTRA_PNGINFO": extra_data.get("extra_pnginfo"),
            "AUTH_TOKEN_COMFY_ORG": extra_data.get("auth_token_comfy_org"),
            "API_KEY_COMFY_ORG": extra_data.get("api_key_comfy_org"),
        }
        for name, kind in hidden.items():
            inputs[name] = [hidden_values.get(kind)]
        return inputs

    @staticmethod
    def _map_over_lists(obj: Any, cls: type, inputs: dict[str, list[Any]], ctx) -> list[Any]:
        """ComfyUI list semantics: one call with whole lists, or one call per index (short lists repeat their last)."""
        fn = getattr(obj, cls.FUNCTION)
        call = (lambda **kw: asyncio.run(fn(**kw))) if inspect.iscoroutinefunction(fn) else fn
        if getattr(cls, "INPUT_IS_LIST", False):
            return [call(**inputs)]
        if not inputs:
            return [call()]
        calls = []
        for i in range(max(len(v) for v in inputs.values())):
            ctx.check_interrupted()
            calls.append(call(**{k: v[min(i, len(v) - 1)] for k, v in inputs.items()}))
        return calls

    @staticmethod
    def _merge_calls(cls: type, calls: list[Any]) -> CachedResult:
        n_out = len(getattr(cls, "RETURN_TYPES", ()))
        is_list = list(getattr(cls, "OUTPUT_IS_LIST", [False] * n_out))
        outputs: list[list[Any]] = [[] for _ in range(n_out)]
        uis = []
        for result in calls:
            if isinstance(result, dict):
                if result.get("ui") is not None:
                    uis.append(result["ui"])
                result = result.get("result", ())
            for i in range(n_out):
                value = result[i] if result is not None and i < len(result) else None
                if is_list[i] and isinstance(value, list):
                    outputs[i] += value
                else:
                    outputs[i].append(value)
        return CachedResult(outputs=outputs, ui=_merge_ui(uis))
