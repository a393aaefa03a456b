"""Executor overhead per node and validation time on a 200-node graph of trivial nodes.

Overhead per node = (one prompt's execution time) / 200, where every node must run (the head constant changes each
round, so the signature cache misses all the way down). Target: under 50 µs per node on a 2-core machine.
"""
import itertools

import pytest

from comfy_core import Engine, EngineConfig

N_NODES = 200


class Inc:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT", {"default": 0, "min": -(2**62), "max": 2**62})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, x):
        return (x + 1,)


class Sink:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"x": ("INT",)}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    def run(self, x):
        return {"ui": {"value": [x]}}


def chain_prompt(head: int) -> dict:
    prompt = {"0": {"class_type": "Inc", "inputs": {"x": head}}}
    for i in range(1, N_NODES - 1):
        prompt[str(i)] = {"class_type": "Inc", "inputs": {"x": [str(i - 1), 0]}}
    prompt[str(N_NODES - 1)] = {"class_type": "Sink", "inputs": {"x": [str(N_NODES - 2), 0]}}
    return prompt


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_engine")
    config = EngineConfig(models_dir=str(root / "m"), input_dir=str(root / "i"), output_dir=str(root / "o"),
                          temp_dir=str(root / "t"))
    with Engine(config) as eng:
        eng.register_nodes({"Inc": Inc, "Sink": Sink})
        yield eng


def per_node_us(benchmark) -> float:
    return benchmark.stats.stats.median / N_NODES * 1e6


def test_executor_overhead_per_node(benchmark, engine, write_results):
    """Executor only: validated prompt in, every node executed (no queue/thread hop)."""
    heads = itertools.count()

    def setup():
        valid = engine.validate(chain_prompt(next(heads)))
        return (valid.prompt, valid.outputs, "bench", {}, engine.context(prompt_id="bench"), lambda e: None), {}

    benchmark.pedantic(engine.executor.execute, setup=setup, rounds=30)
    benchmark.extra_info["us_per_node"] = per_node_us(benchmark)
    write_results("engine_executor", {"nodes": N_NODES, "us_per_node_median": per_node_us(benchmark)})


def test_engine_run_per_node(benchmark, engine, write_results):
    """Full path: validate + queue + worker thread + execute + history + events."""
    heads = itertools.count(10_000)
    benchmark.pedantic(lambda: engine.run(chain_prompt(next(heads))), rounds=30)
    benchmark.extra_info["us_per_node"] = per_node_us(benchmark)
    write_results("engine_run", {"nodes": N_NODES, "us_per_node_median": per_node_us(benchmark)})


def test_validation_time(benchmark, engine, write_results):
    prompt = chain_prompt(1)
    benchmark(engine.validate, prompt)
    write_results("engine_validate", {"nodes": N_NODES, "ms_median": benchmark.stats.stats.median * 1e3})
