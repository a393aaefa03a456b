"""ComfyUI's real web frontend (the installed `comfyui-frontend-package`) against a real comfy-core server, driven in
headless Chromium with Playwright: the first load of a new user, then the default workflow queued with the Run button
on the tiny demo checkpoint, its websocket progress, the image fetched from /view and the run in the queue sidebar;
then running and pending prompts in that sidebar and the UI's interrupt button.

Optional: skipped unless playwright, Debian's /usr/bin/chromium and the frontend package are all installed (CI has
none of them). Every same-origin answer of 400 or more must be one ComfyUI itself gives in the same situation
(`EXPECTED_MISSES`); page and console errors must be the frontend's own known ones.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
from comfy_core.asgi import create_app
from comfy_core.asgi.frontend import installed_frontend, installed_templates
from fixtures_asgi import Gate, make_engine, running_server

from comfy_core.demo import ensure_demo_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="no /usr/bin/chromium (apt-get install chromium)"),
    pytest.mark.skipif(installed_frontend() is None, reason="comfyui-frontend-package is not installed"),
]

# (method, path) -> status that ComfyUI 0.3.64 answers too, so the frontend is built to expect them.
EXPECTED_MISSES = {
    ("GET", "/user.css"): 404,  # index.html links it; not part of the frontend build
    ("GET", "/api/userdata/user.css"): 404,  # the user has no custom stylesheet
    ("GET", "/api/userdata"): 404,  # ?dir=workflows / subgraphs/ before the user saved any
    ("GET", "/api/userdata/comfy.templates.json"): 404,  # no saved node templates
    ("GET", "/api/userdata/workflows%2F.index.json"): 404,  # workflow sidebar index, absent until written
}
# Console errors the frontend logs for those answers (and for api.comfy.org, unreachable offline).
KNOWN_CONSOLE_ERRORS = ["Failed to load resource"]
if installed_templates() is None:  # ComfyUI serves /templates from comfyui-workflow-templates when installed
    EXPECTED_MISSES[("GET", "/templates/index.json")] = 404
    KNOWN_CONSOLE_ERRORS.append("Error loading core workflow templates")
# The frontend's own bug (Comfy-Org/ComfyUI_frontend#6747, also on real ComfyUI): registering the canvas navigation
# setting sets another setting that is not registered yet.
KNOWN_PAGE_ERROR = "reading 'id'"


class PageLog:
    """Everything one page did: responses, failures, console errors, page errors, websocket frames."""

    def __init__(self, page: Any, origin: str):
        self.origin = origin
        self.responses: list[tuple[str, str, int]] = []  # (method, path[?query], status)
        self.failures: list[str] = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.ws_in: list[dict[str, Any]] = []
        self.ws_out: list[dict[str, Any]] = []
        page.on("response", self._on_response)
        page.on("requestfailed", self._on_failed)
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.page_errors.append(f"{e}\n{e.stack}"))
        page.on("websocket", self._on_websocket)

    def _on_response(self, response: Any) -> None:
        url = urlsplit(response.url)
        if f"{url.scheme}://{url.netloc}" == self.origin:
            path = url.path + (f"?{url.query}" if url.query else "")
            self.responses.append((response.request.method, path, response.status))

    def _on_failed(self, request: Any) -> None:
        # net::ERR_ABORTED: Chromium's note for answered requests whose (empty) body nobody read, and for the
        # stylesheets that 404; anything else same-origin is a real failure. Other hosts are unreachable here.
        if request.url.startswith(self.origin) and "ERR_ABORTED" not in (request.failure or ""):
            self.failures.append(f"{request.method} {request.url}: {request.failure}")

    def _on_websocket(self, ws: Any) -> None:
        ws.on("framereceived", lambda payload: self._frame(self.ws_in, payload))
        ws.on("framesent", lambda payload: self._frame(self.ws_out, payload))

    @staticmethod
    def _frame(into: list[dict[str, Any]], payload: Any) -> None:
        if isinstance(payload, str):
            into.append(json.loads(payload))

    def unexpected(self, also: dict[tuple[str, str], int] | None = None) -> list[str]:
        """Same-origin answers >= 400 that ComfyUI would not give, failed requests, unknown page/console errors."""
        expected = {**EXPECTED_MISSES, **(also or {})}
        bad = [f"{m} {p} -> {s}" for m, p, s in self.responses
               if s >= 400 and expected.get((m, p.split("?")[0])) != s]
        bad += self.failures
        bad += [e for e in self.page_errors if KNOWN_PAGE_ERROR not in e]
        bad += [e for e in self.console_errors if not e.startswith(tuple(KNOWN_CONSOLE_ERRORS))]
        return bad

    def ws_types(self) -> list[str]:
        return [m["type"] for m in self.ws_in]


def wait_until(page: Any, condition, timeout: float = 20.0, what: str = "condition") -> None:
    """Poll `condition`, letting Playwright deliver its events meanwhile (a plain sleep would hold them back)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        page.wait_for_timeout(50)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("frontend")
    engine = make_engine(root, user_dir=str(root / "user"))
    ckpt = ensure_demo_checkpoint(engine.folders)
    gate = Gate()
    engine.register_nodes({"AsgiGate": gate.node_class})
    engine.start()
    app = create_app(engine, frontend_dir=installed_frontend())
    try:
        with running_server(app) as url:
            yield {"engine": engine, "url": url, "ckpt": ckpt.name, "root": root, "gate": gate}
    finally:
        engine.close()


@pytest.fixture(scope="module")
def browser(served):  # after `served`, so the server outlives the browser
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


def returning_user(served: dict[str, Any]) -> None:
    """What the frontend stores on a first visit (see the first test): later visits open the default workflow."""
    served["engine"].userdata.update_settings("default", {"Comfy.TutorialCompleted": True})


def open_ui(browser: Any, url: str) -> tuple[Any, Any, PageLog]:
    """A fresh browser profile (no localStorage) on `/`, once the app has built its graph."""
    context = browser.new_context(viewport={"width": 1920, "height": 1080})
    page = context.new_page()
    log = PageLog(page, url)
    page.goto(url + "/")
    page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=30000)
    return context, page, log


def test_first_load_of_a_new_user(served, browser):
    context, page, log = open_ui(browser, served["url"])
    try:
        # The new-user path stores the installed version and opens the template browser on an empty graph.
        wait_until(page, lambda: "Comfy.TutorialCompleted" in served["engine"].userdata.settings("default"),
                   what="the new-user settings")
        wait_until(page, lambda: "feature_flags" in log.ws_types(), what="the server's feature_flags message")
        wanted = {"/api/object_info", "/api/settings", "/api/users", "/api/system_stats", "/api/extensions",
                  "/api/i18n", "/api/experiment/models", "/api/workflow_templates", "/api/queue", "/api/history"}
        wait_until(page, lambda: wanted <= {p.split("?")[0] for _, p, s in log.responses if s == 200},
                   what="the start-up requests")
        assert log.unexpected() == []
        settings = served["engine"].userdata.settings("default")
        assert settings["Comfy.InstalledVersion"] == page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
        assert settings["Comfy.TutorialCompleted"] is True
        # ws handshake: our status first (with the socket's sid), the client's flags, then the server's flags
        assert log.ws_in[0]["type"] == "status" and log.ws_in[0]["data"]["sid"]
        assert log.ws_out[0]["type"] == "feature_flags" and log.ws_out[0]["data"]["supports_preview_metadata"]
        flags = next(m["data"] for m in log.ws_in if m["type"] == "feature_flags")
        assert flags == {"supports_preview_metadata": True, "max_upload_size": 100 * 1024 * 1024}
        assert page.evaluate("() => window.app.graph._nodes.length") == 0
    finally:
        context.close()


SET_UP_DEFAULT_GRAPH = """(ckpt) => {
    const nodes = window.app.graph._nodes;
    const widget = (type, name) => nodes.find(n => n.type === type).widgets.find(w => w.name === name);
    widget('CheckpointLoaderSimple', 'ckpt_name').value = ckpt;
    widget('KSampler', 'steps').value = 2;
    widget('KSampler', 'control_after_generate').value = 'fixed';
    widget('EmptyLatentImage', 'width').value = 64;
    widget('EmptyLatentImage', 'height').value = 64;
    return Object.fromEntries(nodes.map(n => [n.type, String(n.id)]));
}"""


def test_default_workflow_runs_from_the_run_button(served, browser):
    returning_user(served)
    context, page, log = open_ui(browser, served["url"])
    try:
        wait_until(page, lambda: page.evaluate("() => window.app.graph._nodes.length") == 7, what="the default graph")
        ids = page.evaluate(SET_UP_DEFAULT_GRAPH, served["ckpt"])
        page.locator("[data-testid='queue-button']").click()

        wait_until(page, lambda: "execution_success" in log.ws_types(), timeout=60, what="execution_success")
        prompt_id = next(m["data"]["prompt_id"] for m in log.ws_in if m["type"] == "execution_start")
        steps = [(m["data"]["value"], m["data"]["max"]) for m in log.ws_in
                 if m["type"] == "progress" and m["data"]["node"] == ids["KSampler"]]
        assert steps == [(1, 2), (2, 2)]
        executed = next(m["data"] for m in log.ws_in if m["type"] == "executed")
        assert executed["node"] == ids["SaveImage"] and executed["prompt_id"] == prompt_id
        image = executed["output"]["images"][0]
        assert image["type"] == "output" and image["filename"].endswith(".png")

        # The UI shows it: the node's output is stored and its picture fetched from /view.
        outputs = page.evaluate("() => JSON.parse(JSON.stringify(window.app.nodeOutputs))")
        assert outputs[ids["SaveImage"]]["images"] == [image]
        wait_until(page, lambda: any(p.startswith("/api/view?filename=" + image["filename"]) and s == 200
                               for _, p, s in log.responses), what="the /view fetch")

        # The queue sidebar lists the finished run with its picture.
        page.locator(".queue-tab-button").click()
        page.locator(".task-item").first.wait_for(timeout=10000)
        assert page.locator(".task-item").count() == 1
        page.locator(".task-output-image").first.wait_for(timeout=10000)
        history = served["engine"].history()
        assert history[prompt_id]["status"]["status_str"] == "success"
        saved = served["root"] / "output" / image["filename"]
        assert saved.is_file() and saved.read_bytes()[:4] == b"\x89PNG"
        assert log.unexpected() == []
    finally:
        context.close()


GATE_GRAPH = """async () => {
    window.app.graph.clear();
    const node = window.LiteGraph.createNode('AsgiGate');
    window.app.graph.add(node);
    await window.app.queuePrompt(0, 2);
    return String(node.id);
}"""


def test_queue_sidebar_shows_running_and_pending_and_interrupt_button_stops_the_run(served, browser):
    gate = served["gate"]
    returning_user(served)
    context, page, log = open_ui(browser, served["url"])
    try:
        wait_until(page, lambda: page.evaluate("() => window.app.graph._nodes.length") == 7, what="the default graph")
        done_before = len(served["engine"].history())
        page.locator(".queue-tab-button").click()
        wait_until(page, lambda: page.locator(".task-item").count() == done_before, what="the finished tasks")
        node_id = page.evaluate(GATE_GRAPH)  # two prompts of one blocking node: one runs, one waits
        wait_until(page, gate.entered.is_set, what="the first prompt to start")
        ids = [m["data"]["prompt_id"] for m in log.ws_in if m["type"] == "execution_start"]
        wait_until(page, lambda: page.locator(".task-item").count() == done_before + 2, what="running + pending")

        page.locator(".execution-actions button").first.click()  # the UI's interrupt button
        wait_until(page, lambda: "execution_interrupted" in log.ws_types(), what="execution_interrupted")
        interrupted = next(m["data"] for m in log.ws_in if m["type"] == "execution_interrupted")
        assert interrupted["prompt_id"] == ids[0] and interrupted["node_id"] == node_id
        gate.release()  # the pending prompt now runs to the end
        wait_until(page, lambda: "execution_success" in log.ws_types(), what="the second prompt's success")
        second = next(m["data"]["prompt_id"] for m in log.ws_in if m["type"] == "execution_success")
        history = served["engine"].history()
        assert len(history) == done_before + 2 and second != ids[0]
        assert history[ids[0]]["status"]["status_str"] == "error"
        assert history[second]["status"]["status_str"] == "success"
        wait_until(page, lambda: page.locator(".task-item").count() == done_before + 2, what="both in history")
        assert ("POST", "/api/interrupt", 200) in log.responses
        assert log.unexpected() == []
    finally:
        context.close()


def test_multi_user_server_starts_on_the_user_picker_and_uses_the_new_user(browser, tmp_path):
    engine = make_engine(tmp_path, user_dir=str(tmp_path / "user"), multi_user=True)
    engine.start()
    try:
        with running_server(create_app(engine, frontend_dir=installed_frontend())) as url:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            page = context.new_page()
            log = PageLog(page, url)
            users: list[str | None] = []
            page.on("request", lambda r: "/api/settings" in r.url and users.append(r.headers.get("comfy-user")))
            page.goto(url + "/")
            page.wait_for_url("**/user-select", timeout=30000)
            page.get_by_placeholder("Enter a username").fill("alice")
            page.get_by_role("button", name="Next").click()
            page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=30000)
            wait_until(page, lambda: users, what="a settings request")
            (user_id, name), = engine.userdata.users().items()
            assert name == "alice" and user_id.startswith("alice_")
            assert set(users) == {user_id}  # every settings call carries the Comfy-User header
            wait_until(page, lambda: "Comfy.TutorialCompleted" in engine.userdata.settings(user_id),
                       what="alice's settings")
            # The <link> to user.css cannot send the header: with no user we answer 403 (ComfyUI: a 500).
            assert log.unexpected({("GET", "/api/userdata/user.css"): 403}) == []
            context.close()
    finally:
        engine.close()
