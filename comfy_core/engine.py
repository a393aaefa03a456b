"""The `Engine` facade: one object per engine, no globals. It owns the node registry, storage and model folders,
the model cache, the prompt queue with its worker thread, the history, the output cache and the event bus.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import os
import threading
import traceback
import uuid
from pathlib import Path
from typing import Any

import msgspec

from . import __version__
from . import context as node_context
from .cache import OutputCache
from .config import EngineConfig
from .errors import Interrupted, NodeExecutionError, PromptError
from .events import Event, EventBus, Executing, ExecutionError, Status, now_ms
from .executor import Executor, RunRecord
from .folders import ModelFolders
from .graph import decode_prompt, validate
from .history import MemoryHistory
from .persistence import PersistentHistory, StateFile
from .logs import LogCapture
from .nodes import register_builtin_nodes
from .nodes.registry import NodeRegistry
from .prompt_queue import PromptQueue, QueueItem
from .storage import Storage
from .userdata import UserData

log = logging.getLogger(__name__)

SENSITIVE_EXTRA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
COMFYUI_API_VERSION = "0.3.64"  # the ComfyUI server version whose API this engine implements


class Submission(msgspec.Struct):
    prompt_id: str
    number: float | int
    node_errors: dict[str, Any]


class RunResult(msgspec.Struct):
    """A finished prompt: ComfyUI's history outputs, plus the saved image files resolved to paths."""

    prompt_id: str
    outputs: dict[str, dict[str, Any]]
    images: dict[str, list[Path]]


def _pick_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _pick_dtype(name: str, device) -> Any:
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


class Engine:
    """Validates and runs ComfyUI API-format prompts in-process. See the README for the API tour."""

    def __init__(self, config: EngineConfig | None = None):
        self.config = (config or EngineConfig()).resolved()
        self.registry = NodeRegistry()
        register_builtin_nodes(self.registry)
        self.storage = Storage(self.config.input_dir, self.config.output_dir, self.config.temp_dir)
        self.folders = ModelFolders(self.config.models_dir, self.config.extra_model_paths,
                                    output_dir=self.config.output_dir,
                                    custom_nodes_dirs=self.config.custom_nodes_dirs,
                                    annotators_dir=self.config.annotators_dir)
        self.events = EventBus()
        self.userdata = UserData(self.config.user_dir, multi_user=self.config.multi_user)
        self.log_capture = LogCapture(self.events).attach()  # detached in close()
        self.device = _pick_device(self.config.device)
        self.dtype = _pick_dtype(self.config.dtype, self.device)
        self.models = self._make_model_cache()
        self.output_cache = OutputCache(self.config.cache_max_entries, self.config.cache_mode)
        self.executor = Executor(self.registry, self.output_cache)
        self._state = StateFile(self.config.state_dir) if self.config.state_dir else None
        self.history_store = (PersistentHistory(self._state, self.config.max_history) if self._state
                              else MemoryHistory(self.config.max_history))
        self._queue = PromptQueue(journal=self._state)
        self._cancel = node_context.CancelToken()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._running: tuple[str, str | None] | None = None  # (prompt_id, client_id)
        self._current_node: str | None = None
        self._pending_free = {"unload_models": False, "free_memory": False}
        with node_context.use(self.context()):  # packs may call folder_paths & co. while they are imported
            self.registry.load_custom_nodes(self.config.custom_nodes_dirs, comfy_compat=self.config.comfy_compat)

    def _restore_queue(self, state: StateFile) -> None:
        """Queue again what an earlier engine had queued (or was running) when it stopped; prompts that no longer
        validate (a custom node is gone) are dropped with a warning. Done at the first start, so nodes registered
        after construction count."""
        for number, prompt_id, prompt, extra_data, outputs in state.queued():
            if self.history_store.get(prompt_id) is not None:
                state.remove_queued([prompt_id])  # it finished just before the stop
                continue
            try:
                valid = self.validate(prompt)
            except PromptError as exc:
                log.warning("queued prompt %s dropped on restart: %s", prompt_id, exc)
                state.remove_queued([prompt_id])
                continue
            kept = [o for o in outputs if o in valid.outputs] or valid.outputs
            self._queue.restore(QueueItem((number, prompt_id, valid.prompt, extra_data, kept)))

    def _make_model_cache(self):
        from .models.cache import ModelCache

        return ModelCache(cpu_budget_bytes=self.config.cpu_model_budget_bytes,
                          gpu_budget_bytes=self.config.gpu_model_budget_bytes)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> "Engine":
        with self._lock:
            if self._worker is None:
                self.storage.clear_temp()
                if self._state is not None:
                    self._restore_queue(self._state)
                self._worker = threading.Thread(target=self._work, name="comfy-core-worker", daemon=True)
                self._worker.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        self._cancel.set()
        self._queue.close()
        if self._worker is not None:
            self._worker.join(timeout)
        self.storage.clear_temp()
        self.log_capture.detach()
        if self._state is not None and (self._worker is None or not self._worker.is_alive()):
            self._state.close()

    def __enter__(self) -> "Engine":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def context(self, **overrides: Any) -> node_context.NodeContext:
        """The services nodes see (`comfy_core.context.current()`); also installed around INPUT_TYPES calls."""
        return node_context.NodeContext(
            config=self.config, storage=self.storage, folders=self.folders, models=self.models,
            device=self.device, dtype=self.dtype, cancel=self._cancel,
            wants_previews=self.config.preview_method != "none", events=self.events, registry=self.registry,
            **overrides)

    # -- nodes -----------------------------------------------------------------------------------------------------
    def register_nodes(self, class_mappings: dict[str, type], display_names: dict[str, str] | None = None) -> None:
        self.registry.register(class_mappings, display_names)

    def object_info(self, node_class: str | None = None) -> dict[str, Any]:
        with node_context.use(self.context()):
            if node_class is None:
                return self.registry.all_info()
            return {node_class: self.registry.info(node_class)} if node_class in self.registry else {}

    def prompt_from_workflow(self, workflow: dict[str, Any]) -> dict[str, Any]:
        """The API prompt ComfyUI's frontend would queue for a UI-format workflow (see `workflow_format`)."""
        from .workflow_format import workflow_to_prompt

        return workflow_to_prompt(workflow, self.object_info())

    # -- submitting ----------------------------------------------------------------------------------------------
    def validate(self, prompt: Any, partial_execution_targets: list[str] | None = None):
        """Decode + validate; returns `ValidPrompt` or raises `PromptError` with ComfyUI's 400 body."""
        with node_context.use(self.context()):
            return validate(decode_prompt(prompt), self.registry, partial_execution_targets)

    def submit(self, prompt: Any, *, client_id: str | None = None, extra_data: dict[str, Any] | None = None,
               prompt_id: str | None = None, number: float | None = None, front: bool = False,
               partial_execution_targets: list[str] | None = None) -> Submission:
        if prompt is None:
            raise PromptError({"error": {"type": "no_prompt", "message": "No prompt provided",
                                         "details": "No prompt provided", "extra_info": {}}, "node_errors": {}})
        valid = self.validate(prompt, partial_execution_targets)
        extra = dict(extra_data or {})
        if client_id is not None:
            extra["client_id"] = client_id
        prompt_id = str(prompt_id) if prompt_id is not None else str(uuid.uuid4())
        self.start()  # first: it re-queues what a previous engine left (and advances the counter past it)
        number = self._queue.next_number(number, front)
        self._queue.put(QueueItem((number, prompt_id, valid.prompt, extra, valid.outputs)))
        self._emit_status()
        return Submission(prompt_id=prompt_id, number=number, node_errors=valid.node_errors)

    def run(self, prompt: Any, *, timeout: float | None = None, **submit_args: Any) -> RunResult:
        """Validate, queue and wait; raises PromptError, NodeExecutionError or Interrupted."""
        submission = self.submit(prompt, **submit_args)
        entry = self.wait(submission.prompt_id, timeout)
        if entry is None:
            raise TimeoutError(f"prompt {submission.prompt_id} did not finish within {timeout} s")
        self._raise_for_status(submission.prompt_id, entry)
        return RunResult(prompt_id=submission.prompt_id, outputs=entry["outputs"],
                         images=self._image_paths(entry["outputs"]))

    @staticmethod
    def _raise_for_status(prompt_id: str, entry: dict[str, Any]) -> None:
        if entry["status"]["status_str"] == "success":
            return
        for event, data in entry["status"]["messages"]:
            if event == "execution_interrupted":
                raise Interrupted(f"prompt {prompt_id} was interrupted at node {data['node_id']}")
            if event == "execution_error":
                raise NodeExecutionError(
                    f"node {data['node_id']} ({data['node_type']}) failed: {data['exception_type']}: "
                    f"{data['exception_message']}", data)
        raise NodeExecutionError(f"prompt {prompt_id} failed")

    def _image_paths(self, outputs: dict[str, dict[str, Any]]) -> dict[str, list[Path]]:
        images: dict[str, list[Path]] = {}
        for node_id, ui in outputs.items():
            for image in ui.get("images", []) if isinstance(ui, dict) else []:
                path = self.storage.resolve(image.get("type", "output"), image["filename"], image.get("subfolder", ""))
                images.setdefault(node_id, []).append(path)
        return images

    def wait(self, prompt_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until the prompt has a history entry (finished, failed or interrupted); None on timeout."""
        return self.history_store.wait(prompt_id, timeout)

    async def wait_async(self, prompt_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.wait, prompt_id, timeout)

    # -- queue ---------------------------------------------------------------------------------------------------
    def queue(self) -> dict[str, list[list[Any]]]:
        return self._queue.snapshot()

    def queue_remaining(self) -> int:
        return self._queue.remaining()

    def delete_queued(self, prompt_ids: list[str]) -> None:
        if self._queue.delete([str(p) for p in prompt_ids]):
            self._emit_status()

    def clear_queue(self) -> None:
        self._queue.clear()
        self._emit_status()

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt (only if it is `prompt_id`, when given); pending prompts stay queued."""
        running = self._running
        if prompt_id is not None and (running is None or running[0] != prompt_id):
            return
        self._cancel.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self._queue.wait_idle(timeout)

    def current_node(self, client_id: str | None) -> str | None:
        running = self._running
        if running is None or client_id is None or running[1] != client_id:
            return None
        return self._current_node

    # -- history -------------------------------------------------------------------------------------------------
    def history(self, max_items: int | None = None, offset: int | None = None) -> dict[str, Any]:
        return self.history_store.page(max_items, offset)

    def history_item(self, prompt_id: str) -> dict[str, Any]:
        entry = self.history_store.get(prompt_id)
        return {} if entry is None else {prompt_id: entry}

    def delete_history(self, prompt_ids: list[str]) -> None:
        self.history_store.delete([str(p) for p in prompt_ids])

    def clear_history(self) -> None:
        self.history_store.clear()

    # -- memory ----------------------------------------------------------------------------------------------------
    def free(self, unload_models: bool = False, free_memory: bool = False) -> None:
        """Unload models (and, with free_memory, drop cached outputs); deferred until the running prompt ends."""
        with self._lock:
            self._pending_free["unload_models"] |= unload_models or free_memory
            self._pending_free["free_memory"] |= free_memory
            idle = self._running is None
        if idle:
            self._apply_free()

    def _apply_free(self) -> None:
        with self._lock:
            flags, self._pending_free = self._pending_free, {"unload_models": False, "free_memory": False}
        if flags["unload_models"]:
            self.models.free()
        if flags["free_memory"]:
            self.output_cache.clear()
            self.executor.instances.clear()

    # -- info ------------------------------------------------------------------------------------------------------
    def embeddings(self) -> list[str]:
        return [os.path.splitext(name)[0] for name in self.folders.list("embeddings")]

    def extension_dirs(self) -> dict[str, Path]:
        return dict(self.registry.web_dirs)

    def system_stats(self) -> dict[str, Any]:
        from .system import system_stats

        return system_stats(self.device, __version__, COMFYUI_API_VERSION)

    # -- worker ----------------------------------------------------------------------------------------------------
    def _emit(self, event: Event, client_id: str | None = None, broadcast: bool | None = None) -> None:
        self.events.emit(event, client_id=client_id, broadcast=broadcast)

    def _emit_status(self) -> None:
        self._emit(Status.remaining(self._queue.remaining()), broadcast=True)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._emit_status()
            try:
                self._process(item)
            except Exception as exc:  # the worker must survive anything a prompt does
                log.exception("prompt %s crashed the executor", item.prompt_id)
                try:
                    self._end_crashed(item, exc)
                except Exception:
                    log.exception("could not report the crash of prompt %s", item.prompt_id)
            finally:
                self._queue.done(item.prompt_id)
            self._apply_free()

    def _process(self, item: QueueItem) -> None:
        number, prompt_id, prompt, extra_data, outputs = item
        client_id = extra_data.get("client_id")
        self._cancel.clear()
        self._running = (prompt_id, client_id)

        def emit(event: Event) -> None:
            if isinstance(event, Executing):
                self._current_node = event.node
            self._emit(event, client_id=client_id)

        try:
            ctx = self.context(prompt_id=prompt_id, client_id=client_id)
            record = self.executor.execute(prompt, outputs, prompt_id, extra_data, ctx, emit)
        finally:
            self._running, self._current_node = None, None
        self.history_store.add(prompt_id, self._history_entry(item, record))
        self._queue.done(prompt_id)
        self._emit_status()
        self._emit(Executing(node=None, prompt_id=prompt_id), client_id=client_id)

    def _end_crashed(self, item: QueueItem, exc: Exception) -> None:
        """End a prompt whose execution failed outside any node (a fault of the engine, not of a node) as a failed
        prompt: an `execution_error` naming the exception, an error entry in history and `executing: null`.
        Without them the prompt vanished and its client (and `wait()`) waited forever."""
        _, prompt_id, prompt, extra_data, outputs = item
        client_id = extra_data.get("client_id")
        if self.history_item(prompt_id):  # it failed after its end was already reported
            return
        node_id = outputs[0] if outputs else ""
        node = prompt.get(node_id)
        error = ExecutionError(
            prompt_id=prompt_id, node_id=node_id, node_type=str(node.get("class_type", "")) if node else "",
            executed=[], exception_message=str(exc), exception_type=type(exc).__qualname__,
            traceback=traceback.format_tb(exc.__traceback__), current_inputs={}, current_outputs=list(prompt),
            timestamp=now_ms())
        record = RunRecord(outputs={}, status_str="error", completed=False,
                           messages=[[error.TYPE, error.to_builtins()]], error=error)
        try:
            self._emit(error, client_id=client_id)
            self.history_store.add(prompt_id, self._history_entry(item, record))
        finally:
            self._queue.done(prompt_id)
            self._emit_status()
            self._emit(Executing(node=None, prompt_id=prompt_id), client_id=client_id)

    @staticmethod
    def _history_entry(item: QueueItem, record: RunRecord) -> dict[str, Any]:
        number, prompt_id, prompt, extra_data, outputs = item
        extra = {k: v for k, v in copy.deepcopy(extra_data).items() if k not in SENSITIVE_EXTRA_KEYS}
        return {
            "prompt": [number, prompt_id, prompt, extra, outputs],
            "outputs": record.outputs,
            "status": {"status_str": record.status_str, "completed": record.completed, "messages": record.messages},
            "meta": record.meta,
        }
