"""Serving a ComfyUI web frontend build next to the API: index and files at /, the frontend's own extensions in
/extensions, API routes first, nothing outside the build folder."""
from __future__ import annotations

import pytest

pytest.importorskip("starlette")
from fixtures_asgi import make_engine  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from comfy_core.asgi import create_app  # noqa: E402
from comfy_core.asgi.frontend import frontend_routes, installed_frontend  # noqa: E402


@pytest.fixture
def build(tmp_path):
    root = tmp_path / "web"
    (root / "assets").mkdir(parents=True)
    (root / "extensions" / "core").mkdir(parents=True)
    (root / "index.html").write_text("<html>comfy</html>")
    (root / "assets" / "app.js").write_text("console.log(1)")
    (root / "assets" / "logo.png").write_bytes(b"\x89PNG fake")
    (root / "extensions" / "core" / "widgets.js").write_text("// core widgets")
    (tmp_path / "secret.txt").write_text("not served")
    return root


@pytest.fixture
def client(tmp_path, build):
    engine = make_engine(tmp_path)
    with TestClient(create_app(engine, owns_engine=True, frontend_dir=build)) as client:
        yield client


def test_index_and_build_files_are_served_without_caching(client):
    index = client.get("/")
    assert index.status_code == 200 and index.text == "<html>comfy</html>"
    assert index.headers["cache-control"] == "no-cache"
    script = client.get("/assets/app.js")
    assert script.text == "console.log(1)" and script.headers["cache-control"] == "no-cache"
    image = client.get("/assets/logo.png")
    assert image.content == b"\x89PNG fake" and "cache-control" not in image.headers


def test_api_routes_win_over_files(client):
    assert client.get("/object_info").headers["content-type"].startswith("application/json")
    assert client.get("/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    assert client.get("/no/such/file.js").status_code == 404


def test_frontend_extensions_are_listed_and_served(client):
    assert "/extensions/core/widgets.js" in client.get("/extensions").json()
    assert client.get("/extensions/core/widgets.js").text == "// core widgets"
    assert client.get("/extensions/core/../../secret.txt").status_code == 404


def test_nothing_outside_the_build_is_served(client):
    for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/assets/%2e%2e/%2e%2e/secret.txt"):
        response = client.get(path)
        assert response.status_code == 404 and "not served" not in response.text


def test_without_a_frontend_root_is_not_found(tmp_path):
    with TestClient(create_app(make_engine(tmp_path), owns_engine=True)) as client:
        assert client.get("/").status_code == 404
        assert client.get("/extensions").json() == []


def test_workflow_templates_folder_is_served_under_templates(tmp_path, build):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "index.json").write_text("[]")
    from starlette.applications import Starlette

    with TestClient(Starlette(routes=frontend_routes(build, templates))) as client:
        assert client.get("/templates/index.json").json() == []
        assert client.get("/").text == "<html>comfy</html>"


def test_a_folder_without_index_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        frontend_routes(tmp_path)


def test_the_installed_frontend_package_is_found_when_present():
    root = installed_frontend()
    if root is None:
        pytest.skip("comfyui-frontend-package is not installed (pip install 'comfy-core[frontend]')")
    assert (root / "index.html").is_file()


def test_system_stats_reports_the_frontend_versions_after_comfyui_version(tmp_path, monkeypatch):
    """ComfyUI 0.3.64 lists the frontend/template versions its requirements pin (the UI warns when its own build is
    older) and the installed templates version, null without the package."""
    import importlib.metadata

    from comfy_core.asgi import frontend

    def fake_version(name):
        if name == "comfyui-workflow-templates":
            raise importlib.metadata.PackageNotFoundError(name)
        raise AssertionError(name)

    monkeypatch.setattr(importlib.metadata, "version", fake_version)
    with TestClient(create_app(make_engine(tmp_path), owns_engine=True)) as client:
        system = client.get("/api/system_stats").json()["system"]
    keys = list(system)
    at = keys.index("comfyui_version")
    assert keys[at + 1:at + 4] == ["required_frontend_version", "installed_templates_version",
                                   "required_templates_version"]
    assert system["required_frontend_version"] == "1.27.10" and system["required_templates_version"] == "0.1.95"
    assert system["installed_templates_version"] is None
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.1.95")
    assert frontend.frontend_versions()["installed_templates_version"] == "0.1.95"


def test_core_node_docs_folder_is_served_under_docs(tmp_path, build):
    """ComfyUI serves comfyui-embedded-docs at /docs; the node help panel reads /docs/<node>/<locale>.md."""
    docs = tmp_path / "docs"
    (docs / "KSampler").mkdir(parents=True)
    (docs / "KSampler" / "en.md").write_text("# KSampler help")
    from starlette.applications import Starlette

    with TestClient(Starlette(routes=frontend_routes(build, None, docs))) as client:
        assert client.get("/docs/KSampler/en.md").text == "# KSampler help"
        assert client.get("/docs/KSampler/fr.md").status_code == 404
        assert client.get("/docs/..%2Fsecret.txt").status_code == 404
        assert client.get("/templates/index.json").status_code == 404  # no templates folder given
