"""Runs one validated prompt: ComfyUI's dynamic execution order (lazy inputs, node expansion, execution blockers),
cache lookups by input signature, list mapping, hidden inputs, progress and interrupts, and ComfyUI's events and
history record. The order itself lives in `dynamic_graph.py`.
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
from .dynamic_graph import DependencyCycleError, ExecutionList
from .errors import Interrupted, NodeExecutionError
from .events import (
    Event,
    Executed,
    Executing,
    ExecutionCached,
    ExecutionError,
    ExecutionInterrupted,
    ExecutionStart,
    ExecutionSuccess,
    now_ms,
)
from .graph import exception_type_name, is_link
from .graph_utils import ExecutionBlocker
from .node_calls import (
    NodeCall,
    format_inputs,
    map_over_lists,
    merge_calls,
    merge_ui,
    split_call,
)
from .nodes.registry import NodeRegistry
from .prompt_run import PromptRun
from .signature import compute_signatures

log = logging.getLogger(__name__)


class RunRecord(msgspec.Struct):
    """What one execution produced: ComfyUI's history `outputs`/`status`/`meta` plus the error, if any."""

    outputs: dict[str, dict[str, Any]]
    status_str: str
    completed: bool
    messages: list[list[Any]]
    error: ExecutionError | None = None
    interrupted: bool = False
    meta: dict[str, dict[str, Any]] = {}


class _NodeFailure(Exception):
    def __init__(self, node_id: str, exc: BaseException, inputs: dict[str, Any]):
        self.node_id, self.exc, self.inputs = node_id, exc, inputs


class DuplicateNodeError(NodeExecutionError):
    """A node expansion reused a node id that already exists in the running prompt."""


class Executor:
    """Executes prompts for one engine; holds the output cache and the node instances between prompts."""

    def __init__(self, registry: NodeRegistry, cache: OutputCache):
        self.registry = registry
        self.cache = cache
        self.instances: dict[tuple[str, str], Any] = {}
        self._specs: dict[type, dict[str, Any]] = {}  # INPUT_TYPES per class, for the prompt being run
        self._coroutines: dict[tuple[type, str], bool] = {}  # whether a node method is `async def`

    def execute(self, prompt: dict[str, Any], outputs: list[str], prompt_id: str, extra_data: dict[str, Any],
                ctx: node_context.NodeContext, emit: Callable[[Event], None]) -> RunRecord:
        run = PromptRun(prompt, prompt_id, emit)
        run.record(ExecutionStart(prompt_id=prompt_id, timestamp=now_ms()))
        self._specs = {}
        run.signatures = self._signatures(prompt, outputs, ctx)
        self.cache.begin_prompt(set(run.signatures.values()))
        cached = {n: r for n in prompt if n in run.signatures and (r := self.cache.get(run.signatures[n])) is not None}
        run.record(ExecutionCached(nodes=list(cached), prompt_id=prompt_id, timestamp=now_ms()))
        self._forget_instances(prompt)
        run.results.update(cached)
        run.ui_outputs.update({n: r.ui for n, r in cached.items() if r.ui is not None})
        order = self._execution_list(run)
        with node_context.use(ctx):  # INPUT_TYPES (read for lazy flags) may list the engine's files
            for output in outputs:
                order.add_node(output)
        try:
            while not order.is_empty():
                node_id = self._next_node(order)
                if self._step(run, order, node_id, extra_data, ctx):
                    order.complete(node_id)
        except _NodeFailure as failure:
            run.node_state(failure.node_id, "error")
            return self._failed(run, failure)
        run.record(ExecutionSuccess(prompt_id=prompt_id, timestamp=now_ms()))
        return RunRecord(outputs=run.ui_outputs, status_str="success", completed=True, messages=run.messages,
                         meta={n: run.meta(n) for n in run.ui_outputs})

    def _signatures(self, prompt, outputs, ctx) -> dict[str, str]:
        """Signatures of the outputs' sub-graph, plus those of the other nodes that have one (ComfyUI reports
        every cached node of the prompt, even those that will not run)."""
        with node_context.use(ctx):  # IS_CHANGED may need engine services (LoadImage hashes its input file)
            signatures = compute_signatures(prompt, outputs, self.registry)
            others = [n for n in prompt if n not in signatures]
            return {**compute_signatures(prompt, others, self.registry, skip_broken=True), **signatures}

    def _execution_list(self, run: PromptRun) -> ExecutionList:
        flags: dict[str, tuple[bool, bool, frozenset[str]]] = {}  # class_type -> (output, async, lazy inputs)

        def flags_of(node_id: str) -> tuple[bool, bool, frozenset[str]]:
            class_type = run.graph.get_node(node_id)["class_type"]
            if class_type not in flags:
                cls = self.registry.get(class_type)
                flags[class_type] = (False, False, frozenset()) if cls is None else (
                    getattr(cls, "OUTPUT_NODE", False) is True,
                    self._is_coroutine(cls, cls.FUNCTION), self._spec(cls)["lazy"])
            return flags[class_type]

        return ExecutionList(run.graph, is_done=run.results.__contains__,
                             is_output=lambda n: flags_of(n)[0], is_async=lambda n: flags_of(n)[1],
                             lazy_inputs=lambda n: flags_of(n)[2])

    @staticmethod
    def _next_node(order: ExecutionList) -> str:
        try:
            return order.next_node()
        except DependencyCycleError as exc:
            raise _NodeFailure(exc.blamed, exc, {}) from exc

    def _step(self, run: PromptRun, order: ExecutionList, node_id: str, extra_data, ctx) -> bool:
        """Run (or finish) the picked node; False when it must wait (it asked for lazy inputs, or it expanded)."""
        if node_id in run.results:  # a cached output node: replay its UI
            run.emit(Executed(node=node_id, display_node=run.display(node_id), output=run.results[node_id].ui,
                              prompt_id=run.prompt_id))
            return True
        run.node_state(node_id, "running")
        if node_id in run.expansions:
            result = self._resolve_expansion(run, node_id)
        else:
            result = self._run_node(run, order, node_id, extra_data, ctx)
            if result is None:
                return False
            run.show_ui(node_id, result.ui)
        run.results[node_id] = result
        self.cache.put(run.signatures[node_id], result)
        run.executed.append(node_id)
        run.node_state(node_id, "finished", 1, 1)
        return True

    def _failed(self, run: PromptRun, failure: _NodeFailure) -> RunRecord:
        node_id = run.graph.get_real_node_id(failure.node_id)  # errors inside an expansion blame its prompt node
        node_type = run.prompt[node_id]["class_type"]
        meta = {n: run.meta(n) for n in run.ui_outputs}
        if isinstance(failure.exc, Interrupted):
            run.record(ExecutionInterrupted(prompt_id=run.prompt_id, node_id=node_id, node_type=node_type,
                                            executed=run.executed, timestamp=now_ms()))
            return RunRecord(outputs=run.ui_outputs, status_str="error", completed=False, messages=run.messages,
                             interrupted=True, meta=meta)
        exc = failure.exc
        cycle = isinstance(exc, DependencyCycleError)
        error = ExecutionError(
            prompt_id=run.prompt_id, node_id=node_id, node_type=node_type, executed=run.executed,
            exception_message=str(exc),
            exception_type="graph.DependencyCycleError" if cycle else exception_type_name(exc),
            traceback=[] if cycle else traceback.format_tb(exc.__traceback__),
            current_inputs=format_inputs(failure.inputs), current_outputs=list(run.prompt), timestamp=now_ms())
        run.record(error)
        return RunRecord(outputs=run.ui_outputs, status_str="error", completed=False, messages=run.messages,
                         error=error, meta=meta)

    def _forget_instances(self, prompt: Mapping[str, Any]) -> None:
        live = {(i, n["class_type"]) for i, n in prompt.items()}
        self.instances = {k: v for k, v in self.instances.items() if k in live}

    def _instance(self, node_id: str, class_type: str) -> Any:
        key = (node_id, class_type)
        if key not in self.instances:
            self.instances[key] = self.registry.get(class_type)()
        return self.instances[key]

    def _class(self, node_id: str, node: dict[str, Any]) -> type:
        cls = self.registry.get(node.get("class_type"))
        if cls is None:  # only possible for nodes added by expansion: the prompt's nodes were validated
            raise NodeExecutionError(f"node {node_id} has an unknown class_type {node.get('class_type')!r}")
        return cls

    def _spec(self, cls: type) -> dict[str, Any]:
        """A class's declared inputs, hidden inputs and lazy/rawLink flags (INPUT_TYPES once per prompt)."""
        if cls not in self._specs:
            spec = cls.INPUT_TYPES()
            declared = {**spec.get("required", {}), **spec.get("optional", {})}
            options = {k: v[1] for k, v in declared.items()
                       if isinstance(v, (list, tuple)) and len(v) > 1 and isinstance(v[1], dict)}
            self._specs[cls] = {"declared": declared, "hidden": spec.get("hidden", {}),
                                "lazy": frozenset(k for k, o in options.items() if o.get("lazy")),
                                "raw_link": {k for k, o in options.items() if o.get("rawLink")}}
        return self._specs[cls]

    def _run_node(self, run: PromptRun, order: ExecutionList, node_id: str, extra_data,
                  ctx) -> CachedResult | None:
        """Call the node; None when it must wait (lazy inputs requested, or it expanded into new nodes)."""
        node = run.graph.get_node(node_id)
        inputs: dict[str, list[Any]] = {}
        try:
            ctx.check_interrupted()
            cls = self._class(node_id, node)
            inputs, missing = self._gather_inputs(run, node_id, node, cls, extra_data)
            run.emit(Executing(node=node_id, display_node=run.display(node_id), prompt_id=run.prompt_id))
            node_ctx = ctx.for_node(node_id, run.progress_hook(node_id, ctx.wants_previews))
            with node_context.use(node_ctx):
                obj = self._instance(node_id, node["class_type"])  # __init__ may use engine services too
                if self._requests_lazy_inputs(order, node_id, obj, cls, inputs, missing, node_ctx):
                    return None
                results = self._report_blocks(run, node_id, self._call(obj, cls, inputs, node_ctx))
            calls = [split_call(r, len(getattr(cls, "RETURN_TYPES", ()))) for r in results]
            if any(call.expand is not None for call in calls):
                self._expand(run, order, node_id, calls, ctx)
                return None
            return merge_calls(cls, calls)
        except Exception as exc:
            log.debug("node %s (%s) failed", node_id, node.get("class_type"), exc_info=True)
            raise _NodeFailure(node_id, exc, inputs) from exc

    def _gather_inputs(self, run: PromptRun, node_id: str, node, cls, extra_data) -> tuple[dict[str, list[Any]],
                                                                                          set[str]]:
        """Every input as a list: constants → [v], links → the upstream slot's list, hidden → [value].
        A link whose source has not run (a lazy input not asked for yet) is [None] and listed as missing."""
        spec = self._spec(cls)
        inputs: dict[str, list[Any]] = {}
        missing: set[str] = set()
        for name, value in node["inputs"].items():
            if is_link(value) and name not in spec["raw_link"]:
                source = run.results.get(str(value[0]))
                if source is None or value[1] >= len(source.outputs):
                    inputs[name] = [None]
                    missing.add(name)
                else:
                    inputs[name] = source.outputs[value[1]]
            elif name in spec["declared"]:
                inputs[name] = [value]
        hidden_values = {
            "PROMPT": run.prompt, "DYNPROMPT": run.graph, "UNIQUE_ID": node_id,
            "EXTRA_PNGINFO": extra_data.get("extra_pnginfo"),
            "AUTH_TOKEN_COMFY_ORG": extra_data.get("auth_token_comfy_org"),
            "API_KEY_COMFY_ORG": extra_data.get("api_key_comfy_org"),
        }
        for name, kind in spec["hidden"].items():
            inputs[name] = [hidden_values.get(kind)]
        return inputs, missing

    def _requests_lazy_inputs(self, order: ExecutionList, node_id: str, obj, cls, inputs, missing, ctx) -> bool:
        """ComfyUI's `check_lazy_status`: the node names the inputs it needs given what it has; those not yet
        evaluated become dependencies and the node waits for them."""
        if not hasattr(obj, "check_lazy_status"):
            return False
        answers = self._call(obj, cls, inputs, ctx, function="check_lazy_status")
        wanted = dict.fromkeys(name for answer in answers if isinstance(answer, list) for name in answer
                               if isinstance(name, str) and (name not in inputs or name in missing))
        linked = [order.make_input_strong_link(node_id, name) for name in wanted]
        return any(linked)

    @staticmethod
    def _report_blocks(run: PromptRun, node_id: str, results: list[Any]) -> list[Any]:
        """A call blocked by an ExecutionBlocker with a message reports it (an execution_error that does not stop
        the prompt); the blocker then travels on silently."""
        for index, result in enumerate(results):
            if not isinstance(result, ExecutionBlocker) or result.message is None:
                continue
            run.emit(ExecutionError(
                prompt_id=run.prompt_id, node_id=node_id, node_type=run.graph.get_node(node_id)["class_type"],
                executed=list(run.executed), exception_message=f"Execution Blocked: {result.message}",
                exception_type="ExecutionBlocked", traceback=[], current_inputs=[], current_outputs=[],
                timestamp=now_ms()))
            results[index] = ExecutionBlocker(None)
        return results

    def _call(self, obj: Any, cls: type, inputs: dict[str, list[Any]], ctx, *,
              function: str | None = None) -> list[Any]:
        """The node's FUNCTION (or `function`) over its inputs with ComfyUI's list semantics; `async def` runs too."""
        name = function or cls.FUNCTION
        fn = getattr(obj, name)
        if self._is_coroutine(cls, name):
            fn = (lambda f: lambda **kw: asyncio.run(f(**kw)))(fn)
        return map_over_lists(fn, inputs, bool(getattr(cls, "INPUT_IS_LIST", False)), ctx)

    def _is_coroutine(self, cls: type, function: str) -> bool:
        key = (cls, function)
        if key not in self._coroutines:
            self._coroutines[key] = inspect.iscoroutinefunction(getattr(cls, function, None))
        return self._coroutines[key]

    # -- node expansion ---------------------------------------------------------------------------------------------
    def _expand(self, run: PromptRun, order: ExecutionList, node_id: str, calls: list[NodeCall], ctx) -> None:
        """Add the nodes the calls returned under "expand", schedule them, and park the node until they ran."""
        new_ids = self._add_ephemeral_nodes(run, node_id, calls)
        with node_context.use(ctx):  # IS_CHANGED of the new nodes may need engine services
            fresh = compute_signatures(run.graph.all_nodes(), new_ids, self.registry, known=run.signatures)
        run.signatures.update(fresh)
        for new_id in new_ids:
            hit = self.cache.get(run.signatures[new_id])
            if hit is not None:
                run.results[new_id] = hit
        for new_id in new_ids:
            if getattr(self.registry.get(run.graph.get_node(new_id)["class_type"]), "OUTPUT_NODE", False) is True:
                order.add_node(new_id)
        for call in calls:
            if call.expand is None or call.values is None:
                continue
            for value in call.values:
                if is_link(value) and str(value[0]) in run.graph:
                    order.add_strong_link(str(value[0]), value[1], node_id)
        ui = merge_ui([c.ui for c in calls if c.ui is not None])
        run.show_ui(node_id, ui)
        run.expansions[node_id] = (calls, ui)

    def _add_ephemeral_nodes(self, run: PromptRun, parent_id: str, calls: list[NodeCall]) -> list[str]:
        graphs = [call.expand for call in calls if call.expand is not None]
        new_ids = [str(n) for graph in graphs for n in graph]
        for new_id in new_ids:
            if new_id in run.graph:
                raise DuplicateNodeError(f"node expansion added node {new_id!r}, which already exists; ids must be "
                                         "unique and deterministic (use comfy_core.graph_utils.GraphBuilder)")
        for graph in graphs:
            for new_id, node in graph.items():
                node = {**node, "inputs": dict(node.get("inputs", {}))}
                self._class(str(new_id), node)
                display = str(node.get("override_display_id", parent_id))
                run.graph.add_ephemeral_node(str(new_id), node, parent_id, display)
        return new_ids

    def _resolve_expansion(self, run: PromptRun, node_id: str) -> CachedResult:
        """The expanded node's outputs, now that its sub-graph ran: links replaced by the linked outputs."""
        calls, ui = run.expansions.pop(node_id)

        def resolve(value: Any) -> list[Any] | None:
            if is_link(value) and str(value[0]) in run.graph:
                return list(run.results[str(value[0])].outputs[value[1]])
            return None

        cls = self.registry.get(run.graph.get_node(node_id)["class_type"])
        result = merge_calls(cls, calls, resolve)
        result.ui = ui
        return result
