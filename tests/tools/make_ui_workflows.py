"""Ground truth for `comfy_core.workflow_format`: builds UI workflows in ComfyUI's real web frontend (the installed
comfyui-frontend-package, headless Chromium via Playwright, against a real comfy-core server with tiny real-layout
model files) and stores each pair (UI workflow, the API prompt the frontend's `app.graphToPrompt()` makes of it) in
tests/data/ui_workflows/<case>.json. Not run by CI: `python tests/tools/make_ui_workflows.py`.
"""
from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from comfy_core.asgi import create_app
from comfy_core.asgi.frontend import installed_frontend
from fixtures_asgi import make_engine, running_server
from playwright.sync_api import sync_playwright

from comfy_core.demo import ensure_demo_checkpoint

OUT = TESTS / "data" / "ui_workflows"
SIGNATURES = TESTS / "data" / "ui_workflows_widgets.json"
UPLOADED = "uploaded_cat.png"

# Helpers every case can use: nodes by type, widgets by name, links by input name.
PRELUDE = """
const LG = window.LiteGraph, G = () => window.app.graph;
const byType = (type, i = 0) => G()._nodes.filter(n => n.type === type)[i];
const add = (type, pos = [0, 0]) => { const n = LG.createNode(type); n.pos = pos; G().add(n); return n; };
const set = (node, name, value) => { node.widgets.find(w => w.name === name).value = value; };
const link = (a, slot, b, input) => a.connect(slot, b, b.findInputSlot(input));
async function defaults(ckpt) {
    await window.app.loadGraphData();
    set(byType('CheckpointLoaderSimple'), 'ckpt_name', ckpt);
    set(byType('KSampler'), 'steps', 2);
    set(byType('KSampler'), 'control_after_generate', 'fixed');
    set(byType('EmptyLatentImage'), 'width', 64);
    set(byType('EmptyLatentImage'), 'height', 64);
}
"""

# case name -> JS body (has `ckpt`, `image`); the graph it leaves is converted by graphToPrompt.
CASES = {
    "default_txt2img": "await defaults(ckpt);",
    "reroute_nodes": """await defaults(ckpt);
        const ck = byType('CheckpointLoaderSimple'), ks = byType('KSampler');
        const r1 = add('Reroute', [300, 100]), r2 = add('Reroute', [350, 100]);
        link(ck, 0, r1, ''); r1.connect(0, r2, 0); r2.connect(0, ks, 0);
        const r3 = add('Reroute', [300, 600]); link(byType('VAEDecode'), 0, r3, ''); r3.connect(0, byType('SaveImage'), 0);""",
    "primitive_node_seed": """await defaults(ckpt);
        const p = add('PrimitiveNode', [0, 600]); const ks = byType('KSampler');
        p.connect(0, ks, ks.findInputSlot('seed'));
        p.widgets[0].value = 1234;
        if (p.widgets[1]) p.widgets[1].value = 'fixed';
        const p2 = add('PrimitiveNode', [0, 700]); const el = byType('EmptyLatentImage');
        p2.connect(0, el, el.findInputSlot('batch_size')); p2.widgets[0].value = 2;""",
    "muted_and_bypassed": """await defaults(ckpt);
        const ks = byType('KSampler'), el = byType('EmptyLatentImage');
        const up = add('LatentUpscaleBy', [400, 600]); link(el, 0, up, 'samples'); link(up, 0, ks, 'latent_image');
        up.mode = 4;
        const prev = add('PreviewImage', [1500, 600]); link(byType('VAEDecode'), 0, prev, 'images'); prev.mode = 2;
        const neg = add('CLIPTextEncode', [400, 800]); link(byType('CheckpointLoaderSimple'), 1, neg, 'clip');
        neg.mode = 2; link(neg, 0, ks, 'negative');""",
    "converted_widget_linked": """await defaults(ckpt);
        const ks = byType('KSampler');
        const pi = add('PrimitiveInt', [0, 600]); set(pi, 'value', 3); link(pi, 0, ks, 'steps');
        const ps = add('PrimitiveStringMultiline', [0, 800]); set(ps, 'value', 'a dog');
        const te = byType('CLIPTextEncode'); link(ps, 0, te, 'text');""",
    "load_image_upload": """await window.app.loadGraphData();
        G().clear();
        const ck = add('CheckpointLoaderSimple'); set(ck, 'ckpt_name', ckpt);
        const li = add('LoadImage', [0, 300]); set(li, 'image', image);
        const enc = add('VAEEncode', [300, 300]); link(li, 0, enc, 'pixels'); link(ck, 2, enc, 'vae');
        const dec = add('VAEDecode', [600, 300]); link(enc, 0, dec, 'samples'); link(ck, 2, dec, 'vae');
        const save = add('SaveImage', [900, 300]); link(dec, 0, save, 'images'); set(save, 'filename_prefix', 'roundtrip');
        const mask = add('ImageToMask', [300, 600]); link(li, 0, mask, 'image'); set(mask, 'channel', 'green');""",
    "ksampler_advanced": """await defaults(ckpt);
        const ks = byType('KSampler');
        const adv = add('KSamplerAdvanced', [800, 200]);
        for (const [i, name] of [[0, 'model'], [4, 'positive'], [6, 'negative']]) {}
        const ck = byType('CheckpointLoaderSimple');
        link(ck, 0, adv, 'model');
        const pos = ks.getInputNode(ks.findInputSlot('positive')), neg = ks.getInputNode(ks.findInputSlot('negative'));
        link(pos, 0, adv, 'positive'); link(neg, 0, adv, 'negative'); link(ks, 0, adv, 'latent_image');
        set(adv, 'noise_seed', 77); set(adv, 'control_after_generate', 'increment'); set(adv, 'steps', 4);
        set(adv, 'start_at_step', 2); set(adv, 'return_with_leftover_noise', 'enable'); set(adv, 'sampler_name', 'dpmpp_2m');
        adv.title = 'Refine';
        link(adv, 0, byType('VAEDecode'), 'samples');""",
    "optional_inputs_unset": """await window.app.loadGraphData();
        G().clear();
        const a = add('PrimitiveString'); set(a, 'value', 'hello world');
        const rr = add('RegexReplace', [300, 0]); link(a, 0, rr, 'string'); set(rr, 'regex_pattern', 'o');
        set(rr, 'replace', '0');
        const sl = add('StringLength', [600, 0]); link(rr, 0, sl, 'string');
        const cl = add('CLIPLoader', [0, 300]);""",
    "subgraph": """await defaults(ckpt);
        const ks = byType('KSampler'), dec = byType('VAEDecode');
        const res = G().convertToSubgraph(new Set([ks, dec]));
        res.node.title = 'Sample and decode';""",
    "legacy_converted_widgets": "",  # hand-written: see legacy_workflow()
    "dynamic_prompt_comments": """await defaults(ckpt);
        set(byType('CLIPTextEncode', 1), 'text', 'a cat // not this\\n/* nor this */ on a \\\\{red\\\\} mat, {only}');
        add('Note', [0, 900]).widgets[0].value = 'a note';
        add('MarkdownNote', [300, 900]).widgets[0].value = '# heading';""",
    "nested_subgraph_bypass_inside": """await defaults(ckpt);
        const ks = byType('KSampler'), el = byType('EmptyLatentImage');
        const up = add('LatentUpscaleBy', [400, 600]); link(el, 0, up, 'samples'); link(up, 0, ks, 'latent_image');
        up.mode = 4;
        const inner = G().convertToSubgraph(new Set([up, ks])).node;
        const outer = G().convertToSubgraph(new Set([inner, byType('VAEDecode')])).node;
        outer.title = 'Outer';""",
    "subgraph_widget_input": """await defaults(ckpt);
        const ks = byType('KSampler');
        const pi = add('PrimitiveInt', [0, 600]); set(pi, 'value', 5); link(pi, 0, ks, 'steps');
        const ps = add('PrimitiveFloat', [0, 700]); set(ps, 'value', 6.5); link(ps, 0, ks, 'cfg');
        const sub = G().convertToSubgraph(new Set([ks, byType('VAEDecode')])).node;
        G().remove(ps);
        const promoted = sub.widgets.find(w => w.name === 'cfg'); if (promoted) promoted.value = 4.5;""",
}


RELOAD = """async (workflow) => {
    await window.app.loadGraphData(workflow);
    const r = await window.app.graphToPrompt(); return JSON.parse(JSON.stringify(r)); }"""


def legacy_workflow() -> dict:
    """The default graph as an older frontend saved it: widgets "converted to inputs" (a linked seed fed by a
    PrimitiveNode, an unlinked steps), version 0.4, no ids: written here, then loaded by the real UI."""
    workflow = json.loads((OUT / "default_txt2img.json").read_text())["workflow"]
    for key in ("id", "revision"):
        workflow.pop(key, None)
    workflow["version"] = 0.4
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
    sampler["inputs"] += [{"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 10},
                          {"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": None}]
    workflow["nodes"].append({"id": 10, "type": "PrimitiveNode", "pos": [0, 700], "size": [300, 80], "flags": {},
                              "order": 0, "mode": 0, "title": "seed",
                              "properties": {"Run widget replace on values": False},
                              "outputs": [{"name": "INT", "type": "INT", "links": [10], "widget": {"name": "seed"}}],
                              "widgets_values": [42, "fixed"]})
    workflow["links"].append([10, 10, 0, sampler["id"], len(sampler["inputs"]) - 2, "INT"])
    workflow["last_node_id"], workflow["last_link_id"] = 10, 10
    return workflow


def write_input_image(engine) -> None:
    image = Image.new("RGB", (64, 64), (200, 30, 90))
    data = io.BytesIO()
    image.save(data, format="PNG")
    path = engine.storage.root("input") / UPLOADED
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.getvalue())


def write_widget_signatures(object_info: dict) -> None:
    """What the conversion reads of each node class the fixtures use, as the browser got it from the server: the
    test checks that the engine's object_info still says the same."""
    from test_workflow_format import widget_signature

    used = set()
    for path in OUT.glob("*.json"):
        workflow = json.loads(path.read_text())["workflow"]
        graphs = [workflow, *(workflow.get("definitions") or {}).get("subgraphs", [])]
        used |= {n["type"] for g in graphs for n in g["nodes"] if n["type"] in object_info}
    signatures = {name: widget_signature(object_info[name]) for name in sorted(used)}
    lines = [f" {json.dumps(name)}: {json.dumps(signature)}" for name, signature in signatures.items()]
    SIGNATURES.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def generate(selected: list[str]) -> None:
    root = Path(tempfile.mkdtemp(prefix="ui-workflows-"))
    engine = make_engine(root)
    ckpt = ensure_demo_checkpoint(engine.folders).name
    write_input_image(engine)
    engine.userdata.update_settings("default", {"Comfy.TutorialCompleted": True})
    engine.start()
    try:
        with running_server(create_app(engine, frontend_dir=installed_frontend())) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_context(viewport={"width": 1920, "height": 1080}).new_page()
            page.goto(url + "/")
            page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=30000)
            served = page.evaluate("async () => (await fetch('/api/object_info')).json()")
            for name in selected:
                script = f"""async ([ckpt, image]) => {{ {PRELUDE} {CASES[name]}
                    G().setDirtyCanvas(true, true);
                    const r = await window.app.graphToPrompt(); return JSON.parse(JSON.stringify(r)); }}"""
                workflow = (legacy_workflow() if name == "legacy_converted_widgets"
                            else page.evaluate(script, [ckpt, UPLOADED])["workflow"])
                # what a user does with a saved file: load it into the UI, then queue it
                result = page.evaluate(RELOAD, workflow)
                pair = {"workflow": workflow, "prompt": result["output"]}
                (OUT / f"{name}.json").write_text(json.dumps(pair, indent=1) + "\n")
                print(name, len(result["output"]), "nodes")
            write_widget_signatures(served)  # after the cases: it lists the node classes they use
            browser.close()
    finally:
        engine.close()


if __name__ == "__main__":
    generate(sys.argv[1:] or list(CASES))
