"""Detection from keys + shapes: full-size real layouts (SD1.5, SD1.5 inpaint, SD2.1 768-v, SDXL base/refiner) give
ComfyUI's detected configs and our modules have exactly their keys; tiny checkpoints of every family are detected;
damaged files fail with ModelLoadError naming the file."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import fixtures_models as fm
import pytest
import torch

from comfy_core.errors import ModelLoadError
from comfy_core.models.checkpoint import load_checkpoint_file
from comfy_core.models.detect import detect_model, detect_vae_config
from comfy_core.models.state_dict import TensorDict, open_state_dict
from comfy_core.models.unet import UNetModel
from comfy_core.models.vae import AutoencoderKL

LAYOUTS = json.loads(gzip.open(Path(__file__).parent / "data" / "model_layouts.json.gz").read())
FULL = {"sd15": ("sd1", "SD15"), "sd15_inpaint": ("sd1", "SD15"), "sd21_768v": ("sd2", "SD20"),
        "sdxl_base": ("sdxl", "SDXL"), "sdxl_refiner": ("sdxl_refiner", "SDXLRefiner")}


def meta_state_dict(name: str) -> TensorDict:
    return TensorDict({k: torch.empty(s, device="meta") for k, s in LAYOUTS[name]["tensors"].items()})


def module_shapes(module_factory, prefix: str) -> dict[str, list[int]]:
    with torch.device("meta"):
        m = module_factory()
    return {prefix + k: list(v.shape) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("name", sorted(FULL))
def test_full_size_layouts(name):
    sd = meta_state_dict(name)
    if name == "sd21_768v":  # the v heuristic reads one tensor's values; give it an eps-looking bias
        key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
        sd = TensorDict({**{k: sd[k] for k in sd}, key: torch.zeros(sd[key].shape)})
    spec = detect_model(sd, source=name)
    family, comfy = FULL[name]
    assert (spec.family, spec.comfy_name, spec.prediction) == (family, comfy, "eps")
    cfg = spec.unet
    if "detected_unet_config" in LAYOUTS[name]:
        ref = LAYOUTS[name]["detected_unet_config"]
        ours = {"in_channels": cfg.in_channels, "out_channels": cfg.out_channels, "model_channels": cfg.model_channels,
                "num_res_blocks": list(cfg.num_res_blocks), "channel_mult": list(cfg.channel_mult),
                "transformer_depth": list(cfg.transformer_depth),
                # ComfyUI pops output depths from the end; ours are in output-block order
                "transformer_depth_output": list(cfg.transformer_depth_output)[::-1],
                "transformer_depth_middle": cfg.transformer_depth_middle, "context_dim": cfg.context_dim,
                "use_linear_in_transformer": cfg.use_linear_in_transformer, "adm_in_channels": cfg.adm_in_channels}
        assert ours == {k: ref[k] for k in ours}
    unet_keys = {k: v for k, v in LAYOUTS[name]["tensors"].items() if k.startswith(fm.UNET_PREFIX)}
    assert module_shapes(lambda: UNetModel(cfg), fm.UNET_PREFIX) == unet_keys
    vae_keys = {k: v for k, v in LAYOUTS[name]["tensors"].items() if k.startswith(fm.VAE_PREFIX)}
    if vae_keys:
        vcfg = detect_vae_config(sd, fm.VAE_PREFIX, name)
        assert (vcfg.ch, vcfg.ch_mult, vcfg.num_res_blocks, vcfg.z_channels) == (128, (1, 2, 4, 4), 2, 4)
        assert module_shapes(lambda: AutoencoderKL(vcfg), fm.VAE_PREFIX) == vae_keys


def test_full_size_heads():
    sd1 = detect_model(meta_state_dict("sd15")).unet
    sdxl = detect_model(meta_state_dict("sdxl_base")).unet
    assert [sd1.heads_for(c) for c in (320, 640, 1280)] == [(8, 40), (8, 80), (8, 160)]
    assert [sdxl.heads_for(c) for c in (640, 1280)] == [(10, 64), (20, 64)]


@pytest.mark.parametrize("std, expected", [(0.2, "v"), (0.05, "eps")])
def test_sd2_v_prediction_heuristic_full_size(std, expected):
    sd = meta_state_dict("sd21_768v")
    key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    bias = torch.randn(sd[key].shape, generator=torch.Generator().manual_seed(0))
    tensors = {k: sd[k] for k in sd}
    tensors[key] = bias / bias.std(unbiased=False) * std
    assert detect_model(TensorDict(tensors)).prediction == expected


@pytest.mark.parametrize("family, comfy", [("sd1", "SD15"), ("sd2", "SD20"), ("sdxl", "SDXL"),
                                           ("sdxl_refiner", "SDXLRefiner"), ("sd1_inpaint", "SD15"),
                                           ("sd2_unclip", "SD21UnclipL")])
def test_tiny_families(family, comfy):
    sd = TensorDict(fm.checkpoint_state_dict(family, text=False))
    spec = detect_model(sd)
    assert spec.comfy_name == comfy
    assert spec.unet == fm.TINY_UNETS[family]
    assert spec.inpaint == (family == "sd1_inpaint")
    assert spec.prediction == "eps"
    assert detect_vae_config(sd, fm.VAE_PREFIX) == fm.TINY_VAE


def test_tiny_v_prediction_marker_and_heuristic():
    assert detect_model(TensorDict(fm.checkpoint_state_dict("sd2", text=False, v_pred_std=0.2))).prediction == "v"
    assert detect_model(TensorDict(fm.checkpoint_state_dict("sd2", text=False, v_pred_std=0.05))).prediction == "eps"
    marked = detect_model(TensorDict(fm.checkpoint_state_dict("sdxl", text=False, v_pred_key=True)))
    assert marked.prediction == "v"
    # the heuristic is for 4-channel SD2 only: an SD1 model with a wide bias stays eps
    assert detect_model(TensorDict(fm.checkpoint_state_dict("sd1", text=False, v_pred_std=0.3))).prediction == "eps"


def test_standalone_unet_without_prefix():
    spec = detect_model(TensorDict(fm.unet_state_dict("sdxl")))
    assert spec.family == "sdxl" and spec.pooled_dim == fm.POOLED_G


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_checkpoint_file(tmp_path / "nope.safetensors")


def test_truncated_file_names_file_and_tensor(tmp_path):
    path = fm.write_checkpoint(tmp_path / "ckpt.safetensors", "sd1", text=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ModelLoadError, match=r"ckpt\.safetensors.*truncated"):
        open_state_dict(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ModelLoadError, match="junk.safetensors"):
        open_state_dict(path)


def test_wrong_keys(tmp_path):
    path = fm.write(tmp_path / "other.safetensors", {"foo.weight": torch.zeros(3, 3)})
    with pytest.raises(ModelLoadError, match=r"other\.safetensors.*no diffusion model"):
        load_checkpoint_file(path)


def test_missing_unet_tensor(tmp_path):
    sd = fm.checkpoint_state_dict("sd1", text=False)
    del sd["model.diffusion_model.output_blocks.2.0.skip_connection.weight"]
    path = fm.write(tmp_path / "broken.safetensors", sd)
    with pytest.raises(ModelLoadError, match=r"broken\.safetensors.*UNet is missing 1 tensors.*skip_connection"):
        load_checkpoint_file(path)


def test_wrong_shape(tmp_path):
    sd = fm.checkpoint_state_dict("sd1", text=False)
    sd["model.diffusion_model.middle_block.0.in_layers.2.weight"] = torch.zeros(64, 64, 1, 3)
    path = fm.write(tmp_path / "shapes.safetensors", sd)
    with pytest.raises(ModelLoadError, match=r"shapes\.safetensors.*middle_block\.0\.in_layers\.2\.weight.*shape"):
        load_checkpoint_file(path)


def test_ckpt_pickle_files_load_with_the_safe_unpickler(tmp_path):
    sd = fm.checkpoint_state_dict("sd1", text=False, dtype=torch.float32)
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": sd, "global_step": 1}, path)
    model, clip, vae = load_checkpoint_file(path)
    assert model.spec.comfy_name == "SD15" and vae is not None and clip is None
    assert torch.equal(model.unet.out[2].weight, sd["model.diffusion_model.out.2.weight"])


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": Evil()}}, path)
    with pytest.raises(ModelLoadError, match="evil.ckpt"):
        load_checkpoint_file(path)
