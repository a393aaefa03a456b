"""Text encoders: tiny CLIP-L / OpenCLIP-H / bigG models through the real loaders, plus SD1.5 parity with ComfyUI."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures_text import (
    tiny_clip_l,
    tiny_openclip,
    tiny_refiner_text,
    tiny_sd1_text,
    tiny_sd2_text,
    tiny_sdxl_text,
)
from safetensors.torch import save_file

from comfy_core.errors import ModelLoadError
from comfy_core.models.clip_text import heads_for_width
from comfy_core.models.text_encoders import (
    CLIP,
    load_clip_files,
    load_clip_from_state_dict,
)
from comfy_core.tokenizer import END_TOKEN, START_TOKEN

DATA = Path(__file__).parent / "data"


# --- an independent, loop-style reference of the CLIP text transformer (explicit mask + softmax) -------------------


def _ln(x, w, b):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w + b


def _reference(sd: dict, ids: list[int], act: str, heads: int) -> list[torch.Tensor]:
    """Hidden state after every layer (HF layout keys, float32 math). Returns [after layer 0, ..., final LN(last)]."""
    f = {k: v.float() for k, v in sd.items()}
    x = f["text_model.embeddings.token_embedding.weight"][ids] + f["text_model.embeddings.position_embedding.weight"][: len(ids)]
    T, C = x.shape
    mask = torch.full((T, T), float("-inf")).triu(1)
    outs = []
    for i in range(sum(1 for k in f if k.endswith("mlp.fc1.weight"))):
        p = f"text_model.encoder.layers.{i}."
        h = _ln(x, f[p + "layer_norm1.weight"], f[p + "layer_norm1.bias"])
        q, k, v = (h @ f[p + f"self_attn.{n}_proj.weight"].T + f[p + f"self_attn.{n}_proj.bias"] for n in "qkv")
        d = C // heads
        heads_out = []
        for j in range(heads):
            s = slice(j * d, (j + 1) * d)
            a = torch.softmax(q[:, s] @ k[:, s].T / d**0.5 + mask, dim=-1)
            heads_out.append(a @ v[:, s])
        x = x + torch.cat(heads_out, -1) @ f[p + "self_attn.out_proj.weight"].T + f[p + "self_attn.out_proj.bias"]
        h = _ln(x, f[p + "layer_norm2.weight"], f[p + "layer_norm2.bias"]) @ f[p + "mlp.fc1.weight"].T + f[p + "mlp.fc1.bias"]
        h = h * torch.sigmoid(1.702 * h) if act == "quick_gelu" else torch.nn.functional.gelu(h)
        x = x + h @ f[p + "mlp.fc2.weight"].T + f[p + "mlp.fc2.bias"]
        outs.append(x)
    outs.append(_ln(x, f["text_model.final_layer_norm.weight"], f["text_model.final_layer_norm.bias"]))
    return outs


def _openclip_to_hf(sd: dict) -> dict:
    """The same weights in HF names (q/k/v split out of in_proj), written independently of the loader."""
    out = {"text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
           "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
           "text_model.final_layer_norm.weight": sd["ln_final.weight"],
           "text_model.final_layer_norm.bias": sd["ln_final.bias"]}
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    i = 0
    while f"transformer.resblocks.{i}.ln_1.weight" in sd:
        src, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for a, b in names.items():
            for s in (".weight", ".bias"):
                out[dst + b + s] = sd[src + a + s]
        for s in ("weight", "bias"):
            for n, part in zip("qkv", sd[src + f"attn.in_proj_{s}"].chunk(3)):
                out[dst + f"self_attn.{n}_proj.{s}"] = part
        i += 1
    return out


def _ids(prompt_ids: list[int], pad: int) -> list[int]:
    row = [START_TOKEN, *prompt_ids, END_TOKEN]
    return row + [pad] * (77 - len(row))


CAT = [320, 2368]  # "a cat"


# --- SD1 -------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd1_sd():
    return tiny_sd1_text()


@pytest.fixture(scope="module")
def sd1(sd1_sd) -> CLIP:
    return load_clip_from_state_dict(sd1_sd)


def test_sd1_matches_reference_transformer(sd1, sd1_sd):
    sd = {k[len("cond_stage_model.transformer."):]: v for k, v in sd1_sd.items()}
    ref = _reference(sd, _ids(CAT, END_TOKEN), "quick_gelu", heads_for_width(32))
    cond, pooled = sd1.encode_from_tokens(sd1.tokenize("a cat"), return_pooled=True)
    assert sd1.family == "sd1" and cond.shape == (1, 77, 32) and pooled.shape == (1, 32)
    assert cond.dtype == pooled.dtype == torch.float32
    assert sd1.modules()["l"].token_weight().dtype == torch.float16  # fp16 storage, float32 compute
    torch.testing.assert_close(cond[0], ref[-1], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(pooled[0], ref[-1][3], atol=2e-5, rtol=1e-5)  # EOS position (BOS a cat EOS)


def test_sd1_clip_skip(sd1, sd1_sd):
    sd = {k[len("cond_stage_model.transformer."):]: v for k, v in sd1_sd.items()}
    ref = _reference(sd, _ids(CAT, END_TOKEN), "quick_gelu", heads_for_width(32))
    tokens = sd1.tokenize("a cat")
    skipped = sd1.clone()
    skipped.clip_layer(-2)
    assert sd1.layer_idx is None  # clones do not share the setting
    final_ln = sd1.modules()["l"].final_norm()
    with torch.no_grad():
        torch.testing.assert_close(skipped.encode_from_tokens(tokens)[0], final_ln(ref[1]), atol=2e-5, rtol=1e-5)
    last = sd1.clone()
    last.clip_layer(-1)  # layer -1 with the final LN == the default output
    torch.testing.assert_close(last.encode_from_tokens(tokens), sd1.encode_from_tokens(tokens))
    beyond = sd1.clone()
    beyond.clip_layer(-24)  # more than the model has: the last layer, as in ComfyUI
    torch.testing.assert_close(beyond.encode_from_tokens(tokens), sd1.encode_from_tokens(tokens))


def test_prompt_weights_interpolate_against_empty(sd1):
    plain = sd1.encode_from_tokens(sd1.tokenize("a cat"))
    weighted = sd1.encode_from_tokens(sd1.tokenize("a (cat:1.5)"))
    empty = sd1.encode_from_tokens(sd1.tokenize(""))
    torch.testing.assert_close(weighted[0, 2], empty[0, 2] + 1.5 * (plain[0, 2] - empty[0, 2]))
    mask = torch.ones(77, dtype=torch.bool)
    mask[2] = False
    torch.testing.assert_close(weighted[0, mask], plain[0, mask])


def test_long_prompt_is_chunked(sd1):
    tokens = sd1.tokenize("cat " * 80)
    assert len(tokens["l"]) == 2
    cond, pooled = sd1.encode_from_tokens(tokens, return_pooled=True)
    assert cond.shape == (1, 154, 32)
    first = sd1.modules()["l"]
    torch.testing.assert_close(pooled, sd1.encoders["l"].encode_batch([[t for t, _ in tokens["l"][0]]], None)[1])
    assert first is sd1.clone().modules()["l"]  # clones share the module


def test_embedding_file_is_spliced(sd1, tmp_path):
    token_row = sd1.modules()["l"].token_weight()[2368].float()  # "cat</w>"
    save_file({"clip_l": token_row[None].clone(), "clip_g": torch.zeros(1, 48)}, str(tmp_path / "kitty.safetensors"))
    torch.save({"string_to_param": {"*": token_row[None].repeat(2, 1)}, "name": "two"}, tmp_path / "two.pt")
    clip = sd1.clone()
    clip.embedding_dirs = [str(tmp_path)]
    tokens = clip.tokenize("a embedding:kitty")
    assert isinstance(tokens["l"][0][2][0], torch.Tensor)
    torch.testing.assert_close(clip.encode_from_tokens(tokens), sd1.encode_from_tokens(sd1.tokenize("a cat")))
    two = clip.tokenize("a embedding:two, b")["l"][0]
    assert [isinstance(t, torch.Tensor) for t, _ in two[:6]] == [False, False, True, True, False, False]
    assert two[4][0] == 267  # the comma survives as text


def test_mismatched_embedding_is_dropped(sd1, caplog):
    tokens = sd1.tokenize("a cat")
    tokens["l"][0].insert(1, (torch.zeros(1280), 1.0))  # a bigG-width vector in a CLIP-L prompt
    tokens["l"][0].pop()
    out = sd1.encode_from_tokens(tokens)
    assert "shape mismatch" in caplog.text
    torch.testing.assert_close(out, sd1.encode_from_tokens(sd1.tokenize("a cat")))


# --- SD2 / SDXL / refiner ----------------------------------------------------------------------------------------


def test_sd2_penultimate_with_final_ln_and_projection():
    sd = tiny_sd2_text()
    clip = load_clip_from_state_dict(sd)
    assert clip.family == "sd2" and list(clip.encoders) == ["h"]
    chunks = clip.tokenize("a cat")["h"]
    assert [t for t, _ in chunks[0][:5]] == [START_TOKEN, *CAT, END_TOKEN, 0]  # OpenCLIP pads with 0
    cond, pooled = clip.encode_from_tokens({"h": chunks}, return_pooled=True)
    raw = {k[len("cond_stage_model.model."):]: v for k, v in sd.items()}
    ref = _reference(_openclip_to_hf(raw), _ids(CAT, 0), "gelu", heads_for_width(64))
    final_ln = clip.modules()["h"].final_norm()
    with torch.no_grad():
        torch.testing.assert_close(cond[0], final_ln(ref[-3]), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(pooled[0], ref[-1][3] @ raw["text_projection"].float(), atol=2e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def sdxl_sd():
    return tiny_sdxl_text()


def test_sdxl_concatenates_penultimate_states_and_pools_from_g(sdxl_sd):
    clip = load_clip_from_state_dict(sdxl_sd)
    assert clip.family == "sdxl" and list(clip.encoders) == ["l", "g"]
    tokens = clip.tokenize("a cat")
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    assert cond.shape == (1, 77, 80) and pooled.shape == (1, 48)
    l_sd = {k[len("conditioner.embedders.0.transformer."):]: v for k, v in sdxl_sd.items() if ".0.transformer." in k}
    g_raw = {k[len("conditioner.embedders.1.model."):]: v for k, v in sdxl_sd.items() if ".1.model." in k}
    ref_l = _reference(l_sd, _ids(CAT, END_TOKEN), "quick_gelu", heads_for_width(32))
    ref_g = _reference(_openclip_to_hf(g_raw), _ids(CAT, 0), "gelu", heads_for_width(48))
    torch.testing.assert_close(cond[0, :, :32], ref_l[-3], atol=2e-5, rtol=1e-5)  # penultimate, no final LN
    torch.testing.assert_close(cond[0, :, 32:], ref_g[-3], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(pooled[0], ref_g[-1][3] @ g_raw["text_projection"].float(), atol=2e-5, rtol=1e-5)
    last = clip.clone()
    last.clip_layer(-1)  # SDXL keeps the final LN off even for the last layer
    torch.testing.assert_close(last.encode_from_tokens(tokens)[0, :, 32:], ref_g[-2], atol=2e-5, rtol=1e-5)


def test_refiner_is_bigg_only():
    clip = load_clip_from_state_dict(tiny_refiner_text())
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a cat"), return_pooled=True)
    assert clip.family == "sdxl_refiner" and cond.shape == (1, 77, 48) and pooled.shape == (1, 48)


def test_standalone_files():
    l_file, g_file = tiny_clip_l(projection=32), tiny_openclip()
    sd1 = load_clip_files([l_file], "stable_diffusion")
    assert sd1.family == "sd1" and sd1.encoders["l"].prefix == ""
    xl = load_clip_files([g_file, l_file], "sdxl")  # any order
    assert xl.family == "sdxl" and list(xl.encoders) == ["l", "g"]
    whole = load_clip_from_state_dict(tiny_sdxl_text())
    torch.testing.assert_close(xl.encode(""), whole.encode(""))  # same fixture weights, same result
    wrapped = load_clip_files([{"transformer." + k: v for k, v in l_file.items()}], "stable_diffusion")
    torch.testing.assert_close(wrapped.encode("cat"), sd1.encode("cat"))
    with pytest.raises(ModelLoadError, match="not supported"):
        load_clip_files([l_file], "flux")


def test_position_ids_and_fp32_weights_are_accepted():
    fp16 = load_clip_from_state_dict(tiny_sd1_text(), dtype=torch.float32)  # engine dtype: weights stay fp16
    assert fp16.modules()["l"].token_weight().dtype == torch.float16
    clip = load_clip_from_state_dict(tiny_sd1_text(position_ids=True), weight_dtype=torch.float32)
    assert clip.modules()["l"].token_weight().dtype == torch.float32
    torch.testing.assert_close(clip.encode("a cat"), fp16.encode("a cat"))  # fp16-exact weights: same numbers


# --- damaged files ------------------------------------------------------------------------------------------------


def test_no_text_encoder_returns_none():
    assert load_clip_from_state_dict({"model.diffusion_model.out.0.weight": torch.zeros(4)}) is None


def test_missing_tensor_is_named(sd1_sd):
    broken = dict(sd1_sd)
    del broken["cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc2.weight"]
    with pytest.raises(ModelLoadError, match="layers.1.mlp.fc2.weight"):
        load_clip_from_state_dict(broken)


def test_wrong_shape_and_gaps_are_reported(sd1_sd):
    broken = dict(sd1_sd)
    broken["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(7)
    with pytest.raises(ModelLoadError, match="final_layer_norm.weight"):
        load_clip_from_state_dict(broken)
    gap = {k: v for k, v in sd1_sd.items() if ".layers.1." not in k}
    with pytest.raises(ModelLoadError, match="numbered"):
        load_clip_from_state_dict(gap)
    with pytest.raises(ModelLoadError, match="not a CLIP text encoder"):
        load_clip_files([{"foo.weight": torch.zeros(3)}], "stable_diffusion")


# --- parity with ComfyUI on the full-size random SD1.5 checkpoint ------------------------------------------------------


@pytest.mark.slow
def test_sd15_parity_with_comfyui():
    from fixtures_sd15 import random_sd15_checkpoint
    from safetensors import safe_open

    with safe_open(str(random_sd15_checkpoint()), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys() if k.startswith("cond_stage_model.")}  # noqa: SIM118 (safe_open has no __iter__)
    with safe_open(str(DATA / "e2e_txt2img_euler_normal.safetensors"), "pt") as f:
        ref = {k: f.get_tensor(k) for k in ("cond_positive", "cond_negative", "pooled_positive", "pooled_negative")}
    clip = load_clip_from_state_dict(sd)
    for name, text in (("positive", "a photo of a cat"), ("negative", "blurry")):
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        torch.testing.assert_close(cond, ref[f"cond_{name}"], atol=1e-4, rtol=0)
        # SD1's pooled output in ComfyUI: the final-LN'd hidden state at the first EOS, unprojected
        torch.testing.assert_close(pooled, ref[f"pooled_{name}"], atol=1e-4, rtol=0)


def test_hf_parameter_map_addresses_openclip_rows():
    from comfy_core.models.clip_text import hf_parameter_map

    raw = tiny_openclip()
    clip = load_clip_files([raw], "stable_diffusion")
    model = clip.modules()["g"]
    params = dict(model.named_parameters())
    hf = _openclip_to_hf(raw)
    mapping = hf_parameter_map(model)
    assert set(hf) <= set(mapping)
    for name, tensor in hf.items():
        param, rows = mapping[name]
        value = params[param] if rows is None else params[param][rows]
        assert torch.equal(value, tensor), name
    l_model = load_clip_files([tiny_clip_l()], "stable_diffusion").modules()["l"]
    assert hf_parameter_map(l_model)["text_model.encoder.layers.2.mlp.fc1.weight"] == (
        "text_model.encoder.layers.2.mlp.fc1.weight", None)
