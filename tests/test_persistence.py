"""Queue and history across engine restarts (EngineConfig.state_dir): history entries come back, prompts that were
pending (or running when the process died) run on the next engine, in their order."""
from __future__ import annotations

import logging
import time

import pytest
from fixtures_nodes import engine_config

from comfy_core import Engine
from comfy_core.persistence import StateFile
from engine_test_nodes import NODES


def config(tmp_path, **fields):
    return engine_config(tmp_path, state_dir=str(tmp_path / "state"), **fields)


def make_engine(tmp_path, **fields) -> Engine:
    engine = Engine(config(tmp_path, **fields))
    engine.register_nodes(NODES)
    return engine


def show(value):
    return {"1": {"class_type": "Number", "inputs": {"value": value}},
            "9": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}


def slow(value, steps=2000):
    return {"2": {"class_type": "Slow", "inputs": {"value": value, "steps": steps, "delay": 0.01}},
            "9": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}


def wait_running(engine):
    deadline = time.monotonic() + 10
    while not engine.queue()["queue_running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.queue()["queue_running"]


def test_history_survives_a_restart_with_deletes_and_bounds(tmp_path):
    with make_engine(tmp_path, max_history=2) as engine:
        ids = [engine.run(show(v)).prompt_id for v in (1, 2, 3)]
    with make_engine(tmp_path, max_history=2) as engine:
        assert list(engine.history()) == ids[1:]  # bounded, oldest first
        assert engine.history_item(ids[2])[ids[2]]["outputs"]["9"]["text"] == ["3"]
        engine.delete_history([ids[1]])
    with make_engine(tmp_path, max_history=2) as engine:
        assert list(engine.history()) == [ids[2]]
        engine.clear_history()
    with make_engine(tmp_path) as engine:
        assert engine.history() == {}


def test_pending_prompts_run_after_a_restart_in_queue_order(tmp_path):
    engine = make_engine(tmp_path).start()
    running = engine.submit(slow(1)).prompt_id
    wait_running(engine)
    later = engine.submit(show(5)).prompt_id
    first = engine.submit(show(4), front=True).prompt_id
    engine.close()  # interrupts the running prompt: it is finished (as an error), not re-queued
    assert engine.history_item(running)[running]["status"]["status_str"] == "error"
    with make_engine(tmp_path) as again:
        assert again.wait(later, timeout=30) is not None
        history = list(again.history())
        assert history.index(first) < history.index(later)
        assert running in history and history.count(running) == 1
        assert again.history_item(later)[later]["outputs"]["9"]["text"] == ["5"]
        assert again.wait_idle(timeout=30)
        assert again.queue() == {"queue_running": [], "queue_pending": []}
    with make_engine(tmp_path) as third:  # nothing left to run
        assert third.queue_remaining() == 0


def test_a_prompt_running_when_the_process_died_runs_again(tmp_path, caplog):
    state = StateFile(tmp_path / "state")
    state.put_queued([3, "crashed", show(8), {"client_id": "c"}, ["9"]])
    state.put_queued([4, "gone", {"1": {"class_type": "Removed", "inputs": {}}}, {}, ["1"]])
    state.close()
    with caplog.at_level(logging.WARNING), make_engine(tmp_path) as engine:
        entry = engine.wait("crashed", timeout=30)
        assert entry["outputs"]["9"]["text"] == ["8"] and entry["prompt"][3] == {"client_id": "c"}
        assert "gone" in caplog.text and engine.history_item("gone") == {}
        assert engine.submit(show(1)).number > 3  # the counter continues after the restored numbers
        engine.wait_idle(timeout=30)
    assert StateFile(tmp_path / "state").queued() == []


def test_deleted_and_cleared_queue_items_do_not_come_back(tmp_path):
    engine = make_engine(tmp_path).start()
    blocker = engine.submit(slow(1)).prompt_id
    wait_running(engine)
    gone = engine.submit(show(2)).prompt_id
    also_gone = engine.submit(show(3)).prompt_id
    engine.delete_queued([gone])
    engine.clear_queue()
    engine.interrupt()
    engine.wait(blocker, timeout=30)
    engine.close()
    with make_engine(tmp_path) as again:
        assert again.queue_remaining() == 0
        assert again.history_item(gone) == {} and again.history_item(also_gone) == {}


def test_extra_data_that_is_not_json_still_runs_but_is_not_journaled(tmp_path, caplog):
    with caplog.at_level(logging.WARNING), make_engine(tmp_path) as engine:
        result = engine.run(show(6), extra_data={"callback": object()})
        assert result.outputs["9"]["text"] == ["6"]
    assert "will not survive a restart" in caplog.text


def test_without_state_dir_nothing_is_written(tmp_path):
    cfg = engine_config(tmp_path)
    with Engine(cfg) as engine:
        engine.register_nodes(NODES)
        engine.run(show(1))
    assert not (tmp_path / "state").exists()
    with pytest.raises(AttributeError):
        engine.history_store._state  # noqa: B018 - the in-memory store has no state file
