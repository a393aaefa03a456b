"""The code in docs/writing-nodes.md runs as written: its node classes register and behave as the page says."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from fixtures_nodes import engine_config

from comfy_core import Engine

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-nodes.md"


@pytest.fixture
def engine(tmp_path):
    config = engine_config(tmp_path)
    with Engine(config) as eng:
        namespace = {"engine": eng}
        for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S):
            exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
        eng.register_nodes({"Switch": namespace["Switch"], "RepeatBlur": namespace["RepeatBlur"]})
        yield eng


def image(color: int) -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}}


def preview(source: str) -> dict:
    return {"class_type": "PreviewImage", "inputs": {"images": [source, 0]}}


def test_brighten_switch_and_expansion_examples_run(engine):
    prompt = {"1": image(0x000000), "2": image(0xFFFFFF),
              "3": {"class_type": "Brighten", "inputs": {"image": ["1", 0], "amount": 0.25}},
              "4": {"class_type": "Switch", "inputs": {"use_a": True, "a": ["3", 0], "b": ["2", 0]}},
              "5": {"class_type": "RepeatBlur", "inputs": {"image": ["4", 0], "times": 3}},
              "9": preview("5")}
    ran = []
    engine.events.subscribe(lambda m: ran.append(m.event.node) if m.type == "executing" and m.event.node else None,
                            client_id="docs")
    result = engine.run(prompt, client_id="docs")
    (png,) = result.images["9"]
    from PIL import Image

    assert Image.open(png).getpixel((4, 4)) == (63, 63, 63)  # 0.25 brighter, blur of a flat image is flat
    assert "2" not in ran  # the lazy branch not taken never ran
    assert [n for n in ran if n.startswith("5.")] == ["5.0.0.1", "5.0.0.2", "5.0.0.3"]  # three expanded blurs
    assert engine.object_info("Switch")["Switch"]["input"]["required"]["a"][1] == {"lazy": True}
