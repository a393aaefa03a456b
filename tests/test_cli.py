"""The command line: the README's demo, `run` with overrides and both body shapes, readable errors, `info`."""
import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "comfy_core.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def test_demo_writes_checkpoint_once_and_saves_an_image(tmp_path):
    first = cli("demo", "--steps", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (png,) = [Path(line) for line in first.stdout.split()]
    assert png.parent == tmp_path / "output" and Image.open(png).size == (256, 256)
    ckpt = tmp_path / "models" / "checkpoints" / "comfy-core-demo-sd1.safetensors"
    stamp = ckpt.stat().st_mtime_ns
    second = cli("demo", "--steps", "2", "--seed", "7", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert ckpt.stat().st_mtime_ns == stamp
    assert Path(second.stdout.split()[0]).name == "comfy-core-demo_00002_.png"
    # the custom-sampling example runs on the demo checkpoint (SamplerCustomAdvanced, FreeU_V2, ImageSharpen)
    example = cli("run", str(ROOT / "examples" / "custom_sampling.json"), "--set", "13.steps=2", cwd=tmp_path)
    assert example.returncode == 0, example.stderr
    (png,) = [Path(line) for line in example.stdout.split() if line.endswith(".png")]
    assert png.name == "comfy-core-custom-sampling_00001_.png" and Image.open(png).size == (192, 192)


def test_demo_checkpoint_is_deterministic():
    from comfy_core.demo import demo_state_dict

    a, b = demo_state_dict(), demo_state_dict()
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    assert "model.diffusion_model.input_blocks.0.0.weight" in a
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in a


def test_run_with_overrides_and_post_body(tmp_path):
    workflow = json.loads((ROOT / "examples" / "model_free.json").read_text())
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"prompt": workflow, "client_id": "cli-test"}))
    out = cli("run", str(body), "--set", "9.filename_prefix=sub/custom", "--set", "1.width=64",
              "--output-dir", str(tmp_path / "o"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (png,) = out.stdout.split()
    assert Path(png) == tmp_path / "o" / "sub" / "custom_00001_.png"


def test_validation_errors_are_readable_and_fail(tmp_path):
    workflow = tmp_path / "bad.json"
    workflow.write_text(json.dumps({"1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 64}},
                                    "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}))
    out = cli("run", str(workflow), cwd=tmp_path)
    assert out.returncode == 1
    assert "prompt_outputs_failed_validation" in out.stderr
    assert "value_smaller_than_min" in out.stderr and "Traceback" not in out.stderr
    missing = cli("run", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert missing.returncode == 1 and "nope.json" in missing.stderr


def test_set_needs_a_known_node(tmp_path):
    out = cli("run", str(ROOT / "examples" / "model_free.json"), "--set", "404.x=1", cwd=tmp_path)
    assert out.returncode != 0 and "NODE.INPUT=VALUE" in out.stderr


def test_info(tmp_path):
    out = cli("info", "--models-dir", str(tmp_path / "models"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "checkpoints" in out.stdout and str(tmp_path / "models" / "checkpoints") in out.stdout


def test_bench_runs_selected_benchmarks(tmp_path):
    out = cli("bench", "-k", "validation_time", cwd=tmp_path, env={"COMFY_CORE_BENCH_RESULTS": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout
    assert json.loads((tmp_path / "engine_validate.json").read_text())["results"]["nodes"] == 200


def test_serve_flags_reach_the_engine_config(tmp_path):
    from comfy_core.cli import build_parser, load_config

    args = build_parser().parse_args(["serve", "--state-dir", str(tmp_path / "state"), "--multi-user",
                                      "--user-directory", str(tmp_path / "u")])
    config = load_config(args)
    assert config.state_dir == str(tmp_path / "state") and config.multi_user
    assert config.user_dir == str(tmp_path / "u")
    assert config.cache_mode == "lru"
    assert load_config(build_parser().parse_args(["serve", "--cache-none"])).cache_mode == "none"
    assert load_config(build_parser().parse_args(["serve", "--cache-classic"])).cache_mode == "classic"
    lru = load_config(build_parser().parse_args(["serve", "--cache-lru", "64"]))
    assert (lru.cache_mode, lru.cache_max_entries) == ("lru", 64)
