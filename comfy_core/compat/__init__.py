"""ComfyUI's own modules, for custom node packs that import them (`import folder_paths`, `from server import ...`).

Most ComfyUI custom node packs start with `import folder_paths`, `import comfy.model_management`, `import nodes`,
`from server import PromptServer`..., and V3 packs `from comfy_api.latest import ComfyExtension, io, ui`. These modules
hold the public subset of those ComfyUI modules. They keep no state of their own: every function looks up the
engine running the current node through `comfy_core.context.current()` (module attributes such as
`folder_paths.models_dir` resolve per access through a module `__getattr__`), so several engines in one process each
see their own folders, events and nodes.

`install()` makes them importable under ComfyUI's top-level names. `NodeRegistry.load_custom_nodes` calls it before
importing custom node packs, only when `EngineConfig.comfy_compat` is true, and it provides only names that nothing
else provides: a name already in `sys.modules` or findable by `importlib.util.find_spec` (a real ComfyUI checkout on
`sys.path`, an unrelated package called `nodes` or `server`) is left alone, and so are the submodules of a `comfy` or
`comfy_execution` that is not ours.

Lifetime: once inserted, the aliases stay in `sys.modules` for the rest of the process, even after the engine is
closed. The packs imported while loading keep references to them anyway (`import folder_paths` binds the module
object), and packs import more of them lazily inside functions, so removing the aliases would only break those packs.
Being stateless, the aliases serve every later engine as well.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

log = logging.getLogger(__name__)

# (ComfyUI's module name, the module here that implements it); parents before children.
ALIASES: tuple[tuple[str, str], ...] = (
    ("folder_paths", "comfy_core.compat.folder_paths"),
    ("comfy", "comfy_core.compat.comfy"),
    ("comfy.model_management", "comfy_core.compat.comfy.model_management"),
    ("comfy.utils", "comfy_core.compat.comfy.utils"),
    ("comfy.samplers", "comfy_core.compat.comfy.samplers"),
    ("nodes", "comfy_core.compat.nodes"),
    ("server", "comfy_core.compat.server"),
    ("comfy_execution", "comfy_core.compat.comfy_execution"),
    ("comfy_execution.graph", "comfy_core.compat.comfy_execution.graph"),
    ("comfy_execution.graph_utils", "comfy_core.compat.comfy_execution.graph_utils"),
    ("comfy_api", "comfy_core.compat.comfy_api"),
    ("comfy_api.latest", "comfy_core.compat.comfy_api.latest"),
    ("comfy_api.latest._io", "comfy_core.compat.comfy_api.latest._io"),
    ("comfy_api.latest._ui", "comfy_core.compat.comfy_api.latest._ui"),
    ("comfy_api.v0_0_1", "comfy_core.compat.comfy_api.v0_0_1"),
    ("comfy_api.v0_0_2", "comfy_core.compat.comfy_api.v0_0_2"),
)
TOP_LEVEL_NAMES = frozenset(alias.partition(".")[0] for alias, _ in ALIASES)


def _provided_elsewhere(name: str) -> bool:
    """Whether `name` is imported already or importable from something other than us."""
    if name in sys.modules:
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken finder or module: treat as taken, never shadow it
        return True


def install() -> list[str]:
    """Insert the aliases nothing else provides into `sys.modules`; returns the names newly provided."""
    provided: list[str] = []
    foreign: set[str] = set()  # top-level names someone else owns: their submodules are theirs too
    for alias, target in ALIASES:
        top = alias.partition(".")[0]
        existing = sys.modules.get(alias)
        if top in foreign or (existing is not None and existing.__name__ == target):
            continue
        if alias == top and _provided_elsewhere(alias):  # a child of our own parent needs no check
            foreign.add(top)
            log.info("ComfyUI compatibility: %r is provided by %s; not replaced", alias,
                     getattr(sys.modules.get(alias), "__file__", None) or "another package")
            continue
        sys.modules[alias] = importlib.import_module(target)
        provided.append(alias)
    if provided:
        log.info("ComfyUI compatibility modules provided for custom nodes: %s", ", ".join(provided))
    return provided
