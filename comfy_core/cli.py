"""`comfy-core run | serve | demo | info | bench`: the engine from a terminal."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import msgspec

from .config import EngineConfig
from .errors import ComfyCoreError, Interrupted, NodeExecutionError, PromptError
from .workflow_format import is_ui_workflow


def _add_dirs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="EngineConfig JSON file (directory flags override it)")
    for name in ("models", "input", "output", "temp"):
        parser.add_argument(f"--{name}-dir", help=f"{name} folder (default: ./{name})")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: auto)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="comfy-core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a workflow (API or UI format, or a ComfyUI PNG) and print the saved files")
    run.add_argument("workflow", help="API-format prompt, a {'prompt': {...}} POST /prompt body, a UI-format "
                     "workflow.json (converted as the web frontend does) or a PNG saved by ComfyUI")
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input, e.g. --set 3.seed=42 (VALUE is JSON, else a string)")
    run.add_argument("--timeout", type=float, default=None)
    serve = sub.add_parser("serve", help="serve ComfyUI's HTTP + WebSocket API (needs the [server] extra)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8188)
    serve.add_argument("--listen", action="store_true", help="listen on all interfaces (0.0.0.0)")
    serve.add_argument("--user-directory", help="per-user workflows and settings folder (default: ./user)")
    serve.add_argument("--multi-user", action="store_true", help="separate users, picked by the Comfy-User header")
    serve.add_argument("--state-dir", help="keep the queue and history here so they survive a restart")
    cache = serve.add_mutually_exclusive_group()
    cache.add_argument("--cache-lru", type=int, metavar="N", help="keep up to N node results across prompts (default)")
    cache.add_argument("--cache-classic", action="store_true",
                       help="keep only the last prompt's results (ComfyUI's default)")
    cache.add_argument("--cache-none", action="store_true", help="keep no node results between prompts")
    serve.add_argument("--front-end-root", default="auto",
                       help="web frontend build to serve at / (default: the installed comfyui-frontend-package)")
    serve.add_argument("--api-only", action="store_true", help="serve no web frontend")
    serve.add_argument("--preview-method", choices=["none", "auto", "latent2rgb", "taesd"],
                       help="sampling previews (default: none; taesd needs models/vae_approx/taesd*_decoder.*)")
    demo = sub.add_parser("demo", help="txt2img on a built-in random-weight demo checkpoint (no downloads)")
    demo.add_argument("--prompt", default="a photo of a cat")
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--steps", type=int, default=8)
    sub.add_parser("info", help="device, versions and model folders")
    bench = sub.add_parser("bench", help="run the pytest-benchmark suites of a source checkout (benches/)")
    bench.add_argument("-k", dest="select", default=None, help="pytest -k expression, e.g. 'engine or sampler'")
    bench.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    for command in (run, serve, demo, sub.choices["info"]):
        _add_dirs(command)
    return parser


def load_config(args: argparse.Namespace) -> EngineConfig:
    config = EngineConfig.from_file(args.config) if args.config else EngineConfig()
    overrides = {f"{n}_dir": getattr(args, f"{n}_dir") for n in ("models", "input", "output", "temp")}
    overrides = {k: v for k, v in overrides.items() if v}
    if getattr(args, "device", None):
        overrides["device"] = args.device
    if getattr(args, "user_directory", None):
        overrides["user_dir"] = args.user_directory
    if getattr(args, "multi_user", False):
        overrides["multi_user"] = True
    if getattr(args, "state_dir", None):
        overrides["state_dir"] = args.state_dir
    if getattr(args, "cache_lru", None):
        overrides.update(cache_mode="lru", cache_max_entries=args.cache_lru)
    if getattr(args, "cache_classic", False) or getattr(args, "cache_none", False):
        overrides["cache_mode"] = "classic" if args.cache_classic else "none"
    if getattr(args, "preview_method", None):
        overrides["preview_method"] = args.preview_method
    return msgspec.structs.replace(config, **overrides)


def read_workflow(path: str, engine=None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(prompt, submit kwargs) from an API prompt, a POST /prompt body, a UI-format workflow (converted with the
    engine's nodes, as the frontend would queue it) or a PNG that ComfyUI saved (its prompt, else its workflow)."""
    data = _decode_workflow_file(Path(path))
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        extra = {k: data[k] for k in ("client_id", "extra_data") if k in data}
        return data["prompt"], extra
    if is_ui_workflow(data):
        if engine is None:
            raise ComfyCoreError(f"{path} is a UI-format workflow: converting it needs an engine")
        # the frontend sends the workflow along, so saved images embed it
        return engine.prompt_from_workflow(data), {"extra_data": {"extra_pnginfo": {"workflow": data}}}
    return data, {}


def _decode_workflow_file(path: Path) -> Any:
    raw = path.read_bytes()
    if not raw.startswith(b"\x89PNG"):
        return msgspec.json.decode(raw)
    from PIL import Image

    with Image.open(path) as image:
        text = image.info.get("prompt") or image.info.get("workflow")
    if text is None:
        raise ComfyCoreError(f"{path} has no ComfyUI prompt or workflow in its metadata")
    return msgspec.json.decode(text)


def apply_overrides(prompt: dict[str, Any], assignments: list[str]) -> None:
    for assignment in assignments:
        target, sep, raw = assignment.partition("=")
        node_id, dot, name = target.partition(".")
        if not (sep and dot and node_id in prompt):
            raise SystemExit(f"--set {assignment!r}: expected NODE.INPUT=VALUE with a node id of the workflow")
        try:
            value = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            value = raw
        prompt[node_id].setdefault("inputs", {})[name] = value


def print_prompt_error(error: PromptError) -> None:
    err = error.error
    print(f"error: {err.get('type')}: {err.get('message')}", file=sys.stderr)
    if err.get("details"):
        print(f"  {err['details']}", file=sys.stderr)
    for node_id, info in error.node_errors.items():
        for item in info.get("errors", []):
            print(f"  node {node_id} ({info.get('class_type')}): {item['type']}: {item['message']}"
                  f" [{item.get('details', '')}]", file=sys.stderr)


def run_prompt(engine, prompt: dict[str, Any], submit_args: dict[str, Any], timeout: float | None) -> int:
    from .progress import TerminalProgress

    with TerminalProgress(engine, prompt):
        result = engine.run(prompt, timeout=timeout, **submit_args)
    for node_id, paths in result.images.items():
        for path in paths:
            print(path)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .engine import Engine

    with Engine(load_config(args)) as engine:
        prompt, submit_args = read_workflow(args.workflow, engine)
        apply_overrides(prompt, args.set)
        return run_prompt(engine, prompt, submit_args, args.timeout)


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo_prompt, ensure_demo_checkpoint
    from .engine import Engine

    with Engine(load_config(args)) as engine:
        ckpt = ensure_demo_checkpoint(engine.folders)
        print(f"demo checkpoint (random weights, for trying the machinery): {ckpt}", file=sys.stderr)
        return run_prompt(engine, demo_prompt(ckpt.name, args.prompt, args.seed, args.steps), {}, None)


def cmd_info(args: argparse.Namespace) -> int:
    from .engine import Engine

    engine = Engine(load_config(args))
    stats = engine.system_stats()
    print(f"comfy-core {stats['system']['comfy_core_version']} (ComfyUI API {stats['system']['comfyui_version']})")
    print(f"python {sys.version.split()[0]}, torch {stats['system']['pytorch_version']}")
    device = stats["devices"][0]
    print(f"device {device['name']} ({device['type']}), dtype {str(engine.dtype).removeprefix('torch.')}")
    print(f"nodes {len(engine.registry.classes)}")
    for kind in ("checkpoints", "vae", "loras", "text_encoders", "diffusion_models", "embeddings", "controlnet",
                 "clip_vision"):
        dirs = ", ".join(str(d) for d in engine.folders.dirs(kind))
        print(f"{kind:>16}: {len(engine.folders.list(kind))} file(s) in {dirs}")
    for name in ("input", "output", "temp"):
        print(f"{name:>16}: {engine.storage.root(name)}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Benchmarks live beside the package in a source checkout (they are not installed with a wheel)."""
    import subprocess

    benches = Path(__file__).resolve().parents[1] / "benches"
    if not benches.is_dir():
        print("error: benches/ is only in a source checkout (git clone + pip install -e .)", file=sys.stderr)
        return 1
    command = [sys.executable, "-m", "pytest", str(benches), "-q", "-p", "no:cacheprovider"]
    if args.select:
        command += ["-k", args.select]
    return subprocess.call(command, cwd=benches.parent)


def cmd_serve(args: argparse.Namespace) -> int:
    from .asgi.serve import serve

    frontend = None if args.api_only else args.front_end_root
    serve(load_config(args), host=args.host, port=args.port, listen=args.listen, frontend_dir=frontend)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handlers = {"run": cmd_run, "demo": cmd_demo, "info": cmd_info, "serve": cmd_serve, "bench": cmd_bench}
    try:
        return handlers[args.command](args)
    except PromptError as error:
        print_prompt_error(error)
    except Interrupted as error:
        print(f"interrupted: {error}", file=sys.stderr)
    except NodeExecutionError as error:
        print(f"error: {error}", file=sys.stderr)
    except (ComfyCoreError, OSError, msgspec.DecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
