"""Serving ComfyUI's web frontend (the `comfyui-frontend-package` wheel, or any folder with its build) next to the API.

ComfyUI serves `index.html` at `/` with caching off, and the rest of the build as static files from the root; API
routes are matched first, so the static mount only sees paths no route claims. Nothing here is imported unless a
frontend is asked for.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

FRONTEND_PACKAGE = "comfyui_frontend_package"
TEMPLATES_PACKAGE = "comfyui_workflow_templates"  # the template gallery the frontend reads from /templates
DOCS_PACKAGE = "comfyui_embedded_docs"  # core node help pages the frontend reads from /docs/<node>/<locale>.md
# What ComfyUI 0.3.64's requirements.txt pins; its /system_stats reports them so the UI can warn about an old build.
REQUIRED_FRONTEND_VERSION = "1.27.10"
REQUIRED_TEMPLATES_VERSION = "0.1.95"
_NO_CACHE = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"}


def _package_folder(package: str, folder: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / folder
    return path if path.is_dir() else None


def installed_frontend() -> Path | None:
    """The static folder of the installed `comfyui-frontend-package`, if any (`pip install comfy-core[frontend]`)."""
    static = _package_folder(FRONTEND_PACKAGE, "static")
    return static if static is not None and (static / "index.html").is_file() else None


def installed_templates() -> Path | None:
    """The templates folder of the installed `comfyui-workflow-templates`, if any."""
    return _package_folder(TEMPLATES_PACKAGE, "templates")


def installed_docs() -> Path | None:
    """The docs folder of the installed `comfyui-embedded-docs`, if any."""
    return _package_folder(DOCS_PACKAGE, "docs")


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def frontend_versions() -> dict[str, Any]:
    """The frontend/template version facts ComfyUI adds to /system_stats (the installed one is null when absent)."""
    return {"required_frontend_version": REQUIRED_FRONTEND_VERSION,
            "installed_templates_version": _distribution_version("comfyui-workflow-templates"),
            "required_templates_version": REQUIRED_TEMPLATES_VERSION}


class _FrontendFiles(StaticFiles):
    """The build's files; scripts and styles revalidated on every load, as ComfyUI does after an upgrade."""

    def file_response(self, full_path, stat_result, scope, status_code=200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        if str(full_path).endswith((".js", ".css", ".html")):
            response.headers["Cache-Control"] = "no-cache"
        return response


def frontend_extension_dirs(web_root: str | Path | None) -> dict[str, Path]:
    """The build's own extension folders by name (e.g. `core`), listed by /extensions beside custom nodes' ones;
    read once when the app is made (a build does not change while served)."""
    folder = Path(web_root) / "extensions" if web_root is not None else None
    if folder is None or not folder.is_dir():
        return {}
    return {entry.name: entry for entry in sorted(folder.iterdir()) if entry.is_dir()}


def frontend_routes(web_root: str | Path, templates_dir: str | Path | None = None,
                    docs_dir: str | Path | None = None) -> list[BaseRoute]:
    """`/` → index.html and the build's other files (plus `/templates/*` from `templates_dir` and `/docs/*` from
    `docs_dir`), for appending after the API routes."""
    root = Path(web_root)
    index = root / "index.html"
    if not index.is_file():
        raise FileNotFoundError(f"no index.html in the frontend folder {root}")

    async def get_index(request: Request) -> Response:
        return FileResponse(index, headers=_NO_CACHE)

    routes: list[BaseRoute] = [Route("/", get_index, methods=["GET"])]
    if templates_dir is not None:
        routes.append(Mount("/templates", app=StaticFiles(directory=templates_dir)))
    if docs_dir is not None:
        routes.append(Mount("/docs", app=StaticFiles(directory=docs_dir)))
    return routes + [Mount("/", app=_FrontendFiles(directory=root))]
