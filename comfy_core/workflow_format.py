"""UI-format workflows (what ComfyUI's web frontend saves: `{"nodes": [...], "links": [...], ...}`) to API-format
prompts (`{"3": {"class_type", "inputs", "_meta"}}`), following the frontend's `graphToPrompt` (frontend 1.28):

- widget values map, in widget order, to the node's widget inputs (required then optional); the extra
  `control_after_generate` value of seed-like widgets and trailing button values (image upload) are skipped;
- links become `[origin_id, origin_slot]`, resolved through `Reroute` nodes, bypassed nodes (mode 4: their input of
  a matching type feeds the consumer) and subgraphs (`definitions.subgraphs`; inner ids are `"outer:inner"`);
- a `PrimitiveNode` writes its value into the widgets it feeds; muted nodes (mode 2), notes and other frontend-only
  nodes produce nothing, and inputs linked to nodes absent from the prompt are dropped;
- prompt widgets with `dynamicPrompts` lose their `//` and `/* */` comments and pick one `{a|b}` choice.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import PromptError

MUTED, BYPASSED = 2, 4
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20
VIRTUAL_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
SEED_NAMES = ("seed", "noise_seed")  # the frontend gives these a control widget even without the spec flag


def is_ui_workflow(data: Any) -> bool:
    """True for a UI-format workflow (nodes + links lists), False for an API prompt or a POST /prompt body."""
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


@dataclass(frozen=True)
class _Link:
    origin_id: int
    origin_slot: int
    target_id: int
    target_slot: int
    type: str


@dataclass
class _Graph:
    """One level of the workflow: the root graph, or a subgraph definition seen through one instance node."""

    nodes: dict[int, dict[str, Any]]
    links: dict[int, _Link]
    path: tuple[str, ...] = ()  # instance node ids from the root, for "outer:inner" ids
    parent: _Graph | None = None
    instance: dict[str, Any] | None = None  # the subgraph node (in `parent`) this graph is seen through

    def exec_id(self, node_id: int) -> str:
        return ":".join((*self.path, str(node_id)))


@dataclass
class _Resolved:
    """What an input resolves to: a link to an executed node, or a plain value (a promoted subgraph widget)."""

    link: list[Any] | None = None
    value: Any = None


@dataclass
class _Converter:
    object_info: dict[str, Any]
    subgraphs: dict[str, dict[str, Any]]
    rng: random.Random = field(default_factory=random.Random)
    output: dict[str, dict[str, Any]] = field(default_factory=dict)

    # -- graphs ----------------------------------------------------------------------------------------------------
    def convert(self, graph: _Graph) -> None:
        for node in graph.nodes.values():
            node_type = str(node.get("type"))
            if node_type in self.subgraphs:
                self.convert(self._inner_graph(graph, node))
            elif node_type not in VIRTUAL_TYPES and node.get("mode", 0) not in (MUTED, BYPASSED):
                self.output[graph.exec_id(node["id"])] = self._api_node(graph, node)

    def _inner_graph(self, graph: _Graph, instance: dict[str, Any]) -> _Graph:
        if len(graph.path) > 32:
            raise _error("invalid_workflow", "Subgraphs nest too deep (a subgraph contains itself?)")
        definition = self.subgraphs[instance["type"]]
        return _Graph(_nodes_by_id(definition.get("nodes", [])), _links_by_id(definition.get("links", [])),
                      (*graph.path, str(instance["id"])), graph, instance)

    # -- one node --------------------------------------------------------------------------------------------------
    def _api_node(self, graph: _Graph, node: dict[str, Any]) -> dict[str, Any]:
        class_type = str(node.get("type"))
        spec = self.object_info.get(class_type)
        if spec is None:
            raise _error("invalid_workflow", f"Node type not found: {class_type} (node {graph.exec_id(node['id'])})",
                         class_type)
        inputs = self._widget_inputs(graph, node, spec)
        for index, slot in enumerate(node.get("inputs") or []):
            resolved = self._resolve_input(graph, node, index)
            if resolved is None:
                continue
            inputs[slot["name"]] = resolved.link if resolved.link is not None else _wrap(resolved.value)
        title = node.get("title") or spec.get("display_name") or class_type
        return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}

    def _widget_inputs(self, graph: _Graph, node: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
        values = widget_values(spec, node.get("widgets_values"))
        for name, value in list(values.items()):
            feeder = self._primitive_feeding(graph, node, name)
            if feeder is not None:  # the PrimitiveNode's applyToGraph sets the widget it feeds
                value = (feeder.get("widgets_values") or [None])[0]
            if isinstance(value, str) and _input_options(spec, name).get("dynamicPrompts"):
                value = dynamic_prompt(value, self.rng)
            values[name] = _wrap(value)
        return values

    def _primitive_feeding(self, graph: _Graph, node: dict[str, Any], name: str) -> dict[str, Any] | None:
        for slot in node.get("inputs") or []:
            if slot.get("name") == name and slot.get("link") is not None and slot.get("widget"):
                link = graph.links.get(slot["link"])
                origin = graph.nodes.get(link.origin_id) if link else None
                if origin is not None and origin.get("type") == "PrimitiveNode":
                    return origin
        return None

    # -- links (ExecutableNodeDTO.resolveInput / resolveOutput) ----------------------------------------------------
    def _resolve_input(self, graph: _Graph, node: dict[str, Any], index: int,
                       wanted: str | None = None, depth: int = 0) -> _Resolved | None:
        if depth > 256:
            raise _error("invalid_workflow", f"Circular links around node {graph.exec_id(node['id'])}")
        slots = node.get("inputs") or []
        if index >= len(slots) or slots[index].get("link") is None:
            return None
        slot = slots[index]
        link = graph.links.get(slot["link"])
        if link is None:
            raise _error("invalid_workflow", f"Node {graph.exec_id(node['id'])} input {slot.get('name')!r} "
                         f"uses link {slot['link']}, which the workflow does not have")
        if link.origin_id == SUBGRAPH_INPUT and graph.parent is not None:
            return self._resolve_subgraph_input(graph, link.origin_slot, depth)
        origin = graph.nodes.get(link.origin_id)
        if origin is None:
            raise _error("invalid_workflow", f"Link {slot['link']} starts at node {link.origin_id}, which is missing")
        return self._resolve_output(graph, origin, link.origin_slot, wanted or slot.get("type", "*"), depth + 1)

    def _resolve_subgraph_input(self, graph: _Graph, slot: int, depth: int) -> _Resolved | None:
        """Input `slot` of the subgraph definition, seen from outside: the instance's input of the same name (saved
        instances list only linked inputs), else the value of the widget promoted onto the instance."""
        instance, parent = graph.instance, graph.parent
        declared = self.subgraphs[instance["type"]].get("inputs") or []
        if slot >= len(declared):
            return None
        name = declared[slot].get("name")
        outer = instance.get("inputs") or []
        index = next((i for i, s in enumerate(outer) if s.get("name") == name), -1)
        if index >= 0 and outer[index].get("link") is not None:
            return self._resolve_input(parent, instance, index, None, depth + 1)
        return _promoted_widget(instance, name)

    def _resolve_output(self, graph: _Graph, node: dict[str, Any], slot: int, wanted: str,
                        depth: int) -> _Resolved | None:
        if node.get("mode", 0) == BYPASSED:
            index = _bypass_input(node, slot, wanted)
            return None if index < 0 else self._resolve_input(graph, node, index, None, depth)
        node_type = str(node.get("type"))
        if node_type in self.subgraphs:
            inner = self._inner_graph(graph, node)
            link = next((k for k in inner.links.values()
                         if k.target_id == SUBGRAPH_OUTPUT and k.target_slot == slot), None)
            if link is None:
                return None
            if link.origin_id == SUBGRAPH_INPUT:
                return self._resolve_subgraph_input(inner, link.origin_slot, depth)
            origin = inner.nodes.get(link.origin_id)
            return None if origin is None else self._resolve_output(inner, origin, link.origin_slot, wanted, depth + 1)
        if node_type in VIRTUAL_TYPES:  # a Reroute passes its input on; a PrimitiveNode has none
            return self._resolve_input(graph, node, slot, wanted, depth + 1)
        return _Resolved(link=[graph.exec_id(node["id"]), int(slot)])


# -- widgets -----------------------------------------------------------------------------------------------------------
def widget_values(spec: dict[str, Any], values: Any) -> dict[str, Any]:
    """{input name: value} of a node's widgets from its saved `widgets_values` (a list in widget order, or a dict)."""
    widgets = _widget_specs(spec)
    if isinstance(values, dict):
        return {name: values[name] for name, _ in widgets if name in values}
    values = list(values or [])
    values = _drop_legacy_force_inputs(spec, values)
    named: dict[str, Any] = {}
    position = 0
    for name, options in widgets:
        if position >= len(values):
            break
        named[name] = values[position]
        position += 2 if _has_control(name, options) else 1
    return named


def _widget_specs(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(name, options) of the inputs the frontend shows as widgets, in its order: required, then optional."""
    return [(name, options) for name, type_, options in _inputs(spec)
            if _is_widget_type(type_) and not options.get("forceInput")]


def _inputs(spec: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    found = []
    declared = spec.get("input") or {}
    order = spec.get("input_order") or {}
    for section in ("required", "optional"):
        entries = declared.get(section) or {}
        for name in order.get(section) or list(entries):
            if name in entries:
                entry = entries[name]
                options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
                found.append((name, entry[0], options))
    return found


def _is_widget_type(type_: Any) -> bool:
    return isinstance(type_, list) or type_ in WIDGET_TYPES


def _has_control(name: str, options: dict[str, Any]) -> bool:
    return bool(options.get("control_after_generate")) or name in SEED_NAMES


def _input_options(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next((options for n, _, options in _inputs(spec) if n == name), {})


def _drop_legacy_force_inputs(spec: dict[str, Any], values: list[Any]) -> list[Any]:
    """Old workflows stored a value for `forceInput` inputs too; the frontend drops them when the count says so."""
    slots = [(name, type_, options) for name, type_, options in _inputs(spec)
             if (_is_widget_type(type_) or options.get("forceInput"))]
    if not any(options.get("forceInput") for _, _, options in slots):
        return values
    sizes = [2 if _has_control(name, options) else 1 for name, _, options in slots]
    if sum(sizes) != len(values):
        return values
    kept, position = [], 0
    for (name, _, options), size in zip(slots, sizes):
        if not options.get("forceInput"):
            kept.extend(values[position:position + size])
        position += size
    return kept


def _promoted_widget(instance: dict[str, Any], name: str) -> _Resolved | None:
    """The value of the subgraph node's own widget for input `name`: `properties.proxyWidgets` lists the widgets
    shown on the node (["-1", name] for the node's input widgets), `widgets_values` their values in that order."""
    proxies = (instance.get("properties") or {}).get("proxyWidgets") or []
    index = next((i for i, p in enumerate(proxies) if list(p) == ["-1", name]), -1)
    values = instance.get("widgets_values") or []
    return _Resolved(value=values[index]) if 0 <= index < len(values) else None


def _wrap(value: Any) -> Any:
    return {"__value__": value} if isinstance(value, list) else value


def dynamic_prompt(text: str, rng: random.Random) -> str:
    """The frontend's dynamic prompt: strip comments, replace each `{a|b|c}` by one choice (nested ok)."""
    return _expand(re.sub(r"/\*[\s\S]*?\*/|//.*", "", text), rng)


def _expand(text: str, rng: random.Random) -> str:
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            out.append(text[i:i + 2])
            i += 2
        elif char == "{":
            choices, i = _choice_block(text, i + 1)
            out.append(_expand(rng.choice(choices), rng))
        else:
            out.append(char)
            i += 1
    return re.sub(r"\\([{}|])", r"\1", "".join(out))


def _choice_block(text: str, i: int) -> tuple[list[str], int]:
    """The options of the `{...}` block that starts at `i` (just past the brace) and the index after it."""
    options, choice, depth = [], "", 0
    while i < len(text):
        char = text[i]
        i += 1
        if char == "\\":
            choice += "\\" + text[i:i + 1]
            i += 1
            continue
        if char == "}" and not depth:
            break
        if char == "|" and not depth:
            options.append(choice)
            choice = ""
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        choice += char
    options.append(choice)
    return options, i


# -- links and bypass ----------------------------------------------------------------------------------------------
def _bypass_input(node: dict[str, Any], slot: int, wanted: str) -> int:
    """Which input of a bypassed node stands in for its output `slot` (ExecutableNodeDTO#getBypassSlotIndex)."""
    inputs = node.get("inputs") or []
    if wanted in ("*", ""):
        return slot if len(inputs) > slot else (0 if inputs else -1)
    outputs = node.get("outputs") or []
    output_type = outputs[slot].get("type", "*") if slot < len(outputs) else "*"
    if slot < len(inputs) and _valid(inputs[slot].get("type"), output_type) and _valid(inputs[slot].get("type"),
                                                                                         wanted):
        return slot
    exact = next((i for i, s in enumerate(inputs) if s.get("type") == wanted), -1)
    if exact >= 0:
        return exact
    return next((i for i, s in enumerate(inputs)
                 if _valid(s.get("type"), output_type) and _valid(s.get("type"), wanted)), -1)


def _valid(a: Any, b: Any) -> bool:
    """LiteGraph.isValidConnection: equal, a wildcard, or comma-separated type lists that share a type."""
    a, b = str(a or "*").upper(), str(b or "*").upper()
    if a == b or "*" in (a, b) or a in ("", "0") or b in ("", "0"):
        return True
    return bool(set(a.split(",")) & set(b.split(",")))


def _nodes_by_id(nodes: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {node["id"]: node for node in nodes if isinstance(node, dict) and "id" in node}


def _links_by_id(links: list[Any]) -> dict[int, _Link]:
    """Root graphs store links as [id, origin, origin_slot, target, target_slot, type], subgraphs as objects."""
    found = {}
    for link in links or []:
        if isinstance(link, dict):
            found[link["id"]] = _Link(link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                                      str(link.get("type", "*")))
        elif isinstance(link, list) and len(link) >= 5:
            found[link[0]] = _Link(link[1], link[2], link[3], link[4], str(link[5]) if len(link) > 5 else "*")
    return found


def _error(kind: str, message: str, class_type: str | None = None) -> PromptError:
    extra = {"class_type": class_type} if class_type else {}
    return PromptError({"error": {"type": kind, "message": message, "details": message, "extra_info": extra},
                        "node_errors": {}})


def workflow_to_prompt(workflow: dict[str, Any], object_info: dict[str, Any],
                       rng: random.Random | None = None) -> dict[str, Any]:
    """The API prompt the ComfyUI frontend would queue for `workflow` (a UI-format workflow).

    `object_info` is the engine's (`engine.object_info()`); `rng` picks dynamic-prompt `{a|b}` choices.
    Raises PromptError for a malformed workflow or a node type the engine does not have.
    """
    if not is_ui_workflow(workflow):
        raise _error("invalid_workflow", "Not a UI-format workflow: expected 'nodes' and 'links' lists")
    if any(str(n.get("type", "")).startswith("workflow>") for n in workflow["nodes"] if isinstance(n, dict)):
        raise _error("invalid_workflow", "Legacy group nodes are not supported: open the workflow in the ComfyUI "
                     "frontend (1.24+) and convert the group nodes to subgraphs")
    definitions = (workflow.get("definitions") or {}).get("subgraphs") or []
    converter = _Converter(object_info, {d["id"]: d for d in definitions if isinstance(d, dict) and "id" in d},
                           rng or random.Random())
    try:
        converter.convert(_Graph(_nodes_by_id(workflow["nodes"]), _links_by_id(workflow["links"])))
    except (KeyError, TypeError, IndexError, AttributeError) as error:
        raise _error("invalid_workflow", f"Malformed UI workflow: {type(error).__name__}: {error}") from error
    output = converter.output
    for node in output.values():  # inputs linked to nodes that produce nothing (muted, dropped) go away
        for name, value in list(node["inputs"].items()):
            if isinstance(value, list) and len(value) == 2 and value[0] not in output:
                del node["inputs"][name]
    return output
