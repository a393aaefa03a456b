"""The ASGI adapter: POST /prompt round trip, /object_info encoding (msgspec vs stdlib json), websocket throughput.

- prompt round trip: real uvicorn on 127.0.0.1 + a keep-alive httpx client. "submit" is one POST /prompt (validate +
  enqueue; the prompt is cached so the worker does no work); "to history" is POST /prompt, wait for the engine to
  finish, GET /history/{id}.
- /object_info: encoding the engine's document, and a document scaled to a full ComfyUI install (478 nodes, built
  by repeating this engine's entries under new names), with msgspec (what the app uses) and with `json.dumps`.
- websocket: `executed` events emitted on the engine's bus from a thread, received by one websockets client over a real
  socket; events/s = events / time until the last one arrives.

Writes benches/results/api_cpu.json. Run: pytest benches/bench_api.py
"""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import msgspec
import pytest

from comfy_core.asgi import create_app
from comfy_core.events import Executed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the shared test fixtures
from fixtures_asgi import make_engine, running_server, steps_prompt  # noqa: E402

COMFYUI_NODE_COUNT = 478  # nodes in a stock ComfyUI 0.3.64 /object_info
WS_EVENTS = 5000


@pytest.fixture(scope="module")
def table(write_results):
    rows: dict = {}
    yield rows
    measured = {k: v for k, v in rows.items() if v is not None}
    if any(k.endswith("_median") for k in measured):  # nothing is written under --benchmark-disable
        write_results("api_cpu", measured)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    eng = make_engine(tmp_path_factory.mktemp("bench_api"))
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(engine, owns_engine=True, ws_max_buffer=WS_EVENTS + 100)
    with running_server(app) as base:
        yield base


@pytest.fixture(scope="module")
def http(server):
    import httpx

    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


def ms(benchmark) -> float | None:
    """Median in ms; None when benchmarks are disabled (--benchmark-disable runs each function once)."""
    return benchmark.stats.stats.median * 1e3 if benchmark.stats else None


def test_post_prompt_submit(benchmark, http, engine, table):
    body = msgspec.json.encode({"prompt": steps_prompt(1, steps=1), "client_id": "bench"})
    engine.run(steps_prompt(1, steps=1))  # warm the cache: later submissions run nothing

    def submit():
        response = http.post("/prompt", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 200

    benchmark.pedantic(submit, rounds=200, warmup_rounds=5)
    engine.wait_idle(30)
    table["post_prompt_submit_ms_median"] = ms(benchmark)


def test_post_prompt_to_history(benchmark, http, engine, table):
    values = iter(range(10**6))

    def round_trip():
        prompt = steps_prompt(next(values), steps=1)  # a new value each round: the node really runs
        prompt_id = http.post("/prompt", json={"prompt": prompt}).json()["prompt_id"]
        assert engine.wait(prompt_id, 30) is not None
        assert prompt_id in http.get(f"/history/{prompt_id}").json()

    benchmark.pedantic(round_trip, rounds=100, warmup_rounds=3)
    table["prompt_to_history_ms_median"] = ms(benchmark)


def scaled_object_info(info: dict, count: int) -> dict:
    names = list(info)
    return {f"{names[i % len(names)]}_{i}": info[names[i % len(names)]] for i in range(count)}


@pytest.mark.parametrize("size", ["engine", "comfyui_478"])
@pytest.mark.parametrize("encoder", ["msgspec", "stdlib_json"])
def test_object_info_encode(benchmark, engine, table, encoder, size):
    info = engine.object_info()
    if size != "engine":
        info = scaled_object_info(info, COMFYUI_NODE_COUNT)
    encode = msgspec.json.encode if encoder == "msgspec" else (lambda doc: json.dumps(doc).encode())
    assert msgspec.json.decode(encode(info)) == msgspec.json.decode(json.dumps(info))
    benchmark(encode, info)
    table[f"object_info_{size}_{encoder}_ms_median"] = ms(benchmark)
    table[f"object_info_{size}_bytes"] = len(encode(info))
    other = f"object_info_{size}_{'stdlib_json' if encoder == 'msgspec' else 'msgspec'}_ms_median"
    if other in table and table[other] and table[f"object_info_{size}_{encoder}_ms_median"]:
        mine = table[f"object_info_{size}_{encoder}_ms_median"]
        msg, std = (mine, table[other]) if encoder == "msgspec" else (table[other], mine)
        table[f"object_info_{size}_msgspec_speedup"] = std / msg


def test_get_object_info(benchmark, http, table):
    benchmark.pedantic(lambda: http.get("/object_info").raise_for_status(), rounds=50, warmup_rounds=2)
    table["get_object_info_ms_median"] = ms(benchmark)


def test_websocket_event_throughput(benchmark, server, engine, table):
    from websockets.sync.client import connect

    with connect(server.replace("http://", "ws://") + "/ws?clientId=bench-ws", max_queue=None) as ws:
        ws.recv(timeout=10)  # the status greeting
        event = Executed(node="9", display_node="9", output={"text": ["x" * 64]}, prompt_id="bench")

        def emit_all():
            for _ in range(WS_EVENTS):
                engine.events.emit(event, client_id="bench-ws")

        def burst():
            emitter = threading.Thread(target=emit_all)
            emitter.start()
            for _ in range(WS_EVENTS):
                ws.recv(timeout=30)
            emitter.join()

        benchmark.pedantic(burst, rounds=5, warmup_rounds=1)
    table["websocket_events"] = WS_EVENTS
    if benchmark.stats:
        table["websocket_events_per_s_median"] = WS_EVENTS / benchmark.stats.stats.median
