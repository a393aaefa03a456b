"""comfy_core.nodes.extras: SaveImageWebsocket over a real socket, Perp-Neg (formula, guider, MODEL patch, engine),
InstructPix2Pix (8-channel UNet detection, c_concat, the conditioning node), CLIPTextEncodeControlnet, WebcamCapture."""
from __future__ import annotations

import io
import json
import struct
import time

import fixtures_models as fm
import fixtures_text
import numpy as np
import pytest
import torch
from comfy_core.asgi import create_app
from fixtures_asgi import running_server
from fixtures_ksampler import (
    KEEP_LATENT,
    LATENT,
    LOADER,
    NEG,
    POS,
    base_graph,
    ksampler,
    make_engine,
    structured_png,
)
from fixtures_nodes import node_context
from PIL import Image

from comfy_core import context
from comfy_core.errors import ModelLoadError
from comfy_core.models.detect import detect_model
from comfy_core.models.model_sampling import ModelSampling
from comfy_core.models.unet import UNetConfig
from comfy_core.nodes import extras
from comfy_core.sampling.guidance import CFGDenoiser, calc_cond_batch, prepare_conds
from comfy_core.sampling.perp_neg import PerpNegDenoiser, perp_neg

CKPT = "tiny.safetensors"


# -- SaveImageWebsocket -------------------------------------------------------------------------------------------
def _http_json(url, body):
    import urllib.request

    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _frames_until_done(ws, prompt_id, timeout=30.0):
    """websockets_api_example_ws_images.py's loop: binary frames while our prompt runs, until executing null."""
    frames, current = [], None
    deadline = time.monotonic() + timeout
    while True:
        frame = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(frame, bytes):
            frames.append((current, frame))
            continue
        message = json.loads(frame)
        if message["type"] == "executing" and message["data"].get("prompt_id") == prompt_id:
            current = message["data"]["node"]
            if current is None:
                return frames


def _websocket_prompt():
    # two 8x4 images of known colours; SaveImageWebsocket as ComfyUI's example names it
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 1, "color": 0xFF8000}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 4, "batch_size": 1, "color": 0x0080FF}},
        "3": {"class_type": "ImageBatch", "inputs": {"image1": ["1", 0], "image2": ["2", 0]}},
        "save_image_websocket_node": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["3", 0]}},
    }


def test_save_image_websocket_sends_png_frames_to_its_client_only(tmp_path):
    from websockets.sync.client import connect

    from comfy_core import Engine, EngineConfig

    engine = Engine(EngineConfig(models_dir=str(tmp_path / "m"), input_dir=str(tmp_path / "i"),
                                 output_dir=str(tmp_path / "o"), temp_dir=str(tmp_path / "t")))  # previews off
    # a lossy budget of 0 drops every lossy message: the images must still arrive
    app = create_app(engine, owns_engine=True, ws_lossy_buffer=0)
    with running_server(app) as base:
        url = base.replace("http://", "ws://") + "/ws?clientId="
        with connect(url + "me") as ws, connect(url + "other") as other:
            assert json.loads(ws.recv(timeout=10))["type"] == "status"
            assert json.loads(other.recv(timeout=10))["type"] == "status"
            for _ in range(2):  # twice: the node re-runs every time (ComfyUI's IS_CHANGED is the clock)
                prompt_id = _http_json(base + "/prompt", {"prompt": _websocket_prompt(), "client_id": "me"})["prompt_id"]
                frames = _frames_until_done(ws, prompt_id)
                assert [node for node, _ in frames] == ["save_image_websocket_node"] * 2
                colours = []
                for _, frame in frames:
                    assert struct.unpack(">II", frame[:8]) == (1, 2)  # PREVIEW_IMAGE, PNG
                    image = Image.open(io.BytesIO(frame[8:]))
                    assert image.format == "PNG" and image.size == (8, 4) and image.mode == "RGB"
                    colours.append(image.getpixel((3, 2)))
                assert colours == [(255, 128, 0), (0, 128, 255)]
            with pytest.raises(TimeoutError):  # the other client got status/queue messages only, no frames
                while True:
                    assert isinstance(other.recv(timeout=0.5), str)


def test_save_image_websocket_progress_channel(tmp_path):
    """Library view: one progress report per image (value = index, as ComfyUI's ProgressBar.update_absolute)."""
    seen = []
    ctx = node_context(tmp_path, on_progress=lambda v, t, p: seen.append((v, t, p)))
    images = torch.rand(3, 5, 6, 3)
    with context.use(ctx):
        assert extras.SaveImageWebsocket().save_images(images) == {}
    assert [(v, t) for v, t, _ in seen] == [(0, 3), (1, 3), (2, 3)]
    decoded = torch.tensor(np.asarray(Image.open(io.BytesIO(seen[2][2].image))).tolist()).reshape(5, 6, 3)
    assert torch.equal(decoded, (images[2] * 255).clamp(0, 255).to(torch.uint8).long())  # truncation, as ComfyUI
    assert seen[0][2].image_type == "image/png"


# -- Perp-Neg -----------------------------------------------------------------------------------------------------
def test_perp_neg_formula_by_hand():
    empty = torch.zeros(1, 2)
    positive, negative = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    # pos = (1,0), neg = (1,1): perp = neg - (<neg,pos>/|pos|²) pos = (0,1); result = 3·((1,0) - 2·(0,1))
    assert torch.equal(perp_neg(positive, negative, empty, 2.0, 3.0), torch.tensor([[3.0, -6.0]]))
    # a negative parallel to the positive has no perpendicular part: plain guidance from the empty prompt
    empty, positive = torch.tensor([[0.5, 0.5]]), torch.tensor([[1.5, 0.5]])  # pos = (1, 0)
    assert torch.allclose(perp_neg(positive, torch.tensor([[3.5, 0.5]]), empty, 5.0, 2.0),
                          torch.tensor([[0.5 + 2 * 1.0, 0.5]]))


class TokenModel:
    """apply_model predicts, for each row, the first context token reshaped to the latent ([B,16] -> [B,4,2,2])."""

    def __init__(self):
        self.model_sampling = ModelSampling()
        self.model_options = {}
        self.batches = []

    def extra_conds(self, **kw):
        return {}

    def apply_model(self, x, sigma, *, context, y=None, c_concat=None, control=None, transformer_options=None):
        self.batches.append(x.shape[0])
        return context[:, 0, :16].reshape(x.shape).clone()

    def clone(self):
        other = TokenModel()
        other.model_options = dict(self.model_options)
        return other


def _token_cond(seed):
    return [[torch.randn(1, 1, 16, generator=torch.Generator().manual_seed(seed)), {}]]


def _prepared(model, conditioning, x):
    return prepare_conds(model, conditioning, x, prompt_type="negative")


def test_perp_neg_guider_and_model_patch_match_the_formula():
    model, x, sigma = TokenModel(), torch.zeros(1, 4, 2, 2), torch.tensor([3.0])
    pos, neg, empty = _token_cond(1), _token_cond(2), _token_cond(3)
    d = {n: c[0][0][:, 0].reshape(1, 4, 2, 2) for n, c in (("pos", pos), ("neg", neg), ("empty", empty))}
    p, q = d["pos"] - d["empty"], d["neg"] - d["empty"]
    expected = d["empty"] + 4.0 * (p - 1.5 * (q - (p * q).sum() / (p * p).sum() * p))
    guided = PerpNegDenoiser(model, _prepared(model, pos, x), _prepared(model, neg, x), _prepared(model, empty, x),
                             4.0, 1.5)(x, sigma)
    assert torch.allclose(guided, expected, atol=1e-5)
    assert model.batches == [3]  # the three prompts in one model call
    patched = extras.PerpNeg().patch(model, empty, 1.5)[0]
    via_cfg = CFGDenoiser(patched, _prepared(patched, pos, x), _prepared(patched, neg, x), 4.0)(x, sigma)
    assert torch.allclose(via_cfg, expected, atol=1e-5)
    assert not model.model_options  # the patch is on a clone


def test_perp_neg_guider_cfg1_shortcuts():
    model, x, sigma = TokenModel(), torch.zeros(1, 4, 2, 2), torch.tensor([1.0])
    pos, neg, empty = (_prepared(model, _token_cond(s), x) for s in (1, 2, 3))
    out = PerpNegDenoiser(model, pos, neg, empty, 1.0, 0.0)(x, sigma)
    assert torch.allclose(out, calc_cond_batch(model, [pos], x, sigma, {})[0])
    assert model.batches[0] == 1  # neg_scale 0 and cfg 1: only the positive prompt is evaluated
    model.batches.clear()
    PerpNegDenoiser(model, pos, neg, empty, 2.0, 0.0)(x, sigma)
    assert model.batches == [2]  # neg_scale 0: the negative prompt is skipped
    model.batches.clear()
    PerpNegDenoiser(model, pos, neg, empty, 1.0, 0.0)(x, sigma, model_options={"disable_cfg1_optimization": True})
    assert model.batches == [3]


def test_perp_neg_guider_node_and_patch_node_agree_through_engine(tmp_path):
    """PerpNegGuider under SamplerCustomAdvanced and the PerpNeg MODEL patch under KSampler are the same guidance."""
    models = tmp_path / "models"
    fm.write_checkpoint(models / "checkpoints" / CKPT, "sd1")
    kept: dict = {}
    engine = make_engine(tmp_path, models, kept)
    try:
        prompt = base_graph(CKPT, 32, 32)
        prompt["50"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": [LOADER, 1]}}
        prompt["51"] = {"class_type": "PerpNeg", "inputs": {"model": [LOADER, 0], "empty_conditioning": ["50", 0],
                                                             "neg_scale": 0.7}}
        prompt["3"] = {**ksampler([LATENT, 0], seed=5, steps=3, cfg=5.0), }
        prompt["3"]["inputs"]["model"] = ["51", 0]
        prompt["30"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}}
        prompt["31"] = {"class_type": "PerpNegGuider", "inputs": {
            "model": [LOADER, 0], "positive": [POS, 0], "negative": [NEG, 0], "empty_conditioning": ["50", 0],
            "cfg": 5.0, "neg_scale": 0.7}}
        prompt["32"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        prompt["33"] = {"class_type": "BasicScheduler", "inputs": {"model": [LOADER, 0], "scheduler": "normal",
                                                                    "steps": 3, "denoise": 1.0}}
        prompt["34"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["30", 0], "guider": ["31", 0], "sampler": ["32", 0], "sigmas": ["33", 0],
            "latent_image": [LATENT, 0]}}
        prompt["60"] = ksampler([LATENT, 0], seed=5, steps=3, cfg=5.0)  # plain CFG, for contrast
        prompt[KEEP_LATENT] = {"class_type": "KeepLatent", "inputs": {"value": ["3", 0], "key": "patch"}}
        prompt["22"] = {"class_type": "KeepLatent", "inputs": {"value": ["34", 0], "key": "guider"}}
        prompt["23"] = {"class_type": "KeepLatent", "inputs": {"value": ["60", 0], "key": "cfg"}}
        engine.run(prompt)
    finally:
        engine.close()
    patch, guider, cfg = (kept[k]["samples"] for k in ("patch", "guider", "cfg"))
    assert patch.shape == (1, 4, 4, 4) and torch.isfinite(patch).all()
    assert torch.allclose(patch, guider, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(patch, cfg, atol=1e-3)


# -- InstructPix2Pix ----------------------------------------------------------------------------------------------
def _ip2p_checkpoint(path):
    cfg = UNetConfig(**{**fm.TINY_UNETS["sd1"].__dict__, "in_channels": 8})
    from comfy_core.models.unet import UNetModel

    sd = {fm.UNET_PREFIX + k: v.half() for k, v in fm.randomize(fm._shapes(lambda: UNetModel(cfg)), 0).items()}
    sd.update(fm.vae_state_dict(seed=100, dtype=torch.float16, prefix=fm.VAE_PREFIX))
    sd.update(fixtures_text.tiny_sd1_text(dtype=torch.float16))
    return fm.write(path, sd)


def test_detects_8_channel_unet_as_instruct_pix2pix(tmp_path):
    sd = fm.checkpoint_state_dict("sd1", text=False, vae=False)
    weight = sd[fm.UNET_PREFIX + "input_blocks.0.0.weight"]
    sd[fm.UNET_PREFIX + "input_blocks.0.0.weight"] = torch.cat([weight, weight], dim=1)
    spec = detect_model(sd)
    assert spec.ip2p and not spec.inpaint and spec.unet.in_channels == 8
    inpaint = detect_model(fm.checkpoint_state_dict("sd1_inpaint", text=False, vae=False))
    assert inpaint.inpaint and not inpaint.ip2p
    sd[fm.UNET_PREFIX + "input_blocks.0.0.weight"] = weight[:, :3]
    with pytest.raises(ModelLoadError, match="input channels 3"):
        detect_model(sd)


def test_ip2p_extra_conds_concat_the_source_latent(tmp_path):
    from comfy_core.models.checkpoint import load_checkpoint_file

    model = load_checkpoint_file(_ip2p_checkpoint(tmp_path / "ip2p.safetensors"), want_clip=False,
                                 want_vae=False)[0]
    noise = torch.randn(2, 4, 4, 6)
    source = torch.randn(1, 4, 4, 6)
    conds = model.extra_conds(noise=noise, concat_latent_image=source)
    assert torch.equal(conds["c_concat"], source.expand(2, -1, -1, -1))  # unscaled, repeated to the batch
    assert torch.equal(model.extra_conds(noise=noise)["c_concat"], torch.zeros_like(noise))
    resized = model.extra_conds(noise=noise, concat_latent_image=torch.randn(1, 4, 8, 12))["c_concat"]
    assert resized.shape == (2, 4, 4, 6)


def test_instruct_pix2pix_node_crops_encodes_and_samples(tmp_path):
    models = tmp_path / "models"
    _ip2p_checkpoint(models / "checkpoints" / CKPT)
    kept: dict = {}
    engine = make_engine(tmp_path, models, kept)
    (tmp_path / "input").mkdir(exist_ok=True)
    big = Image.open(io.BytesIO(structured_png(64)))
    big.crop((0, 0, 35, 38)).save(tmp_path / "input" / "src.png")  # 35 wide, 38 high: cropped to 32x32
    big.crop((1, 3, 33, 35)).save(tmp_path / "input" / "centre.png")  # the centred 32x32 crop of it
    try:
        results = {}
        for name in ("src.png", "centre.png"):
            prompt = base_graph(CKPT, 32, 32)
            prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": name}}
            prompt["11"] = {"class_type": "InstructPixToPixConditioning", "inputs": {
                "positive": [POS, 0], "negative": [NEG, 0], "vae": [LOADER, 2], "pixels": ["10", 0]}}
            prompt["3"] = {"class_type": "KSampler", "inputs": {
                "seed": 3, "steps": 2, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                "model": [LOADER, 0], "positive": ["11", 0], "negative": ["11", 1], "latent_image": ["11", 2]}}
            prompt[KEEP_LATENT] = {"class_type": "KeepLatent", "inputs": {"value": ["11", 2], "key": "latent"}}
            prompt["22"] = {"class_type": "KeepLatent", "inputs": {"value": ["3", 0], "key": "sampled"}}
            engine.run(prompt)
            results[name] = (kept["latent"]["samples"], kept["sampled"]["samples"])
        prompt = base_graph(CKPT, 32, 32)  # the same sampler without the source image, for contrast
        prompt["3"] = ksampler([LATENT, 0], seed=3, steps=2, cfg=4.0)
        prompt["22"] = {"class_type": "KeepLatent", "inputs": {"value": ["3", 0], "key": "plain"}}
        engine.run(prompt)
    finally:
        engine.close()
    latent, sampled = results["src.png"]
    assert torch.equal(latent, torch.zeros(1, 4, 4, 4))
    assert torch.equal(sampled, results["centre.png"][1])  # the odd edges were cropped away, centred
    assert not torch.allclose(sampled, kept["plain"]["samples"], atol=1e-3)


def test_instruct_pix2pix_conditioning_values(tmp_path):
    class RecordingVAE:
        def encode(self, pixels, progress=None):
            self.pixels = pixels
            return torch.full((pixels.shape[0], 4, pixels.shape[1] // 8, pixels.shape[2] // 8), 2.0)

    vae, pixels = RecordingVAE(), torch.rand(1, 21, 19, 4)
    positive = [[torch.ones(1, 77, 8), {"strength": 0.5}]]
    with context.use(node_context(tmp_path)):
        pos, neg, latent = extras.InstructPixToPixConditioning().encode(positive, [], pixels, vae)
    assert torch.equal(vae.pixels, pixels[:, 2:18, 1:17, :3])  # 21 -> 16 from row (21 % 8)//2; 19 -> 16 from 1
    assert neg == [] and latent["samples"].shape == (1, 4, 2, 2) and not latent["samples"].any()
    assert pos[0][1]["strength"] == 0.5 and torch.equal(pos[0][1]["concat_latent_image"], torch.full((1, 4, 2, 2), 2.0))
    assert "concat_latent_image" not in positive[0][1]  # the input list is not modified


# -- CLIPTextEncodeControlnet and WebcamCapture -------------------------------------------------------------------
def test_clip_text_encode_controlnet_adds_the_controlnet_text(tmp_path):
    from comfy_core.models.text_encoders import load_clip_from_state_dict

    clip = load_clip_from_state_dict(fixtures_text.tiny_sd1_text())
    base = [[torch.zeros(1, 77, fixtures_text.CLIP_L_WIDTH), {"pooled_output": None}]]
    (out,) = extras.CLIPTextEncodeControlnet().encode(clip, base, "a red house")
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a red house"), return_pooled=True)
    assert torch.equal(out[0][0], base[0][0])
    assert torch.equal(out[0][1]["cross_attn_controlnet"], cond)
    assert torch.equal(out[0][1]["pooled_output_controlnet"], pooled)
    assert set(base[0][1]) == {"pooled_output"}


def test_webcam_capture_loads_the_uploaded_frame(tmp_path):
    models = tmp_path / "models"
    engine = make_engine(tmp_path, models, kept := {})
    (tmp_path / "temp" / "webcam").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (6, 4), (255, 0, 0)).save(tmp_path / "temp" / "webcam" / "cap.png")
    try:
        prompt = {"1": {"class_type": "WebcamCapture", "inputs": {"image": "webcam/cap.png [temp]", "width": 0,
                                                                  "height": 0, "capture_on_queue": True}},
                  "2": {"class_type": "KeepImage", "inputs": {"value": ["1", 0], "key": "cam"}}}
        engine.run(prompt)
    finally:
        engine.close()
    assert kept["cam"].shape == (1, 4, 6, 3)
    assert torch.equal(kept["cam"][0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))


# -- T2I style model ----------------------------------------------------------------------------------------------
STYLE_WIDTH, STYLE_TOKENS, STYLE_LAYERS = 32, 4, 2  # 8 heads of 4 channels; context = the tiny SD1 CLIP width


def tiny_style_model(seed: int = 0) -> dict[str, torch.Tensor]:
    """T2I style adapter tensors in the real file's key layout (transformer_layes.N.attn.in_proj_weight ...)."""
    g = torch.Generator().manual_seed(seed)
    w = STYLE_WIDTH
    shapes = {"style_embedding": (1, STYLE_TOKENS, w), "proj": (w, fixtures_text.CLIP_L_WIDTH),
              "ln_pre.weight": (w,), "ln_pre.bias": (w,), "ln_post.weight": (w,), "ln_post.bias": (w,)}
    for i in range(STYLE_LAYERS):
        p = f"transformer_layes.{i}."
        shapes.update({p + "attn.in_proj_weight": (3 * w, w), p + "attn.in_proj_bias": (3 * w,),
                       p + "attn.out_proj.weight": (w, w), p + "attn.out_proj.bias": (w,),
                       p + "ln_1.weight": (w,), p + "ln_1.bias": (w,), p + "ln_2.weight": (w,), p + "ln_2.bias": (w,),
                       p + "mlp.c_fc.weight": (4 * w, w), p + "mlp.c_fc.bias": (4 * w,),
                       p + "mlp.c_proj.weight": (w, 4 * w), p + "mlp.c_proj.bias": (w,)})
    return {k: torch.randn(s, generator=g) * (0.3 if len(s) > 1 else 0.1) + (1.0 if k.endswith("ln_1.weight") else 0)
            for k, s in sorted(shapes.items())}


def _style_reference(sd, hidden):
    """The adapter written out with plain tensor ops: pre-LN blocks, 8-head attention, QuickGELU, last tokens."""
    def ln(x, name):
        return torch.nn.functional.layer_norm(x, (STYLE_WIDTH,), sd[name + ".weight"], sd[name + ".bias"])

    b = hidden.shape[0]
    x = ln(torch.cat([hidden, sd["style_embedding"].expand(b, -1, -1)], dim=1), "ln_pre")
    for i in range(STYLE_LAYERS):
        p = f"transformer_layes.{i}."
        h = ln(x, p + "ln_1")
        q, k, v = (h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, -1, 8, 4).transpose(1, 2) for t in (q, k, v))  # [B, heads, L, 4]
        a = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
        a = a.transpose(1, 2).reshape(b, -1, STYLE_WIDTH)
        x = x + a @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        h = ln(x, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
        x = x + (h * torch.sigmoid(1.702 * h)) @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    return ln(x[:, -STYLE_TOKENS:], "ln_post") @ sd["proj"]


class _VisionOut:
    def __init__(self, hidden):
        self.last_hidden_state = hidden


def test_style_model_matches_reference_and_apply_modes():
    from comfy_core.models.style_model import style_model_from_state_dict

    sd = tiny_style_model()
    model = style_model_from_state_dict(sd)
    hidden = torch.randn(2, 5, STYLE_WIDTH, generator=torch.Generator().manual_seed(4))
    tokens = model.get_cond(_VisionOut(hidden))
    assert tokens.shape == (2, STYLE_TOKENS, fixtures_text.CLIP_L_WIDTH)
    assert torch.allclose(tokens, _style_reference(sd, hidden), atol=1e-5)

    txt = torch.randn(1, 77, fixtures_text.CLIP_L_WIDTH)
    cond = [[txt, {"pooled_output": None}]]
    (out,) = extras.StyleModelApply().apply_stylemodel(cond, model, _VisionOut(hidden), 0.5, "multiply")
    flat = tokens.reshape(1, 2 * STYLE_TOKENS, -1)  # both images' tokens in one row
    assert torch.allclose(out[0][0], torch.cat([txt, 0.5 * flat], dim=1), atol=1e-6)
    assert set(out[0][1]) == {"pooled_output"}  # multiply without a mask adds no attention bias
    (out,) = extras.StyleModelApply().apply_stylemodel(cond, model, _VisionOut(hidden), 0.5, "attn_bias")
    assert torch.allclose(out[0][0], torch.cat([txt, flat], dim=1), atol=1e-6)
    mask = out[0][1]["attention_mask"]
    n = 77 + 2 * STYLE_TOKENS
    assert mask.shape == (1, n + 1, n + 1) and mask.dtype == torch.float16 and out[0][1]["attention_mask_img_shape"] == (1, 1)
    expected = torch.zeros(1, n + 1, n + 1, dtype=torch.float16)
    expected[:, :77, 77:n] = expected[:, n:, 77:n] = torch.log(torch.tensor(0.5))  # text & reference rows only
    assert torch.equal(mask, expected)
    (again,) = extras.StyleModelApply().apply_stylemodel(out, model, _VisionOut(hidden[:1]), 0.0, "attn_bias")
    grown = again[0][1]["attention_mask"]  # a second style: its columns masked (-inf), the old bias kept in place
    assert grown.shape == (1, n + STYLE_TOKENS + 1, n + STYLE_TOKENS + 1)
    assert torch.isinf(grown[:, :77, n:n + STYLE_TOKENS]).all() and torch.equal(grown[:, :n, :n], mask[:, :n, :n])


def test_style_model_rejects_other_files():
    from comfy_core.models.style_model import style_model_from_state_dict

    with pytest.raises(ModelLoadError, match="redux"):
        style_model_from_state_dict({"redux_down.weight": torch.zeros(2, 2)})
    sd = tiny_style_model()
    del sd["ln_post.bias"]
    with pytest.raises(ModelLoadError, match="ln_post.bias"):
        style_model_from_state_dict(sd)


def test_style_model_nodes_through_engine(tmp_path):
    from fixtures_guidance import tiny_clip_vision
    from safetensors.torch import save_file

    models = tmp_path / "models"
    fm.write_checkpoint(models / "checkpoints" / CKPT, "sd1")
    (models / "clip_vision").mkdir(parents=True)
    (models / "style_models").mkdir(parents=True)
    save_file(tiny_clip_vision(), str(models / "clip_vision" / "cv.safetensors"))
    save_file(tiny_style_model(), str(models / "style_models" / "style.safetensors"))
    (tmp_path / "input").mkdir()
    Image.open(io.BytesIO(structured_png(32))).save(tmp_path / "input" / "ref.png")
    kept: dict = {}
    engine = make_engine(tmp_path, models, kept)
    try:
        info = engine.object_info()["StyleModelLoader"]["input"]["required"]["style_model_name"]
        assert info == [["style.safetensors"]]
        prompt = base_graph(CKPT, 32, 32)
        prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "ref.png"}}
        prompt["11"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "cv.safetensors"}}
        prompt["12"] = {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["11", 0], "image": ["10", 0],
                                                                     "crop": "center"}}
        prompt["13"] = {"class_type": "StyleModelLoader", "inputs": {"style_model_name": "style.safetensors"}}
        prompt["14"] = {"class_type": "StyleModelApply", "inputs": {
            "conditioning": [POS, 0], "style_model": ["13", 0], "clip_vision_output": ["12", 0], "strength": 1.0,
            "strength_type": "multiply"}}
        prompt["3"] = ksampler([LATENT, 0], seed=2, steps=2, cfg=5.0)
        prompt["3"]["inputs"]["positive"] = ["14", 0]
        prompt["60"] = ksampler([LATENT, 0], seed=2, steps=2, cfg=5.0)
        prompt[KEEP_LATENT] = {"class_type": "KeepLatent", "inputs": {"value": ["3", 0], "key": "style"}}
        prompt["22"] = {"class_type": "KeepLatent", "inputs": {"value": ["60", 0], "key": "plain"}}
        engine.run(prompt)
    finally:
        engine.close()
    assert kept["style"]["samples"].shape == (1, 4, 4, 4) and torch.isfinite(kept["style"]["samples"]).all()
    assert not torch.allclose(kept["style"]["samples"], kept["plain"]["samples"], atol=1e-4)


# -- hypernetworks ------------------------------------------------------------------------------------------------
def _hypernet_layers(width: int, hidden: int, seed: int, norm: bool = False) -> dict[str, torch.Tensor]:
    """One MLP in A1111's key layout: Linear width->hidden, Linear hidden->width; with `norm` each Linear is
    followed by a LayerNorm (Sequential indices 0 Linear, 1 activation, 2 LayerNorm, 3 Linear, 4 act, 5 LayerNorm)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"linear.0": (hidden, width), "linear.3" if norm else "linear.1": (width, hidden)}
    if norm:
        shapes.update({"linear.2": (hidden,), "linear.5": (width,)})
    out = {}
    for name in sorted(shapes, key=lambda n: int(n.split(".")[1])):
        shape = shapes[name]
        scale, base = (0.2, 0.0) if len(shape) == 2 else (0.1, 1.0)
        out[f"{name}.weight"] = base + torch.randn(shape, generator=g) * scale
        out[f"{name}.bias"] = torch.randn(shape[0], generator=g) * 0.1
    return out


def test_hypernetwork_patch_math_by_hand():
    from comfy_core.models.hypernetwork import hypernetwork_from_dict

    k_net, v_net = _hypernet_layers(32, 8, 1), _hypernet_layers(32, 8, 2)
    patch = hypernetwork_from_dict({32: [k_net, v_net], "activation_func": "relu", "name": "x"}, 0.7)
    q, k, v = torch.randn(2, 5, 32), torch.randn(2, 7, 32), torch.randn(2, 7, 32)

    def mlp(sd, x):  # linear -> relu -> linear (no activation after the last layer)
        return torch.relu(x @ sd["linear.0.weight"].T + sd["linear.0.bias"]) @ sd["linear.1.weight"].T \
            + sd["linear.1.bias"]

    q2, k2, v2 = patch(q, k, v, {})
    assert q2 is q and torch.allclose(k2, k + 0.7 * mlp(k_net, k), atol=1e-6)
    assert torch.allclose(v2, v + 0.7 * mlp(v_net, v), atol=1e-6)
    other = torch.randn(2, 7, 64)
    assert patch(q, other, other, {})[1] is other  # no net for width 64: unchanged

    normed = _hypernet_layers(32, 8, 3, norm=True)
    patch = hypernetwork_from_dict({32: [normed, normed], "activation_func": "tanh", "is_layer_norm": True,
                                    "activate_output": True}, 1.0)
    layer_norm = torch.nn.functional.layer_norm
    h = torch.tanh(k @ normed["linear.0.weight"].T + normed["linear.0.bias"])
    h = layer_norm(h, (8,), normed["linear.2.weight"], normed["linear.2.bias"])
    h = torch.tanh(h @ normed["linear.3.weight"].T + normed["linear.3.bias"])  # activate_output: after the last too
    h = layer_norm(h, (32,), normed["linear.5.weight"], normed["linear.5.bias"])
    assert torch.allclose(patch(q, k, v, {})[1], k + h, atol=1e-5)
    broken = dict(normed)
    del broken["linear.5.weight"], broken["linear.5.bias"]
    with pytest.raises(ModelLoadError, match="layer norm missing"):
        hypernetwork_from_dict({32: [broken, normed], "is_layer_norm": True}, 1.0)


def test_hypernetwork_unsupported_activation_is_ignored_like_comfyui(caplog):
    from comfy_core.models.hypernetwork import hypernetwork_from_dict

    assert hypernetwork_from_dict({32: [{}, {}], "activation_func": "gelu"}, 1.0) is None
    assert "unsupported hypernetwork" in caplog.text
    with pytest.raises(ModelLoadError, match="no hypernetwork layers"):
        hypernetwork_from_dict({"activation_func": "relu"}, 1.0)


def test_unet_attn2_patch_changes_the_cross_attention_inputs():
    from comfy_core.models.unet import UNetModel

    torch.manual_seed(0)
    unet = UNetModel(fm.TINY_UNETS["sd1"]).eval()
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([500.0])
    context, alt = torch.randn(1, 77, 32), torch.randn(1, 77, 32)
    seen = []

    def swap(n, ctx, value, extra):
        seen.append((n.shape[-1], extra["block"], torch.equal(ctx, context) and value is ctx))
        return n, alt, alt

    with torch.no_grad():
        patched = unet(x, t, context, transformer_options={"patches": {"attn2_patch": [swap]}})
        expected = unet(x, t, alt)
        plain = unet(x, t, context)
    assert torch.allclose(patched, expected, atol=1e-5) and not torch.allclose(patched, plain, atol=1e-4)
    # every transformer block's cross-attention saw the prompt's context (and value = context), at its own width
    assert len(seen) == 7 and all(ok for _, _, ok in seen)
    assert [w for w, _, _ in seen] == [32, 64, 64, 64, 64, 32, 32]


def _patched_zero_plain(tmp_path, models, size: int, patches: dict[str, tuple[str, dict]]):
    """Latents of the same KSampler run on the MODEL from patch node "50", from "51" (a no-op setting) and unpatched."""
    kept: dict = {}
    engine = make_engine(tmp_path, models, kept)
    try:
        prompt = base_graph(CKPT, size, size)
        for node, (class_type, inputs) in patches.items():
            prompt[node] = {"class_type": class_type, "inputs": {"model": [LOADER, 0], **inputs}}
        for node, model in (("3", ["50", 0]), ("60", ["51", 0]), ("61", [LOADER, 0])):
            prompt[node] = ksampler([LATENT, 0], seed=4, steps=2, cfg=5.0)
            prompt[node]["inputs"]["model"] = model
            prompt["k" + node] = {"class_type": "KeepLatent", "inputs": {"value": [node, 0], "key": node}}
        engine.run(prompt)
    finally:
        engine.close()
    return kept["3"]["samples"], kept["60"]["samples"], kept["61"]["samples"]


def test_hypernetwork_loader_through_engine(tmp_path):
    models = tmp_path / "models"
    fm.write_checkpoint(models / "checkpoints" / CKPT, "sd1")
    (models / "hypernetworks").mkdir(parents=True)
    torch.save({32: [_hypernet_layers(32, 16, 1), _hypernet_layers(32, 16, 2)],
                64: [_hypernet_layers(64, 16, 3), _hypernet_layers(64, 16, 4)],
                "activation_func": "relu", "is_layer_norm": False, "use_dropout": True, "name": "tiny"},
               models / "hypernetworks" / "hn.pt")
    with context.use(node_context(tmp_path)):
        assert extras.HypernetworkLoader.INPUT_TYPES()["required"]["hypernetwork_name"][0] == ["hn.pt"]
    hn, zero, plain = _patched_zero_plain(tmp_path, models, 32, {
        "50": ("HypernetworkLoader", {"hypernetwork_name": "hn.pt", "strength": 1.0}),
        "51": ("HypernetworkLoader", {"hypernetwork_name": "hn.pt", "strength": 0.0})})
    assert torch.equal(zero, plain)  # strength 0: k + 0·mlp(k) = k exactly
    assert torch.isfinite(hn).all() and not torch.allclose(hn, plain, atol=1e-4)


# -- token merging (ToMe) -----------------------------------------------------------------------------------------
def test_tome_merge_and_unmerge_by_hand():
    from comfy_core.models.tome import bipartite_merge

    # one 2x2 cell, destination = top-left (no_rand): t2 is nearly t0, so with r = 1 it is averaged into t0
    tokens = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [-1.0, 0.0]]])
    merge, unmerge = bipartite_merge(tokens, 2, 2, 1, no_rand=True)
    merged = merge(tokens)
    # kept sources by decreasing similarity to their best destination (t1: 0, t3: -1), then the destination
    assert torch.allclose(merged, torch.tensor([[[0.0, 1.0], [-1.0, 0.0], [1.0, 0.05]]]))
    assert torch.allclose(unmerge(merged), torch.tensor([[[1.0, 0.05], [0.0, 1.0], [1.0, 0.05], [-1.0, 0.0]]]))
    identity = bipartite_merge(tokens, 2, 2, 0)[0]
    assert identity(tokens) is tokens


def test_tome_on_cell_constant_tokens_is_exact():
    """Tokens equal within each 2x2 cell: merging r ≤ 12 sources only averages equal rows, so a row-wise function
    applied to the merged tokens and unmerged equals it applied to all tokens (whatever the random destinations)."""
    from comfy_core.models.tome import TomePatch

    torch.manual_seed(3)
    cells = torch.randn(2, 2, 2, 8)  # [B, 2, 2, C] one vector per cell of a 4x4 grid
    grid = cells.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # [B, 4, 4, C]
    q = grid.reshape(2, 16, 8)
    tome = TomePatch(0.5)
    merged, k, v = tome.merge(q, q, q, {"original_shape": [2, 4, 4, 4]})
    assert merged.shape == (2, 8, 8) and k is q and v is q
    weight = torch.randn(8, 5)
    assert torch.allclose(tome.unmerge(merged @ weight, {}), q @ weight, atol=1e-6)
    half = torch.randn(2, 4, 8)  # a half-resolution block (4 tokens of a 4x4 latent): left alone
    assert tome.merge(half, half, half, {"original_shape": [2, 4, 4, 4]})[0] is half


def test_tome_patch_model_through_engine(tmp_path):
    models = tmp_path / "models"
    fm.write_checkpoint(models / "checkpoints" / CKPT, "sd1")
    tome, zero, plain = _patched_zero_plain(tmp_path, models, 64, {
        "50": ("TomePatchModel", {"ratio": 0.5}), "51": ("TomePatchModel", {"ratio": 0.0})})
    assert torch.allclose(zero, plain, atol=1e-6)  # ratio 0 merges nothing
    assert tome.shape == (1, 4, 8, 8) and torch.isfinite(tome).all()
    assert not torch.allclose(tome, plain, atol=1e-4)


# -- GLIGEN -------------------------------------------------------------------------------------------------------
GLIGEN_OBJ = 768  # the fusers' object width (real SD1 files: 768, which also fixes their 8-head layout)


def tiny_gligen(widths=(32, 64, 64, 64, 64, 32, 32), seed: int = 0, alpha: float = 0.5) -> dict[str, torch.Tensor]:
    """A GLIGEN file for the tiny SD1 UNet: one fuser per SpatialTransformer (real key names), a position net
    taking the tiny CLIP-L pooled width."""
    from comfy_core.models.gligen import GatedSelfAttention, PositionNet

    torch.manual_seed(seed)
    blocks = ["input_blocks.1.1", "input_blocks.3.1", "middle_block.1", "output_blocks.0.1", "output_blocks.1.1",
              "output_blocks.2.1", "output_blocks.3.1"]
    sd = {}
    for block, width in zip(blocks, widths):
        fuser = GatedSelfAttention(width, GLIGEN_OBJ, 8, width // 8)
        for name, tensor in fuser.state_dict().items():
            value = torch.full_like(tensor, alpha) if name.startswith("alpha") else tensor
            if name.startswith("norm"):
                value = value + 0.1 * torch.randn_like(value)
            sd[f"{block}.transformer_blocks.0.fuser.{name}"] = value.clone()
    net = PositionNet(fixtures_text.CLIP_L_WIDTH, GLIGEN_OBJ)
    with torch.no_grad():
        net.null_positive_feature.normal_()
        net.null_position_feature.normal_()
    sd.update({f"position_net.{k}": v.clone() for k, v in net.state_dict().items()})
    return sd


def test_gligen_fourier_embedding_and_fuser_formula():
    from comfy_core.models.gligen import GatedSelfAttention, fourier_embed

    boxes = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    emb = fourier_embed(boxes)
    assert emb.shape == (1, 64)
    assert torch.allclose(emb[:, 0:4], torch.sin(boxes)) and torch.allclose(emb[:, 4:8], torch.cos(boxes))
    assert torch.allclose(emb[:, 8:12], torch.sin(100 ** (1 / 8) * boxes))
    assert torch.allclose(emb[:, 60:64], torch.cos(100 ** (7 / 8) * boxes))

    torch.manual_seed(1)
    fuser = GatedSelfAttention(16, 12, 2, 8).eval()
    x, objs = torch.randn(2, 5, 16), torch.randn(2, 3, 12)
    assert torch.equal(fuser(x, objs), x)  # both gates start at tanh(0) = 0: the UNet is unchanged
    with torch.no_grad():
        fuser.alpha_attn.fill_(0.3)
        fuser.alpha_dense.fill_(-0.2)
        joint = fuser.norm1(torch.cat([x, fuser.linear(objs)], dim=1))
        q, k, v = (m(joint).reshape(2, 8, 2, 8).transpose(1, 2) for m in (fuser.attn.to_q, fuser.attn.to_k,
                                                                         fuser.attn.to_v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1) @ v  # [B, 2 heads, 8, 8]
        attn = fuser.attn.to_out(attn.transpose(1, 2).reshape(2, 8, 16))[:, :5]
        h = x + torch.tanh(torch.tensor(0.3)) * attn
        expected = h + torch.tanh(torch.tensor(-0.2)) * fuser.ff(fuser.norm2(h))
        assert torch.allclose(fuser(x, objs), expected, atol=1e-5)


def test_gligen_boxes_become_normalised_object_slots():
    from comfy_core.models.gligen import gligen_from_state_dict

    gligen = gligen_from_state_dict(tiny_gligen())
    assert len(gligen.module_list) == 7 and gligen.key_dim == GLIGEN_OBJ
    seen = {}

    def record(boxes, masks, embeddings):
        seen.update(boxes=boxes, masks=masks, embeddings=embeddings)
        return torch.zeros(boxes.shape[0], boxes.shape[1], GLIGEN_OBJ)

    gligen.position_net.forward = record
    e1, e2 = torch.randn(1, 32), torch.randn(1, 32)
    gligen.position_patch(torch.Size([2, 4, 8, 16]), [(e1, 4, 8, 2, 6), (e2, 8, 16, 0, 0)], torch.device("cpu"))
    assert seen["boxes"].shape == (2, 30, 4) and seen["masks"].shape == (2, 30)
    assert torch.allclose(seen["boxes"][0, 0], torch.tensor([6 / 16, 2 / 8, 14 / 16, 6 / 8]))
    assert torch.allclose(seen["boxes"][1, 1], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert seen["masks"][0].tolist() == [1.0, 1.0] + [0.0] * 28 and not seen["boxes"][:, 2:].any()
    assert torch.equal(seen["embeddings"][1, 0], e1[0]) and not seen["embeddings"][:, 2:].any()


def test_gligen_rejects_other_files():
    from comfy_core.models.gligen import gligen_from_state_dict

    with pytest.raises(ModelLoadError, match="not a GLIGEN model"):
        gligen_from_state_dict({"input_blocks.0.0.weight": torch.zeros(1)})


def test_unet_middle_patch_runs_between_the_attentions_with_transformer_index():
    from comfy_core.models.unet import UNetModel

    torch.manual_seed(0)
    unet = UNetModel(fm.TINY_UNETS["sd1"]).eval()
    x, t, context = torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.randn(1, 77, 32)
    seen = []

    def record(h, extra):
        seen.append((extra["transformer_index"], h.shape[-1], extra["block"]))
        return h

    with torch.no_grad():
        plain = unet(x, t, context)
        same = unet(x, t, context, transformer_options={"patches": {"middle_patch": [record]}})
        shifted = unet(x, t, context, transformer_options={"patches": {"middle_patch": [lambda h, e: h + 1.0]}})
    assert torch.allclose(same, plain, atol=1e-6) and not torch.allclose(shifted, plain, atol=1e-3)
    assert [s[:2] for s in seen] == [(0, 32), (1, 64), (2, 64), (3, 64), (4, 64), (5, 32), (6, 32)]
    assert [s[2][0] for s in seen] == ["input", "input", "middle", "output", "output", "output", "output"]


def test_gligen_nodes_through_engine(tmp_path):
    from safetensors.torch import save_file

    models = tmp_path / "models"
    fm.write_checkpoint(models / "checkpoints" / CKPT, "sd1")
    (models / "gligen").mkdir(parents=True)
    save_file(tiny_gligen(alpha=0.0), str(models / "gligen" / "closed.safetensors"))  # gates closed: a no-op
    save_file(tiny_gligen(alpha=0.5), str(models / "gligen" / "open.safetensors"))
    kept: dict = {}
    engine = make_engine(tmp_path, models, kept)
    try:
        prompt = base_graph(CKPT, 32, 32)
        for loader, name, box, sampler in (("50", "open", "52", "3"), ("51", "closed", "53", "60")):
            prompt[loader] = {"class_type": "GLIGENLoader", "inputs": {"gligen_name": f"{name}.safetensors"}}
            prompt[box] = {"class_type": "GLIGENTextBoxApply", "inputs": {
                "conditioning_to": [POS, 0], "clip": [LOADER, 1], "gligen_textbox_model": [loader, 0],
                "text": "a red ball", "width": 16, "height": 16, "x": 8, "y": 0}}
            prompt[sampler] = ksampler([LATENT, 0], seed=6, steps=2, cfg=5.0)
            prompt[sampler]["inputs"]["positive"] = [box, 0]
            prompt["k" + sampler] = {"class_type": "KeepLatent", "inputs": {"value": [sampler, 0], "key": sampler}}
        prompt["61"] = ksampler([LATENT, 0], seed=6, steps=2, cfg=5.0)
        prompt["k61"] = {"class_type": "KeepLatent", "inputs": {"value": ["61", 0], "key": "plain"}}
        engine.run(prompt)
    finally:
        engine.close()
    opened, closed, plain = kept["3"]["samples"], kept["60"]["samples"], kept["plain"]["samples"]
    # tanh(0) gates: the boxes change nothing (the boxed prompt runs in its own batch: float-order noise only)
    assert torch.allclose(closed, plain, atol=1e-5 * float(plain.abs().max()))
    assert torch.isfinite(opened).all() and not torch.allclose(opened, plain, rtol=1e-3)


def test_gligen_text_box_apply_appends_boxes(tmp_path):
    from comfy_core.models.text_encoders import load_clip_from_state_dict

    clip = load_clip_from_state_dict(fixtures_text.tiny_sd1_text())
    model = object()
    base = [[torch.zeros(1, 77, 32), {"pooled_output": None}]]
    (one,) = extras.GLIGENTextBoxApply().append(base, clip, model, "a cat", 64, 72, 16, 24)
    (two,) = extras.GLIGENTextBoxApply().append(one, clip, model, "a dog", 8, 8, 0, 0)
    kind, gligen, boxes = two[0][1]["gligen"]
    _, pooled = clip.encode_from_tokens(clip.tokenize("a cat"), return_pooled=True)
    assert kind == "position" and gligen is model and [b[1:] for b in boxes] == [(9, 8, 3, 2), (1, 1, 0, 0)]
    assert torch.equal(boxes[0][0], pooled) and "gligen" not in base[0][1] and len(one[0][1]["gligen"][2]) == 1


def test_controlnet_text_reaches_the_controlnet(tmp_path):
    """CLIPTextEncodeControlnet's tokens become the model cond `crossattn_controlnet` the ControlNet reads
    (models/controlnet.py) while the UNet keeps the prompt's own context."""
    from comfy_core.models.checkpoint import load_checkpoint_file

    model = load_checkpoint_file(fm.write_checkpoint(tmp_path / "m.safetensors", "sd1", text=False, vae=False),
                                 want_clip=False, want_vae=False)[0]
    seen = {}

    class RecordingControl:
        def get_control(self, x, sigma, conds, cond_or_uncond):
            seen.update(conds)
            return {}

    prompt, controlnet_text = torch.randn(1, 77, 32), torch.randn(1, 154, 32)
    cond = [[prompt, {"control": RecordingControl(), "cross_attn_controlnet": controlnet_text}]]
    x = torch.randn(1, 4, 8, 8)
    calc_cond_batch(model, [prepare_conds(model, cond, x, prompt_type="positive")], x, torch.tensor([2.0]), {})
    assert torch.equal(seen["crossattn_controlnet"], controlnet_text) and torch.equal(seen["context"], prompt)
