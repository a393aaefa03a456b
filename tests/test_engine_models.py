"""Bad model files inside a running engine: a clear typed error for the prompt, and the engine keeps serving."""
import pytest
from fixtures_nodes import engine_config

from comfy_core import Engine, NodeExecutionError
from comfy_core.demo import demo_prompt, ensure_demo_checkpoint


@pytest.fixture
def engine(tmp_path):
    config = engine_config(tmp_path)
    with Engine(config) as eng:
        yield eng


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json", b"garbage" * 100])
def test_corrupt_checkpoint_fails_the_prompt_not_the_engine(engine, content):
    good = ensure_demo_checkpoint(engine.folders)
    bad = good.with_name("broken.safetensors")
    bad.write_bytes(content)
    truncated = good.with_name("truncated.safetensors")
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for name in (bad.name, truncated.name):
        with pytest.raises(NodeExecutionError) as exc:
            engine.run(demo_prompt(name, steps=1))
        assert exc.value.details["node_type"] == "CheckpointLoaderSimple"
        assert exc.value.details["exception_type"].endswith("ModelLoadError")
        assert name in exc.value.details["exception_message"]
    result = engine.run(demo_prompt(good.name, steps=1))
    assert result.images["9"][0].is_file()


def test_missing_checkpoint_is_a_validation_error(engine):
    from comfy_core import PromptError

    ensure_demo_checkpoint(engine.folders)
    with pytest.raises(PromptError) as exc:
        engine.run(demo_prompt("nope.safetensors", steps=1))
    (error,) = exc.value.node_errors["4"]["errors"]
    assert error["type"] == "value_not_in_list"
