"""Engine + executor: running, caching by input signature, list mapping, failures, interrupts, queue, history."""
import threading
import time

import pytest
from fixtures_nodes import engine_config

from comfy_core import Engine, EngineConfig, Interrupted, NodeExecutionError, PromptError
from engine_test_nodes import NODES, Number, Volatile


@pytest.fixture
def engine(tmp_path):
    config = engine_config(tmp_path)
    with Engine(config) as eng:
        eng.register_nodes(NODES)
        yield eng


class Recorder:
    def __init__(self, engine, client_id=None):
        self.messages = []
        self.sub = engine.events.subscribe(self.messages.append, client_id=client_id)

    def types(self, prompt_id=None):
        return [m.type for m in self.messages
                if prompt_id is None or getattr(m.event, "prompt_id", prompt_id) == prompt_id]

    def of(self, kind):
        return [m.event.to_builtins() for m in self.messages if m.type == kind]


def chain(value, seed_node="1"):
    return {seed_node: {"class_type": "Number", "inputs": {"value": value}},
            "2": {"class_type": "Add", "inputs": {"a": 1, "b": [seed_node, 0]}},
            "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 10}},
            "9": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}


def test_run_returns_ui_and_history(engine):
    result = engine.run(chain(5))
    assert result.outputs == {"9": {"text": ["16"], "node": ["9"], "nodes_in_prompt": [4]}}
    entry = engine.history_item(result.prompt_id)[result.prompt_id]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                           "execution_success"]
    assert entry["prompt"][1] == result.prompt_id and entry["prompt"][4] == ["9"]


def test_event_sequence_for_a_client(engine):
    rec = Recorder(engine, client_id="me")
    other = Recorder(engine, client_id="someone-else")
    sub = engine.submit(chain(1), client_id="me")
    engine.wait(sub.prompt_id, 10)
    engine.wait_idle(5)
    per_node = ["progress_state", "executing", "progress_state"]
    assert rec.types() == ["status", "status", "execution_start", "execution_cached", *per_node * 3,
                           "progress_state", "executing", "executed", "progress_state",
                           "execution_success", "status", "executing"]
    final = rec.of("progress_state")[-1]["nodes"]
    assert list(final) == ["1", "2", "3", "9"] and {n["state"] for n in final.values()} == {"finished"}
    assert final["9"] == {"value": 1, "max": 1, "state": "finished", "node_id": "9", "prompt_id": sub.prompt_id,
                          "display_node_id": "9", "parent_node_id": None, "real_node_id": "9"}
    assert rec.of("executing")[-1] == {"node": None, "prompt_id": sub.prompt_id}
    assert other.types() == ["status", "status", "status"]  # only broadcasts reach other clients


def test_changed_seed_reruns_only_downstream(engine):
    Number.CALLS.clear()
    engine.run(chain(5))
    rec = Recorder(engine)
    prompt = chain(5)
    prompt["2"]["inputs"]["a"] = 2  # changes node 2 and everything after it, not node 1
    result = engine.run(prompt)
    assert Number.CALLS == [5]
    assert rec.of("execution_cached")[0]["nodes"] == ["1"]
    assert [e["node"] for e in rec.of("executing") if e["node"]] == ["2", "3", "9"]
    assert result.outputs["9"]["text"] == ["17"]


def test_identical_resubmission_runs_nothing_but_reports_outputs(engine):
    first = engine.run(chain(3))
    rec = Recorder(engine)
    second = engine.run(chain(3))
    assert [e["node"] for e in rec.of("executing") if e["node"]] == []
    assert rec.of("executed") == [{"node": "9", "display_node": "9", "output": first.outputs["9"],
                                   "prompt_id": second.prompt_id}]
    assert second.outputs == first.outputs


def test_is_changed_nan_always_reruns(engine):
    Volatile.RUNS.clear()
    prompt = {"1": {"class_type": "Volatile", "inputs": {"value": 4}}, "9": {"class_type": "Show",
                                                                            "inputs": {"value": ["1", 0]}}}
    engine.run(prompt)
    engine.run(prompt)
    assert Volatile.RUNS == [4, 4]


def test_failing_node_then_engine_keeps_serving(engine):
    rec = Recorder(engine)
    prompt = {"1": {"class_type": "Number", "inputs": {"value": 2}},
              "2": {"class_type": "Fail", "inputs": {"value": ["1", 0]}},
              "9": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    with pytest.raises(NodeExecutionError) as exc:
        engine.run(prompt)
    (error,) = rec.of("execution_error")
    assert error["node_id"] == "2" and error["node_type"] == "Fail"
    assert error["exception_message"] == "cannot handle 2" and error["exception_type"] == "ValueError"
    assert error["executed"] == ["1"] and error["current_inputs"] == {"value": [2]}
    assert sorted(error["current_outputs"]) == ["1", "2", "9"] and error["traceback"]
    assert set(error) == {"prompt_id", "node_id", "node_type", "executed", "exception_message", "exception_type",
                          "traceback", "current_inputs", "current_outputs", "timestamp"}
    assert exc.value.details["node_id"] == "2"
    entry = engine.history_item(error["prompt_id"])[error["prompt_id"]]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert engine.run(chain(1)).outputs["9"]["text"] == ["12"]


def test_interrupt_stops_within_a_step_and_queue_continues(engine):
    rec = Recorder(engine)
    slow = {"1": {"class_type": "Number", "inputs": {"value": 1}},
            "2": {"class_type": "Slow", "inputs": {"value": ["1", 0], "steps": 1000, "delay": 0.01}},
            "9": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    first = engine.submit(slow)
    second = engine.submit(chain(7))
    deadline = time.time() + 5
    while not rec.of("progress") and time.time() < deadline:
        time.sleep(0.01)
    engine.interrupt()
    entry = engine.wait(first.prompt_id, 5)
    assert entry["status"]["status_str"] == "error"
    (interrupted,) = rec.of("execution_interrupted")
    assert interrupted["node_id"] == "2" and interrupted["node_type"] == "Slow"
    assert len(rec.of("progress")) < 1000
    assert engine.wait(second.prompt_id, 5)["status"]["status_str"] == "success"


def test_interrupt_other_prompt_id_is_noop_and_run_raises(engine):
    def stop_soon():
        time.sleep(0.2)
        engine.interrupt("not-the-running-one")
        time.sleep(0.1)
        engine.interrupt()

    threading.Thread(target=stop_soon).start()
    slow = {"2": {"class_type": "Slow", "inputs": {"value": 1, "steps": 200, "delay": 0.01}},
            "9": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    started = time.time()
    with pytest.raises(Interrupted):
        engine.run(slow)
    assert 0.25 < time.time() - started < 1.9


def test_progress_events_carry_value_and_max(engine):
    rec = Recorder(engine)
    engine.run({"2": {"class_type": "Slow", "inputs": {"value": 1, "steps": 3, "delay": 0.0}},
                "9": {"class_type": "Show", "inputs": {"value": ["2", 0]}}})
    assert [(p["value"], p["max"], p["node"]) for p in rec.of("progress")] == [(1, 3, "2"), (2, 3, "2"), (3, 3, "2")]
    states = [(s["nodes"]["2"]["state"], s["nodes"]["2"]["value"]) for s in rec.of("progress_state")
              if "2" in s["nodes"] and "9" not in s["nodes"]]
    assert states == [("running", 0), ("running", 1), ("running", 2), ("running", 3), ("finished", 1)]


def test_execution_cached_lists_every_cached_node_in_prompt_order(engine):
    prompt = {"9": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
              "2": {"class_type": "Add", "inputs": {"a": 1, "b": ["1", 0]}},
              "1": {"class_type": "Number", "inputs": {"value": 3}}}
    engine.run(prompt)
    rec = Recorder(engine)
    prompt["5"] = {"class_type": "Add", "inputs": {"a": 2, "b": ["1", 0]}}  # dangling: never runs
    prompt["6"] = {"class_type": "Add", "inputs": {"a": 2, "b": ["404", 0]}}  # dangling with a broken link
    engine.run(prompt)
    assert rec.of("execution_cached")[0]["nodes"] == ["9", "2", "1"]


def test_list_mapping(engine):
    prompt = {"1": {"class_type": "Split", "inputs": {"count": 3}},
              "2": {"class_type": "Add", "inputs": {"a": 1, "b": ["1", 0]}},  # mapped 3 times
              "3": {"class_type": "Total", "inputs": {"values": ["2", 0]}},  # INPUT_IS_LIST: once
              "8": {"class_type": "Show", "inputs": {"value": ["2", 0]}},
              "9": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    result = engine.run(prompt)
    assert result.outputs["8"]["text"] == ["1", "2", "3"]  # UI lists concatenated across calls
    assert result.outputs["9"]["text"] == ["6"]


def test_queue_numbers_front_and_delete(engine):
    gate = {"2": {"class_type": "Slow", "inputs": {"value": 1, "steps": 100, "delay": 0.01}},
            "9": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    running = engine.submit(gate)
    deadline = time.time() + 5
    while not engine.queue()["queue_running"] and time.time() < deadline:
        time.sleep(0.005)
    a = engine.submit(chain(1))
    b = engine.submit(chain(2), front=True)
    c = engine.submit(chain(3), number=0.5)
    assert c.number == 0.5 and b.number < 0 < a.number
    snapshot = engine.queue()
    pending = sorted(snapshot["queue_pending"], key=lambda item: item[0])
    assert [item[1] for item in pending] == [b.prompt_id, c.prompt_id, a.prompt_id]
    assert all(len(item) == 5 for item in pending)
    engine.delete_queued([c.prompt_id, running.prompt_id])
    assert {item[1] for item in engine.queue()["queue_pending"]} == {a.prompt_id, b.prompt_id}
    engine.clear_queue()
    assert engine.queue()["queue_pending"] == []
    engine.interrupt()
    assert engine.wait(running.prompt_id, 5) is not None
    assert engine.queue_remaining() == 0 or engine.wait_idle(5)


def test_history_paging_delete_clear(engine):
    ids = [engine.run(chain(i)).prompt_id for i in range(4)]
    assert list(engine.history()) == ids
    assert list(engine.history(max_items=2)) == ids[2:]
    assert list(engine.history(max_items=2, offset=1)) == ids[1:3]
    assert engine.history(offset=10) == {}
    engine.delete_history([ids[0]])
    assert engine.history_item(ids[0]) == {}
    engine.clear_history()
    assert engine.history() == {}


def test_history_is_bounded(tmp_path):
    config = EngineConfig(models_dir=str(tmp_path / "m"), input_dir=str(tmp_path / "i"),
                          output_dir=str(tmp_path / "o"), temp_dir=str(tmp_path / "t"), max_history=3)
    with Engine(config) as eng:
        eng.register_nodes(NODES)
        ids = [eng.run(chain(i)).prompt_id for i in range(5)]
        assert list(eng.history()) == ids[2:]


def test_submit_invalid_raises_prompt_error(engine):
    with pytest.raises(PromptError) as exc:
        engine.submit(None)
    assert exc.value.error["type"] == "no_prompt"
    with pytest.raises(PromptError):
        engine.submit({"1": {"class_type": "Add", "inputs": {}}, "9": {"class_type": "Show",
                                                                      "inputs": {"value": ["1", 0]}}})
    assert engine.queue_remaining() == 0


def test_sensitive_extra_data_not_in_history(engine):
    sub = engine.submit(chain(1), client_id="c", extra_data={"api_key_comfy_org": "secret", "x": 1})
    entry = engine.wait(sub.prompt_id, 5)
    assert entry["prompt"][3] == {"x": 1, "client_id": "c"}


def test_two_engines_are_independent(tmp_path, engine):
    config = EngineConfig(models_dir=str(tmp_path / "m2"), input_dir=str(tmp_path / "i2"),
                          output_dir=str(tmp_path / "o2"), temp_dir=str(tmp_path / "t2"))
    with Engine(config) as other:
        assert "Show" not in other.registry
        engine.run(chain(1))
        assert other.history() == {}


def test_custom_node_packages(tmp_path):
    nodes_dir = tmp_path / "custom_nodes"
    (nodes_dir / "good_pack").mkdir(parents=True)
    (nodes_dir / "good_pack" / "__init__.py").write_text(
        "class Hello:\n"
        "    @classmethod\n"
        "    def INPUT_TYPES(cls):\n"
        "        return {'required': {'name': ('STRING', {'default': 'x'})}}\n"
        "    RETURN_TYPES = ()\n    FUNCTION = 'run'\n    OUTPUT_NODE = True\n    CATEGORY = 'custom'\n"
        "    def run(self, name):\n        return {'ui': {'text': ['hello ' + name]}}\n"
        "NODE_CLASS_MAPPINGS = {'Hello': Hello}\nNODE_DISPLAY_NAME_MAPPINGS = {'Hello': 'Say Hello'}\n"
        "WEB_DIRECTORY = './web'\n")
    (nodes_dir / "broken.py").write_text("raise RuntimeError('boom')\n")
    (nodes_dir / "off.py.disabled").write_text("NODE_CLASS_MAPPINGS = {}\n")
    config = EngineConfig(models_dir=str(tmp_path / "m"), input_dir=str(tmp_path / "i"),
                          output_dir=str(tmp_path / "o"), temp_dir=str(tmp_path / "t"),
                          custom_nodes_dirs=[str(nodes_dir)])
    with Engine(config) as eng:
        info = eng.object_info("Hello")["Hello"]
        assert info["display_name"] == "Say Hello" and info["python_module"] == "custom_nodes.good_pack"
        assert eng.run({"1": {"class_type": "Hello", "inputs": {"name": "you"}}}).outputs["1"]["text"] == ["hello you"]
        assert "good_pack" in eng.extension_dirs()


def test_object_info_shape(engine):
    info = engine.object_info("Add")["Add"]
    assert list(info) == ["input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
                          "description", "python_module", "category", "output_node"]
    assert info["input_order"] == {"required": ["a", "b"], "optional": ["c"]}
    assert info["output_name"] == ["sum"] and info["output_is_list"] == [False]
    assert engine.object_info("Nope") == {}


def test_system_stats_shape(engine):
    stats = engine.system_stats()
    assert {"os", "ram_total", "ram_free", "python_version", "pytorch_version", "embedded_python"} <= set(
        stats["system"])
    (device,) = stats["devices"]
    assert device["type"] == "cpu" and device["index"] is None and device["name"] == "cpu"


def test_executor_crash_ends_the_prompt_and_the_engine_keeps_serving(engine, monkeypatch):
    # a fault outside any node (the executor's own RecursionError on deep graphs was one) used to leave the prompt
    # without history or terminal events: `wait()` and websocket clients waited forever
    rec = Recorder(engine, client_id="me")

    def broken(*args, **kwargs):
        raise RuntimeError("executor bug")

    monkeypatch.setattr(engine.executor, "execute", broken)
    with pytest.raises(NodeExecutionError) as exc:
        engine.run(chain(1), timeout=10, client_id="me")
    assert "RuntimeError: executor bug" in str(exc.value)
    (error,) = rec.of("execution_error")
    assert error["node_id"] == "9" and error["node_type"] == "Show" and error["exception_type"] == "RuntimeError"
    assert error["exception_message"] == "executor bug" and error["traceback"]
    assert rec.types()[-3:] == ["execution_error", "status", "executing"]
    assert rec.of("executing")[-1] == {"node": None, "prompt_id": error["prompt_id"]}
    entry = engine.history_item(error["prompt_id"])[error["prompt_id"]]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert engine.queue_remaining() == 0
    monkeypatch.undo()
    assert engine.run(chain(1), timeout=10).outputs["9"]["text"] == ["12"]


def test_5000_node_chain_runs(engine):
    # signatures were computed recursively: the executor hit the recursion limit past ~990 links
    prompt = {"0": {"class_type": "Number", "inputs": {"value": 0}}}
    for i in range(1, 5001):
        prompt[str(i)] = {"class_type": "Add", "inputs": {"a": 0, "b": [str(i - 1), 0]}}
    prompt["out"] = {"class_type": "Show", "inputs": {"value": ["5000", 0]}}
    result = engine.run(prompt, timeout=60)
    assert result.outputs["out"]["text"] == ["0"]
    again = engine.run({**prompt, "0": {"class_type": "Number", "inputs": {"value": 7}}}, timeout=60)
    assert again.outputs["out"]["text"] == ["7"]  # the new head changed every signature down the chain


@pytest.mark.parametrize("back_to", ["1", "3"])
def test_cycle_through_an_undeclared_input_is_an_execution_error(engine, back_to):
    # validation skips inputs a class does not declare, but the executor follows their links (as ComfyUI's does):
    # signing such a loop used to crash the executor (RecursionError, then KeyError)
    prompt = chain(1)
    prompt["1"]["inputs"]["junk"] = [back_to, 0]
    with pytest.raises(NodeExecutionError) as exc:
        engine.run(prompt, timeout=10)
    assert exc.value.details["exception_type"] == "graph.DependencyCycleError"
    assert engine.run(chain(2), timeout=10).outputs["9"]["text"] == ["13"]


@pytest.mark.parametrize("mode, reruns_of_a", [("lru", []), ("classic", [5]), ("none", [5])])
def test_cache_modes_after_a_b_a(tmp_path, mode, reruns_of_a):
    """ComfyUI's cache modes: after prompts A, B, A, "classic" has forgotten A's nodes not shared with B, "none"
    keeps nothing, and the default LRU still has them."""
    config = engine_config(tmp_path, cache_mode=mode)
    with Engine(config) as eng:
        eng.register_nodes(NODES)
        eng.run(chain(5))
        eng.run(chain(6))
        Number.CALLS.clear()
        assert eng.run(chain(5)).outputs["9"]["text"] == ["16"]
        assert Number.CALLS == reruns_of_a
        Number.CALLS.clear()
        eng.run(chain(5))  # an identical resubmission reuses everything unless nothing is kept
        assert Number.CALLS == ([5] if mode == "none" else [])


def test_unknown_cache_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="cache mode"):
        Engine(EngineConfig(models_dir=str(tmp_path / "m"), cache_mode="sometimes"))
