"""ComfyUI's dynamic execution: run order, lazy inputs, node expansion (GraphBuilder), ExecutionBlocker, rawLink,
DYNPROMPT, and runtime dependency cycles. Nodes here are ComfyUI-style custom node classes, registered as such."""
from __future__ import annotations

import pytest
from fixtures_nodes import engine_config

from comfy_core import Engine, NodeExecutionError
from comfy_core.dynamic_graph import DynamicPrompt, ExecutionList
from comfy_core.graph_utils import ExecutionBlocker, GraphBuilder

CALLS: list[str] = []  # node ids in the order their functions ran (reset per test)


class Const:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -1000, "max": 1000})},
                "hidden": {"uid": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, value, uid):
        CALLS.append(uid)
        return (value,)


class Inc:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}, "hidden": {"uid": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, value, uid):
        CALLS.append(uid)
        return (value + 1,)


class Out:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}, "hidden": {"uid": "UNIQUE_ID"}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    def run(self, value, uid):
        CALLS.append(uid)
        return {"ui": {"value": [value]}}


class LazySwitch:
    """Evaluates only the branch it picks; `check_lazy_status` gets unevaluated inputs as None."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"pick_first": ("BOOLEAN", {"default": True}),
                             "first": ("INT", {"lazy": True}), "second": ("INT", {"lazy": True})},
                "hidden": {"uid": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"
    STATUS_CALLS: list = []

    def check_lazy_status(self, pick_first, first=None, second=None, uid=None):
        LazySwitch.STATUS_CALLS.append((first, second))
        wanted = "first" if pick_first else "second"
        return [wanted] if (first if pick_first else second) is None else []

    def run(self, pick_first, first, second, uid):
        CALLS.append(uid)
        return (first if pick_first else second,)


class AddN:
    """Expands into a chain of `n` Inc nodes (ids from GraphBuilder) and returns the chain's end."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "n": ("INT", {"default": 1, "min": 0, "max": 50})},
                "optional": {"show": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, value, n, show=False):
        CALLS.append("AddN")
        graph = GraphBuilder()
        link = value
        for _ in range(n):
            link = graph.node("Inc", value=link).out(0)
        if show:
            graph.node("Out", value=link)
        return {"result": (link,), "expand": graph.finalize(), "ui": {"expanded": [n]}}


class BadExpand:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mode": (["duplicate", "unknown", "cycle"],)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, mode):
        if mode == "duplicate":  # "1" is a node of the prompt
            return {"result": (["1", 0],), "expand": {"1": {"class_type": "Const", "inputs": {"value": 1}}}}
        if mode == "unknown":
            return {"result": (["x", 0],), "expand": {"x": {"class_type": "NoSuchNode", "inputs": {}}}}
        # the new node waits on the expanding node, which waits on the new node
        return {"result": (["c", 0],), "expand": {"c": {"class_type": "Inc", "inputs": {"value": ["5", 0]}}}}


class Gate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "open": ("BOOLEAN",)},
                "optional": {"message": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, value, open, message=""):
        return (value,) if open else (ExecutionBlocker(message or None),)


class RawLink:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"src": ("INT", {"rawLink": True})}, "hidden": {"dyn": "DYNPROMPT"}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "test"

    def run(self, src, dyn):
        return {"ui": {"link": [src], "source_class": [dyn.get_node(src[0])["class_type"]]}}


NODES = {"Const": Const, "Inc": Inc, "Out": Out, "LazySwitch": LazySwitch, "AddN": AddN, "BadExpand": BadExpand,
         "Gate": Gate, "RawLink": RawLink}


@pytest.fixture
def engine(tmp_path):
    CALLS.clear()
    LazySwitch.STATUS_CALLS.clear()
    config = engine_config(tmp_path)
    with Engine(config) as eng:
        eng.register_nodes(NODES)
        yield eng


def events_of(engine, kind):
    seen = []
    engine.events.subscribe(lambda m: seen.append(m) if m.type == kind else None, client_id="c")
    return seen


def const(value):
    return {"class_type": "Const", "inputs": {"value": value}}


def test_order_prefers_outputs_then_their_feeders(engine):
    # ComfyUI runs 1 then the ready output 4 before 2 -> 3 (a static DFS would give 1, 2, 3, 4)
    prompt = {"1": const(5), "2": {"class_type": "Inc", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Out", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "Out", "inputs": {"value": ["1", 0]}}}
    executing = events_of(engine, "executing")
    engine.run(prompt, client_id="c")
    assert CALLS == ["1", "4", "2", "3"]
    assert [m.event.node for m in executing if m.event.node] == ["1", "4", "2", "3"]


def test_order_picks_the_node_two_steps_from_an_output_first():
    # ready: a (feeds x, feeds nothing output-ish) and b (b -> c -> out): b is two steps from the output
    prompt = {"a": {"class_type": "K", "inputs": {}}, "b": {"class_type": "K", "inputs": {}},
              "x": {"class_type": "K", "inputs": {"v": ["a", 0]}},
              "c": {"class_type": "K", "inputs": {"v": ["b", 0], "w": ["x", 0]}},
              "out": {"class_type": "K", "inputs": {"v": ["c", 0]}}}
    order = ExecutionList(DynamicPrompt(prompt), is_done=lambda n: False, is_output=lambda n: n == "out",
                          is_async=lambda n: False, lazy_inputs=lambda n: frozenset())
    order.add_node("out")
    ran = []
    while not order.is_empty():
        ran.append(order.next_node())
        order.complete(ran[-1])
    assert ran == ["b", "a", "x", "c", "out"]


def test_lazy_switch_evaluates_only_the_picked_branch(engine):
    prompt = {"1": const(1), "2": const(2), "3": {"class_type": "Inc", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "LazySwitch", "inputs": {"pick_first": False, "first": ["1", 0],
                                                           "second": ["3", 0]}},
              "5": {"class_type": "Out", "inputs": {"value": ["4", 0]}}}
    result = engine.run(prompt)
    assert result.outputs["5"] == {"value": [3]}
    assert "1" not in CALLS and CALLS.index("2") < CALLS.index("3") < CALLS.index("4")
    assert LazySwitch.STATUS_CALLS == [(None, None), (None, 3)]  # asked once, then satisfied


def test_lazy_input_from_a_cached_node_needs_no_request(engine):
    first = {"2": const(7), "9": {"class_type": "Out", "inputs": {"value": ["2", 0]}}}
    engine.run(first)
    prompt = {**first, "4": {"class_type": "LazySwitch", "inputs": {"pick_first": False, "first": 0,
                                                                    "second": ["2", 0]}},
              "5": {"class_type": "Out", "inputs": {"value": ["4", 0]}}}
    CALLS.clear()
    LazySwitch.STATUS_CALLS.clear()
    assert engine.run(prompt).outputs["5"] == {"value": [7]}
    assert LazySwitch.STATUS_CALLS == [(0, 7)] and "2" not in CALLS


def test_expansion_runs_the_subgraph_and_resolves_links(engine):
    prompt = {"1": const(10), "2": {"class_type": "AddN", "inputs": {"value": ["1", 0], "n": 3, "show": True}},
              "3": {"class_type": "Out", "inputs": {"value": ["2", 0]}}}
    executed = events_of(engine, "executed")
    result = engine.run(prompt, client_id="c")
    assert result.outputs["3"] == {"value": [13]}
    assert result.outputs["2"] == {"expanded": [3]}
    # GraphBuilder ids: "<parent>.<call>.<graph>.<n>"; the inner Out shows under its own id, displayed as node 2
    inner = ["2.0.0.1", "2.0.0.2", "2.0.0.3"]
    assert [c for c in CALLS if c.startswith("2.")] == inner + ["2.0.0.4"]
    assert result.outputs["2.0.0.4"] == {"value": [13]}
    shown = {m.event.node: m.event.display_node for m in executed}
    assert shown["2.0.0.4"] == "2" and shown["3"] == "3"
    meta = engine.history_item(result.prompt_id)[result.prompt_id]["meta"]
    assert meta["2.0.0.4"] == {"node_id": "2.0.0.4", "display_node": "2", "parent_node": "2", "real_node_id": "2"}
    CALLS.clear()
    assert engine.run(prompt).outputs["3"] == {"value": [13]}
    assert CALLS == []  # the expanding node is cached with its resolved output, the Out node too


def test_expansion_of_zero_nodes_passes_the_value_through(engine):
    prompt = {"1": const(4), "2": {"class_type": "AddN", "inputs": {"value": ["1", 0], "n": 0}},
              "3": {"class_type": "Out", "inputs": {"value": ["2", 0]}}}
    assert engine.run(prompt).outputs["3"] == {"value": [4]}


@pytest.mark.parametrize("mode, kind", [("duplicate", "DuplicateNodeError"), ("unknown", "NodeExecutionError")])
def test_bad_expansions_fail_the_node_and_the_engine_keeps_serving(engine, mode, kind):
    prompt = {"1": const(1), "5": {"class_type": "BadExpand", "inputs": {"mode": mode}},
              "6": {"class_type": "Out", "inputs": {"value": ["5", 0]}}}
    with pytest.raises(NodeExecutionError) as info:
        engine.run(prompt)
    assert info.value.details["node_id"] == "5" and info.value.details["exception_type"].endswith(kind)
    assert engine.run({"1": const(2), "9": {"class_type": "Out", "inputs": {"value": ["1", 0]}}}).outputs["9"]


def test_runtime_cycle_is_an_execution_error_blaming_the_expanding_node(engine):
    prompt = {"5": {"class_type": "BadExpand", "inputs": {"mode": "cycle"}},
              "6": {"class_type": "Out", "inputs": {"value": ["5", 0]}}}
    with pytest.raises(NodeExecutionError) as info:
        engine.run(prompt)
    details = info.value.details
    assert details["node_id"] == "5" and details["exception_type"] == "graph.DependencyCycleError"
    assert details["exception_message"] == "Dependency cycle detected" and details["traceback"] == []


def test_blocker_skips_downstream_nodes_silently(engine):
    prompt = {"1": const(3), "2": {"class_type": "Gate", "inputs": {"value": ["1", 0], "open": False}},
              "3": {"class_type": "Inc", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "Out", "inputs": {"value": ["3", 0]}},
              "5": {"class_type": "Out", "inputs": {"value": ["1", 0]}}}
    errors = events_of(engine, "execution_error")
    result = engine.run(prompt, client_id="c")
    assert "3" not in CALLS and "4" not in CALLS and "5" in CALLS
    assert "4" not in result.outputs and result.outputs["5"] == {"value": [3]}
    assert errors == []


def test_blocker_with_a_message_reports_once_and_the_prompt_succeeds(engine):
    prompt = {"1": const(3), "2": {"class_type": "Gate", "inputs": {"value": ["1", 0], "open": False,
                                                                    "message": "closed"}},
              "3": {"class_type": "Inc", "inputs": {"value": ["2", 0]}},
              "4": {"class_type": "Out", "inputs": {"value": ["3", 0]}}}
    errors = events_of(engine, "execution_error")
    result = engine.run(prompt, client_id="c")
    history = engine.history_item(result.prompt_id)[result.prompt_id]
    assert history["status"]["status_str"] == "success"
    assert [(m.event.node_id, m.event.exception_message, m.event.exception_type) for m in errors] == [
        ("3", "Execution Blocked: closed", "ExecutionBlocked")]


def test_open_gate_passes_values(engine):
    prompt = {"1": const(3), "2": {"class_type": "Gate", "inputs": {"value": ["1", 0], "open": True}},
              "4": {"class_type": "Out", "inputs": {"value": ["2", 0]}}}
    assert engine.run(prompt).outputs["4"] == {"value": [3]}


def test_raw_link_input_gets_the_link_and_dynprompt_the_live_graph(engine):
    prompt = {"1": const(3), "2": {"class_type": "RawLink", "inputs": {"src": ["1", 0]}}}
    assert engine.run(prompt).outputs["2"] == {"link": [["1", 0]], "source_class": ["Const"]}


def test_graph_builder_needs_a_running_node_for_its_default_prefix():
    from comfy_core.context import NoContextError

    with pytest.raises(NoContextError):
        GraphBuilder()
    graph = GraphBuilder(prefix="p.")
    a = graph.node("Const", value=1)
    b = graph.node("Inc", value=a.out(0))
    assert graph.finalize() == {"p.1": {"class_type": "Const", "inputs": {"value": 1}},
                                "p.2": {"class_type": "Inc", "inputs": {"value": ["p.1", 0]}}}
    assert graph.lookup_node("2") is b
