"""Runs one validated prompt: ComfyUI's dynamic execution order (lazy inputs, node expansion, execution blockers),
cache lookups by input signature, list mapping, hidden inputs, progress and interrupts, and ComfyUI's events and
history record. The order itself lives in `dynamic_graph.py`.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import msgspec

from . import context as node_context
from .cache import CachedResult, OutputCache
from .dynamic_graph import DependencyCycleError, DynamicPrompt, ExecutionList
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
    OutputImage,
    PreviewFrame,
    Progress,
    ProgressState,
    now_ms,
)
from .graph import _type_name, is_link
from .graph_utils import ExecutionBlocker
from .nodes.registry import NodeRegistry
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


class _Call(NamedTuple):
    """One mapped call's return value, split into ComfyUI's parts."""

    values: Any  # tuple of outputs (links into `expand` for an expanding call), or None
    ui: dict[str, Any] | None
    expand: dict[str, Any] | None


def _split_call(result: Any, n_out: int) -> _Call:
    if isinstance(result, ExecutionBlocker):
        return _Call((result,) * n_out, None, None)
    if isinstance(result, dict):
        values = result.get("result", ())
        if isinstance(values, ExecutionBlocker):
            values = (values,) * n_out
        return _Call(values, result.get("ui"), result.get("expand"))
    return _Call(result, None, None)


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


def _first_blocker(kwargs: dict[str, Any], whole_lists: bool) -> ExecutionBlocker | None:
    for value in kwargs.values():
        for item in (value if whole_lists else (value,)):
            if isinstance(item, ExecutionBlocker):
                return item
    return None


class _PromptRun:
    """The state of one prompt's execution: its live graph, results so far, UI outputs, per-node progress,
    expansions waiting for their sub-graphs, and the messages recorded for history."""

    def __init__(self, prompt: dict[str, Any], prompt_id: str, emit: Callable[[Event], None]):
        self.prompt, self.prompt_id, self._emit = prompt, prompt_id, emit
        self.graph = DynamicPrompt(prompt)
        self.signatures: dict[str, str] = {}
        self.messages: list[list[Any]] = []
        self.results: dict[str, CachedResult] = {}
        self.ui_outputs: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []
        self.states: dict[str, dict[str, Any]] = {}
        self.expansions: dict[str, tuple[list[_Call], dict[str, Any] | None]] = {}

    def emit(self, event: Event) -> None:
        self._emit(event)

    def record(self, event: Event) -> None:
        """Emit and keep for the history entry's status messages."""
        self.messages.append([event.TYPE, event.to_builtins()])
        self._emit(event)

    def display(self, node_id: str) -> str:
        return self.graph.get_display_node_id(node_id) if self.graph.ephemeral else node_id

    def meta(self, node_id: str) -> dict[str, Any]:
        if not self.graph.ephemeral:  # the common case: no expansion in this prompt
            return {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
        return {"node_id": node_id, "display_node": self.display(node_id),
                "parent_node": self.graph.get_parent_node_id(node_id),
                "real_node_id": self.graph.get_real_node_id(node_id)}

    def node_state(self, node_id: str, state: str, value: float = 0, total: float = 1) -> None:
        """progress_state: every started node with its progress (entries are replaced, never mutated)."""
        meta = self.meta(node_id)
        self.states[node_id] = {"value": value, "max": total, "state": state, "node_id": node_id,
                                "prompt_id": self.prompt_id, "display_node_id": meta["display_node"],
                                "parent_node_id": meta["parent_node"], "real_node_id": meta["real_node_id"]}
        self._emit(ProgressState(prompt_id=self.prompt_id, nodes=dict(self.states)))

    def show_ui(self, node_id: str, ui: dict[str, Any] | None) -> None:
        if ui is not None:
            self.ui_outputs[node_id] = ui
            self.emit(Executed(node=node_id, display_node=self.display(node_id), output=ui,
                               prompt_id=self.prompt_id))

    def progress_hook(self, node_id: str, wants_previews: bool):
        def on_progress(value: int, total: int, preview: Any) -> None:
            self._emit(Progress(value=value, max=total, prompt_id=self.prompt_id, node=node_id))
            self.node_state(node_id, "running", value, total)
            if isinstance(preview, OutputImage):  # a node's output image: sent whatever the preview method
                self._emit(PreviewFrame(image=preview.image, image_type=preview.image_type, prompt_id=self.prompt_id,
                                        node_id=node_id, lossy=False))
            elif preview is not None and wants_previews:
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
        self._coroutines: dict[tuple[type, str], bool] = {}  # whether a node method is `async def`

    def execute(self, prompt: dict[str, Any], outputs: list[str], prompt_id: str, extra_data: dict[str, Any],
                ctx: node_context.NodeContext, emit: Callable[[Event], None]) -> RunRecord:
        run = _PromptRun(prompt, prompt_id, emit)
        run.record(ExecutionStart(prompt_id=prompt_id, timestamp=now_ms()))
        self._specs = {}
        run.signatures = self._signatures(prompt, outputs, ctx)
        cached = {n: r for n in prompt if n in run.signatures and (r := self.cache.get(run.signatures[n])) is not None}
        run.record(ExecutionCached(nodes=list(cached), prompt_id=prompt_id, timestamp=now_ms()))
        self._forget_instances(prompt)
        run.results.update(cached)
        run.ui_outputs.update({n: r.ui for n, r in cached.items() if r.ui is not None})
        order = self._execution_list(run)
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

    def _execution_list(self, run: _PromptRun) -> ExecutionList:
        flags: dict[str, tuple[bool, bool, frozenset[str]]] = {}  # class_type -> (output, async, lazy inputs)

        def flags_of(node_id: str) -> tuple[bool, bool, frozenset[str]]:
            class_type = run.graph.get_node(node_id)["class_type"]
            if class_type not in flags:
                cls = self.registry.get(class_type)
                flags[class_type] = (False, False, frozenset()) if cls is None else (
                    getattr(cls, "OUTPUT_NODE", False) is True,
                    inspect.iscoroutinefunction(getattr(cls, cls.FUNCTION, None)),
                    frozenset(k for k, lazy in self._spec(cls)["lazy"].items() if lazy))
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

    def _step(self, run: _PromptRun, order: ExecutionList, node_id: str, extra_data, ctx) -> bool:
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

    def _failed(self, run: _PromptRun, failure: _NodeFailure) -> RunRecord:
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
            exception_type="graph.DependencyCycleError" if cycle else _type_name(exc),
            traceback=[] if cycle else traceback.format_tb(exc.__traceback__),
            current_inputs=_format_inputs(failure.inputs), current_outputs=list(run.prompt), timestamp=now_ms())
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
                                "lazy": {k: bool(o.get("lazy")) for k, o in options.items()},
                                "raw_link": {k for k, o in options.items() if o.get("rawLink")}}
        return self._specs[cls]

    def _run_node(self, run: _PromptRun, order: ExecutionList, node_id: str, extra_data,
                  ctx) -> CachedResult | None:
        """Call the node; None when it must wait (lazy inputs requested, or it expanded into new nodes)."""
        node = run.graph.get_node(node_id)
        inputs: dict[str, list[Any]] = {}
        try:
            ctx.check_interrupted()
            cls = self._class(node_id, node)
            inputs, missing = self._gather_inputs(run, node_id, node, cls, extra_data)
            run.emit(Executing(node=node_id, display_node=run.display(node_id), prompt_id=run.prompt_id))
            obj = self._instance(node_id, node["class_type"])
            node_ctx = ctx.for_node(node_id, run.progress_hook(node_id, ctx.wants_previews))
            with node_context.use(node_ctx):
                if self._requests_lazy_inputs(order, node_id, obj, cls, inputs, missing, node_ctx):
                    return None
                results = self._report_blocks(run, node_id, self._map_over_lists(obj, cls, inputs, node_ctx))
            calls = [_split_call(r, len(getattr(cls, "RETURN_TYPES", ()))) for r in results]
            if any(call.expand is not None for call in calls):
                self._expand(run, order, node_id, calls, ctx)
                return None
            return self._merge_calls(cls, calls)
        except Exception as exc:
            log.debug("node %s (%s) failed", node_id, node.get("class_type"), exc_info=True)
            raise _NodeFailure(node_id, exc, inputs) from exc

    def _gather_inputs(self, run: _PromptRun, node_id: str, node, cls, extra_data) -> tuple[dict[str, list[Any]],
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
        answers = self._map_over_lists(obj, cls, inputs, ctx, function="check_lazy_status")
        wanted = dict.fromkeys(name for answer in answers if isinstance(answer, list) for name in answer
                               if isinstance(name, str) and (name not in inputs or name in missing))
        linked = [order.make_input_strong_link(node_id, name) for name in wanted]
        return any(linked)

    @staticmethod
    def _report_blocks(run: _PromptRun, node_id: str, results: list[Any]) -> list[Any]:
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

    def _map_over_lists(self, obj: Any, cls: type, inputs: dict[str, list[Any]], ctx, *,
                        function: str | None = None) -> list[Any]:
        """ComfyUI list semantics: one call with whole lists, or one call per index (short lists repeat their
        last). A call whose inputs hold an ExecutionBlocker is not made; the blocker is its result."""
        fn = getattr(obj, function or cls.FUNCTION)
        if self._is_coroutine(cls, function or cls.FUNCTION):
            fn = (lambda f: lambda **kw: asyncio.run(f(**kw)))(fn)
        whole_lists = bool(getattr(cls, "INPUT_IS_LIST", False))
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
            blocker = _first_blocker(kwargs, whole_lists)
            if blocker is not None:
                results.append(blocker)
                continue
            ctx.start_call(index)
            results.append(fn(**kwargs))
        return results

    def _is_coroutine(self, cls: type, function: str) -> bool:
        key = (cls, function)
        if key not in self._coroutines:
            self._coroutines[key] = inspect.iscoroutinefunction(getattr(cls, function, None))
        return self._coroutines[key]

    @staticmethod
    def _merge_calls(cls: type, calls: list[_Call],
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
        return CachedResult(outputs=outputs, ui=_merge_ui([c.ui for c in calls if c.ui is not None]))

    # -- node expansion ---------------------------------------------------------------------------------------------
    def _expand(self, run: _PromptRun, order: ExecutionList, node_id: str, calls: list[_Call], ctx) -> None:
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
        ui = _merge_ui([c.ui for c in calls if c.ui is not None])
        run.show_ui(node_id, ui)
        run.expansions[node_id] = (calls, ui)

    def _add_ephemeral_nodes(self, run: _PromptRun, parent_id: str, calls: list[_Call]) -> list[str]:
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

    def _resolve_expansion(self, run: _PromptRun, node_id: str) -> CachedResult:
        """The expanded node's outputs, now that its sub-graph ran: links replaced by the linked outputs."""
        calls, ui = run.expansions.pop(node_id)

        def resolve(value: Any) -> list[Any] | None:
            if is_link(value) and str(value[0]) in run.graph:
                return list(run.results[str(value[0])].outputs[value[1]])
            return None

        cls = self.registry.get(run.graph.get_node(node_id)["class_type"])
        result = self._merge_calls(cls, calls, resolve)
        result.ui = ui
        return result
