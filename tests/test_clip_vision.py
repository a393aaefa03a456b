"""CLIP vision towers: key layouts, config detection, preprocessing numbers and parity with HF transformers."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfy_core.errors import ModelLoadError
from comfy_core.models.clip_vision import (
    CLIP_MEAN, CLIP_STD, clip_preprocess, clip_vision_from_state_dict, detect_config, load_clip_vision, to_hf_layout,
)
from fixtures_guidance import clip_vision_shapes, hf_to_openclip, tiny_clip_vision

REFS = Path(__file__).parent / "data" / "guidance_refs.safetensors"


@pytest.fixture(scope="module")
def refs() -> dict[str, torch.Tensor]:
    return load_file(str(REFS))


def test_constant_image_normalises_to_known_values():
    # 0.5 -> 127.5 -> rounds (half to even) to 128 -> (128/255 - mean) / std per channel
    px = clip_preprocess(torch.full((1, 224, 224, 3), 0.5))
    expected = [(128 / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)]
    assert px.shape == (1, 3, 224, 224)
    for c in range(3):
        assert torch.allclose(px[0, c], torch.full((224, 224), expected[c]), atol=1e-6)
    assert abs(expected[0] - 0.0755) < 1e-3  # hand check: (0.50196 - 0.48145) / 0.26863


def test_preprocess_resizes_short_side_and_crops_centre():
    img = torch.zeros(1, 100, 300, 3)
    img[:, :, 150:, :] = 1.0  # right half white
    centre = clip_preprocess(img, size=28, crop=True)
    squash = clip_preprocess(img, size=28, crop=False)
    assert centre.shape == squash.shape == (1, 3, 28, 28)
    # centre crop of an 84-wide resize keeps columns 28..56: the edge sits at column 14 of the crop
    assert centre[0, 0, :, :13].max() < 0 and centre[0, 0, :, 15:].min() > 0
    # plain resize squashes the whole width: the edge is still in the middle
    assert squash[0, 0, :, :13].max() < 0 and squash[0, 0, :, 15:].min() > 0
    # RGBA input: the alpha channel is dropped
    rgba = torch.cat([torch.full((1, 28, 28, 3), 0.5), torch.zeros(1, 28, 28, 1)], dim=-1)
    assert torch.equal(clip_preprocess(rgba, 28), clip_preprocess(rgba[..., :3], 28))


def test_detect_config_reads_shapes_and_names_variants():
    cfg = detect_config(tiny_clip_vision())
    assert (cfg.width, cfg.layers, cfg.mlp, cfg.patch, cfg.image_size, cfg.projection) == (32, 3, 64, 7, 28, 24)
    assert cfg.variant == "custom" and cfg.act == "gelu" and cfg.heads == 16
    meta = {k: torch.empty(s, device="meta") for k, s in clip_vision_shapes(layers=24).items()}
    assert detect_config(meta).variant == "vitl" and detect_config(meta).act == "quick_gelu"
    meta = {k: torch.empty(s, device="meta") for k, s in clip_vision_shapes(layers=32).items()}
    assert detect_config(meta).variant == "h" and detect_config(meta).act == "gelu"
    meta = {k: torch.empty(s, device="meta") for k, s in clip_vision_shapes(layers=48).items()}
    assert detect_config(meta).variant == "g"
    # ViT-L at 336 px: 24 x 24 patches of 14 + 1 = 577 positions
    shapes = clip_vision_shapes(layers=24, patch=14, image_size=336)
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    assert detect_config(meta).variant == "vitl_336" and detect_config(meta).image_size == 336


@pytest.mark.parametrize("name,layers", [("tiny3", 3), ("tiny24", 24)])
def test_outputs_match_hf_transformers(refs, name, layers):
    model = clip_vision_from_state_dict(tiny_clip_vision(layers=layers))
    out = model.encode_image(refs["clip/image"])
    for field in ("image_embeds", "last_hidden_state", "penultimate_hidden_states"):
        ref = refs[f"clip/{name}/{field}"]
        assert out[field].shape == ref.shape
        assert torch.allclose(out[field], ref, atol=1e-5), field
    assert out.image_embeds.shape == (2, 24) and out.last_hidden_state.shape == (2, 17, 32)


def test_openclip_layout_loads_to_the_same_model(refs):
    sd = tiny_clip_vision()
    converted = to_hf_layout(hf_to_openclip(sd))
    assert set(converted) == set(sd)
    for k in sd:
        assert torch.equal(converted[k], sd[k]), k
    # inside an SD2.1 unCLIP checkpoint the tower sits under embedder.model.visual.
    nested = {"embedder.model." + k: v for k, v in hf_to_openclip(sd).items()}
    nested["model.diffusion_model.out.0.weight"] = torch.ones(4)
    model = clip_vision_from_state_dict(nested, prefix="embedder.model.")
    out = model.encode_image(refs["clip/image"])
    assert torch.allclose(out.image_embeds, refs["clip/tiny3/image_embeds"], atol=1e-5)


def test_load_file_fp16_with_extra_keys(tmp_path, refs):
    sd = {k: v.half() for k, v in tiny_clip_vision().items()}
    sd["vision_model.embeddings.position_ids"] = torch.arange(17)[None]  # older transformers files carry it
    sd["text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 8).half()  # full CLIPModel files
    save_file(sd, str(tmp_path / "cv.safetensors"))
    model = load_clip_vision(str(tmp_path / "cv.safetensors"))
    assert model.model.visual_projection.weight.dtype == torch.float32
    out = model.encode_image(refs["clip/image"])
    assert torch.allclose(out.image_embeds, refs["clip/tiny3/image_embeds"], atol=2e-2)


def test_incomplete_or_foreign_file_is_a_clear_error(tmp_path):
    sd = tiny_clip_vision()
    del sd["vision_model.encoder.layers.1.mlp.fc2.weight"]
    with pytest.raises(ModelLoadError, match="missing"):
        clip_vision_from_state_dict(sd)
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ModelLoadError, match="x.safetensors.*not a CLIP vision model"):
        load_clip_vision(str(tmp_path / "x.safetensors"))


@pytest.mark.cuda
def test_encode_on_cuda_fp16(refs):
    model = clip_vision_from_state_dict(tiny_clip_vision(), device="cuda", dtype=torch.float16)
    out = model.encode_image(refs["clip/image"])
    assert out.image_embeds.device.type == "cpu" and out.image_embeds.dtype == torch.float32
    assert torch.allclose(out.image_embeds, refs["clip/tiny3/image_embeds"], atol=3e-2)
