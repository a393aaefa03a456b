"""API-format prompts: decoding, validation with ComfyUI's error shapes, and the static dependency structure.

A prompt is `{node_id: {"class_type": str, "inputs": {name: constant | [src_id, slot]}, "_meta": {...}}}`.
Validation follows ComfyUI (execution.py `validate_prompt`): every node's class must exist, but inputs are checked only
for nodes some selected output depends on; constants are coerced (INT via int(), ...) and written back; when some outputs
fail and others pass, the prompt is accepted with the valid outputs and `node_errors` describing the rest.
Where ComfyUI crashes (cycles, links to missing nodes), we return a regular error that names the nodes.
"""
from __future__ import annotations

import inspect
import traceback
from collections.abc import Generator, Iterable, Mapping
from typing import Any

import msgspec

from .errors import PromptError
from .nodes.registry import NodeRegistry

MAX_LISTED_CHOICES = 20  # ComfyUI abbreviates longer combo lists in error details
_Result = tuple[bool, list[dict[str, Any]]]  # (valid, errors) of one node


class ValidPrompt(msgspec.Struct):
    prompt: dict[str, Any]  # coerced copy of the prompt
    outputs: list[str]  # output nodes that passed validation, in prompt order
    node_errors: dict[str, Any]  # errors of the outputs that failed (empty when all passed)


def _error(type_: str, message: str, details: str = "", extra_info: dict | None = None) -> dict[str, Any]:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info or {}}


def prompt_error(type_: str, message: str, details: str = "", node_errors: dict | None = None) -> PromptError:
    return PromptError({"error": _error(type_, message, details), "node_errors": node_errors or {}})


def decode_prompt(raw: bytes | str | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """JSON bytes or a mapping → prompt dict; anything that is not an object of objects is `invalid_prompt`."""
    if isinstance(raw, (bytes, str)):
        try:
            raw = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise prompt_error("invalid_prompt", "Invalid prompt JSON", str(exc)) from None
    if not isinstance(raw, Mapping):
        raise prompt_error("invalid_prompt", "Prompt must be a JSON object of nodes", type(raw).__name__)
    prompt = {}
    for node_id, node in raw.items():
        if not isinstance(node, Mapping):
            raise prompt_error("invalid_prompt", "Every node of a prompt must be a JSON object", f"Node ID '#{node_id}'")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise prompt_error("invalid_prompt", "A node's inputs must be a JSON object", f"Node ID '#{node_id}'")
        prompt[str(node_id)] = {**node, "inputs": dict(inputs)}
    return prompt


def is_link(value: Any) -> bool:
    return isinstance(value, list)


def types_match(received: Any, expected: Any) -> bool:
    """ComfyUI's socket compatibility: equal (an any-type object may override `!=`), or comma sets intersect."""
    if not received != expected:
        return True
    if isinstance(received, list) and expected == "COMBO":  # a custom node outputting a list of choices
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return bool(got & want)


def coerce(type_name: Any, value: Any) -> Any:
    """Constant coercion exactly as ComfyUI: int(7.9) == 7, int("7.5") raises, bool("false") is True."""
    if isinstance(value, dict) and "__value__" in value:
        value = value["__value__"]
    if type_name == "INT":
        return int(value)
    if type_name == "FLOAT":
        return float(value)
    if type_name == "STRING":
        return str(value)
    if type_name == "BOOLEAN":
        return bool(value)
    return value


def validate_inputs_signature(cls: type) -> tuple[set[str], bool]:
    """Names taken by VALIDATE_INPUTS (their built-in checks are skipped) and whether it takes **kwargs."""
    fn = getattr(cls, "VALIDATE_INPUTS", None)
    if fn is None:
        return set(), False
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


class _Validator:
    """One validation run; memoizes each node's result as ComfyUI's `validated` dict does."""

    def __init__(self, prompt: dict[str, Any], registry: NodeRegistry):
        self.prompt = prompt
        self.registry = registry
        self.results: dict[str, tuple[bool, list[dict[str, Any]]]] = {}
        self.visiting: dict[str, None] = {}  # insertion-ordered set: the current DFS path
        self._classes: dict[str, tuple[type, dict, dict, set[str], bool]] = {}

    def node(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        """The memoized result of one node, its upstream checked depth first.

        Each check is a generator that yields the ids of the upstream nodes it needs and is sent their results, so
        the depth first walk runs on an explicit stack: a 5000-node chain does not exhaust Python's recursion limit
        (ComfyUI's recursive walk fails there). An exception leaving a check is thrown into the check that asked
        for it, exactly where a recursive call would have raised; a cycle is thrown at the node that closes it.
        """
        if node_id in self.results:
            return self.results[node_id]
        self.visiting[node_id] = None
        stack: list[tuple[str, Generator[str, Any, _Result]]] = [(node_id, self._check(node_id))]
        reply: Any = None
        thrown: BaseException | None = None
        while stack:
            current, check = stack[-1]
            try:
                wanted = check.throw(thrown) if thrown is not None else check.send(reply)
            except StopIteration as done:
                stack.pop()
                del self.visiting[current]
                self.results[current] = reply = done.value
                thrown = None
                continue
            except Exception as exc:
                stack.pop()
                del self.visiting[current]
                if not stack:
                    raise
                reply, thrown = None, exc
                continue
            reply, thrown = None, None
            if wanted in self.results:
                reply = self.results[wanted]
            elif wanted in self.visiting:  # a static cycle: ComfyUI recurses forever here
                path = list(self.visiting)
                thrown = _CycleError(path[path.index(wanted):] + [wanted])
            else:
                self.visiting[wanted] = None
                stack.append((wanted, self._check(wanted)))
        return self.results[node_id]

    def _class_info(self, class_type: str) -> tuple[type, dict, dict, set[str], bool]:
        """(class, required, optional, names VALIDATE_INPUTS takes, takes **kwargs), once per class per run."""
        if class_type not in self._classes:
            cls = self.registry.get(class_type)
            spec = cls.INPUT_TYPES()
            self._classes[class_type] = (cls, spec.get("required", {}), spec.get("optional", {}),
                                         *validate_inputs_signature(cls))
        return self._classes[class_type]

    def _check(self, node_id: str) -> Generator[str, Any, _Result]:
        node = self.prompt[node_id]
        cls, required, optional, skip_checks, takes_kwargs = self._class_info(node["class_type"])
        inputs = node["inputs"]
        errors: list[dict[str, Any]] = []
        valid = True
        linked_types: dict[str, Any] = {}
        for name, config in [*required.items(), *optional.items()]:
            if name not in inputs:
                if name in required:
                    errors.append(_error("required_input_missing", "Required input is missing", name,
                                         {"input_name": name}))
                continue
            value = inputs[name]
            if is_link(value):
                ok, received = yield from self._check_link(name, value, config, skip_checks, errors)
                valid &= ok
                if received is not None:
                    linked_types[name] = received
            else:
                skip = set(inputs) if takes_kwargs else skip_checks
                ok = self._check_constant(name, config, inputs, skip, errors)
                valid &= ok
        if hasattr(cls, "VALIDATE_INPUTS"):
            errors += self._custom(cls, inputs, skip_checks, takes_kwargs, linked_types)
        return valid and not errors, errors

    def _check_link(self, name, value, config, skip_checks, errors) -> Generator[str, Any, tuple[bool, Any]]:
        info = {"input_name": name, "input_config": list(config), "received_value": value}
        if len(value) != 2:
            errors.append(_error("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                                 name, info))
            return False, None
        source_id, slot = str(value[0]), value[1]
        source = self.prompt.get(source_id)
        if source is None:
            errors.append(_error("bad_linked_input", "Linked node does not exist",
                                 f"{name}: node '{source_id}' is not in the prompt", info))
            return False, None
        return_types = getattr(self.registry.get(source["class_type"]), "RETURN_TYPES", ())
        if not isinstance(slot, int) or not 0 <= slot < len(return_types):
            errors.append(_error("bad_linked_input", "Linked output does not exist",
                                 f"{name}: node '{source_id}' ({source['class_type']}) has no output {slot!r}", info))
            return False, None
        received = return_types[slot]
        expected = config[0]
        if "input_types" not in skip_checks and not types_match(received, expected):
            errors.append(_error(
                "return_type_mismatch", "Return type mismatch between linked nodes",
                f"{name}, received_type({received}) mismatch input_type({expected})",
                {"input_name": name, "input_config": list(config), "received_type": received, "linked_node": value}))
            return False, received
        return (yield from self._check_upstream(source_id, name, config, value)), received

    def _check_upstream(self, source_id: str, name: str, config: Any, link: list) -> Generator[str, Any, bool]:
        try:
            ok, _ = yield source_id  # `node()` checks it (or throws its exception in here)
            return ok
        except _CycleError:
            raise
        except Exception as exc:  # the upstream node's INPUT_TYPES / VALIDATE_INPUTS raised
            self.results[source_id] = (False, [_error(
                "exception_during_inner_validation", "Exception when validating inner node", str(exc),
                {"input_name": name, "input_config": list(config), "exception_message": str(exc),
                 "exception_type": exception_type_name(exc), "traceback": traceback.format_tb(exc.__traceback__),
                 "linked_node": link})])
            return False

    def _check_constant(self, name, config, inputs, skip_checks, errors) -> bool:
        type_name = config[0]
        options = config[1] if len(config) > 1 and isinstance(config[1], dict) else {}
        raw = inputs[name]
        try:
            value = coerce(type_name, raw)
        except Exception as exc:
            errors.append(_error(
                "invalid_input_type", f"Failed to convert an input value to a {type_name} value",
                f"{name}, {raw}, {exc}",
                {"input_name": name, "input_config": list(config), "received_value": raw,
                 "exception_message": str(exc)}))
            return False
        inputs[name] = value
        if name in skip_checks:
            return True
        return self._check_range(name, config, options, value, errors)

    def _check_range(self, name, config, options, value, errors) -> bool:
        info = {"input_name": name, "input_config": list(config), "received_value": value}
        if isinstance(value, (int, float)):
            if "min" in options and value < options["min"]:
                errors.append(_error("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}",
                                     name, info))
                return False
            if "max" in options and value > options["max"]:
                errors.append(_error("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                                     name, info))
                return False
        choices = config[0]
        if choices == "COMBO":  # a V3 schema combo lists its choices under "options"
            choices = options.get("options", [])
        if isinstance(choices, list) and value not in choices:
            listed = f"(list of length {len(choices)})" if len(choices) > MAX_LISTED_CHOICES else str(choices)
            if len(choices) > MAX_LISTED_CHOICES:
                info["input_config"] = None
            errors.append(_error("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}", info))
            return False
        return True

    def _custom(self, cls, inputs, names, takes_kwargs, linked_types) -> list[dict[str, Any]]:
        wanted = set(inputs) if takes_kwargs else names
        args = {n: (None if is_link(inputs[n]) else inputs[n]) for n in inputs if n in wanted and n != "input_types"}
        if "input_types" in names:
            args["input_types"] = linked_types
        result = cls.VALIDATE_INPUTS(**args)
        if result is True:
            return []
        return [_error("custom_validation_failed", "Custom validation failed for node",
                       name if result is False else f"{name} - {result}", {"input_name": name})
                for name in args if name != "input_types"]


class _CycleError(Exception):
    def __init__(self, cycle: list[str]):
        self.cycle = cycle
        super().__init__("Dependency cycle detected: " + " -> ".join(cycle))


def exception_type_name(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ in (None, "builtins") else f"{cls.__module__}.{cls.__qualname__}"


def upstream(prompt: Mapping[str, Any], node_id: str) -> set[str]:
    """Every node `node_id` depends on (through links to nodes that exist), itself included."""
    seen, stack = set(), [node_id]
    while stack:
        current = stack.pop()
        if current in seen or current not in prompt:
            continue
        seen.add(current)
        stack += [str(v[0]) for v in prompt[current]["inputs"].values() if is_link(v) and v]
    return seen


def check_classes(prompt: Mapping[str, Any], registry: NodeRegistry) -> None:
    for node_id, node in prompt.items():
        if "class_type" not in node:
            raise prompt_error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                               f"Node ID '#{node_id}'")
        class_type = node["class_type"]
        if not isinstance(class_type, str) or class_type not in registry:  # a list or dict is not even hashable
            raise prompt_error("invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                               f"Node ID '#{node_id}'")


def select_outputs(prompt, registry, targets: Iterable[str] | None) -> list[str]:
    outputs = [i for i, n in prompt.items() if getattr(registry.get(n["class_type"]), "OUTPUT_NODE", False)]
    if targets is not None:
        wanted = {str(t) for t in targets}
        outputs = [o for o in outputs if o in wanted]
    if not outputs:
        raise prompt_error("prompt_no_outputs", "Prompt has no outputs")
    return outputs


def validate(prompt: Mapping[str, Any], registry: NodeRegistry,
             partial_execution_targets: Iterable[str] | None = None) -> ValidPrompt:
    """Validate a decoded prompt; raise `PromptError` (ComfyUI's 400 body) unless at least one output is valid."""
    prompt = {node_id: {**node, "inputs": dict(node.get("inputs", {}))} for node_id, node in prompt.items()}  # coercion target
    check_classes(prompt, registry)
    outputs = select_outputs(prompt, registry, partial_execution_targets)
    validator = _Validator(prompt, registry)
    good, failed = [], []
    for output in outputs:
        try:
            ok, errors = validator.node(output)
        except _CycleError as exc:
            ok, errors = False, []
            for node_id in set(exc.cycle):
                validator.results[node_id] = (False, [_error(
                    "dependency_cycle", "Dependency cycle detected", " -> ".join(exc.cycle),
                    {"cycle": exc.cycle})])
            errors = validator.results.get(output, (False, []))[1]
        except Exception as exc:
            ok, errors = False, [_error("exception_during_validation", "Exception when validating node", str(exc),
                                        {"exception_type": exception_type_name(exc),
                                         "traceback": traceback.format_tb(exc.__traceback__)})]
            validator.results[output] = (False, errors)
        (good if ok else failed).append((output, errors))
    node_errors = _node_errors(prompt, validator.results, [o for o, _ in failed])
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, errs in failed for e in errs)
        raise prompt_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details,
                           node_errors)
    return ValidPrompt(prompt=prompt, outputs=[o for o, _ in good], node_errors=node_errors)


def _node_errors(prompt, results, failed_outputs: list[str]) -> dict[str, Any]:
    """Nodes with their own errors, each with the failed outputs that depend on it."""
    node_errors: dict[str, Any] = {}
    for output in failed_outputs:
        for node_id in upstream(prompt, output):
            ok, errors = results.get(node_id, (True, []))
            if ok or not errors:
                continue
            entry = node_errors.setdefault(node_id, {"errors": errors, "dependent_outputs": [],
                                                     "class_type": prompt[node_id]["class_type"]})
            entry["dependent_outputs"].append(output)
    return node_errors
