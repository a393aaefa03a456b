"""TAESD: the released files' key layout, decoder/encoder against a straightforward functional reference, the "taesd"
VAEs of VAELoader (listing, scale handling, VAEDecode/VAEEncode), TAESD previews during KSampler runs, bad files."""
from __future__ import annotations

import io

import fixtures_models as fm
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_ksampler import DECODE, SAMPLER, make_engine, txt2img
from PIL import Image
from safetensors.torch import save_file

from comfy_core.errors import ModelLoadError, PromptError
from comfy_core.models import taesd
from comfy_core.sampling.ksampler import taesd_preview_jpeg

CKPT = "tiny.safetensors"
W = 8  # tiny width for test files (the released files use 64)
DECODER_BLOCKS, DECODER_PLAIN = (3, 4, 5, 8, 9, 10, 13, 14, 15, 18), (7, 12, 17)
ENCODER_BLOCKS, ENCODER_PLAIN = (1, 3, 4, 5, 7, 8, 9, 11, 12, 13), (2, 6, 10)


def released_layout(kind: str, width: int = 64, channels: int = 4) -> dict[str, tuple[int, ...]]:
    """Key -> shape of taesd_{kind}.pth, written out from the architecture by hand (Sequential indices)."""
    blocks, plain = (DECODER_BLOCKS, DECODER_PLAIN) if kind == "decoder" else (ENCODER_BLOCKS, ENCODER_PLAIN)
    stem, head = (1, 19) if kind == "decoder" else (0, 14)
    stem_in, head_out = (channels, 3) if kind == "decoder" else (3, channels)
    keys = {f"{stem}.weight": (width, stem_in, 3, 3), f"{stem}.bias": (width,),
            f"{head}.weight": (head_out, width, 3, 3), f"{head}.bias": (head_out,)}
    for i in blocks:
        for j in (0, 2, 4):
            keys[f"{i}.conv.{j}.weight"], keys[f"{i}.conv.{j}.bias"] = (width, width, 3, 3), (width,)
    for i in plain:
        keys[f"{i}.weight"] = (width, width, 3, 3)  # the up/downsampling convs have no bias
    return keys


def random_weights(kind: str, seed: int, width: int = W, channels: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * (0.6 / (shape[1] * 9) ** 0.5 if len(shape) == 4 else 0.05)
            for k, shape in released_layout(kind, width, channels).items()}


def write(path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(tensors, str(path))
    else:
        torch.save(tensors, path)


# -- independent reference: the architecture as plain functional code over the weight dict --------------------------


def ref_block(sd, i, x):
    h = F.relu(F.conv2d(x, sd[f"{i}.conv.0.weight"], sd[f"{i}.conv.0.bias"], padding=1))
    h = F.relu(F.conv2d(h, sd[f"{i}.conv.2.weight"], sd[f"{i}.conv.2.bias"], padding=1))
    h = F.conv2d(h, sd[f"{i}.conv.4.weight"], sd[f"{i}.conv.4.bias"], padding=1)
    return F.relu(h + x)


def ref_decoder(sd, z):
    x = F.relu(F.conv2d(torch.tanh(z / 3) * 3, sd["1.weight"], sd["1.bias"], padding=1))
    for stage in range(3):
        for i in DECODER_BLOCKS[3 * stage:3 * stage + 3]:
            x = ref_block(sd, i, x)
        x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest ×2
        x = F.conv2d(x, sd[f"{DECODER_PLAIN[stage]}.weight"], padding=1)
    return F.conv2d(ref_block(sd, 18, x), sd["19.weight"], sd["19.bias"], padding=1)


def ref_encoder(sd, x):
    x = ref_block(sd, 1, F.conv2d(x, sd["0.weight"], sd["0.bias"], padding=1))
    for stage in range(3):
        x = F.conv2d(x, sd[f"{ENCODER_PLAIN[stage]}.weight"], stride=2, padding=1)
        for i in ENCODER_BLOCKS[1 + 3 * stage:4 + 3 * stage]:
            x = ref_block(sd, i, x)
    return F.conv2d(x, sd["14.weight"], sd["14.bias"], padding=1)


# -- architecture and files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["decoder", "encoder"])
def test_full_size_modules_have_the_released_key_layout(kind):
    build = taesd.build_decoder if kind == "decoder" else taesd.build_encoder
    got = {k: tuple(v.shape) for k, v in build(4).state_dict().items()}
    assert got == released_layout(kind) and len(got) == 67
    assert sum(v.numel() for v in build(4).state_dict().values()) == sum(
        torch.Size(s).numel() for s in released_layout(kind).values())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_decoder_and_encoder_match_the_functional_reference(tmp_path, suffix):
    dec_sd, enc_sd = random_weights("decoder", 1), random_weights("encoder", 2)
    write(tmp_path / f"taesd_decoder{suffix}", dec_sd)
    write(tmp_path / f"taesd_encoder{suffix}", enc_sd)
    decoder, channels, width = taesd.load_decoder(tmp_path / f"taesd_decoder{suffix}")
    assert (channels, width) == (4, W)
    z = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(3)) * 4
    with torch.no_grad():
        out = decoder(z)
    assert out.shape == (2, 3, 40, 56)
    torch.testing.assert_close(out, ref_decoder(dec_sd, z), rtol=1e-5, atol=1e-5)
    encoder, channels, width = taesd.load_encoder(tmp_path / f"taesd_encoder{suffix}")
    x = torch.rand(1, 3, 24, 40, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        lat = encoder(x)
    assert lat.shape == (1, 4, 3, 5)
    torch.testing.assert_close(lat, ref_encoder(enc_sd, x), rtol=1e-5, atol=1e-5)


def test_sixteen_channel_files_are_sized_from_the_weights(tmp_path):
    write(tmp_path / "taef1_decoder.pth", random_weights("decoder", 5, channels=16))
    _, channels, width = taesd.load_decoder(tmp_path / "taef1_decoder.pth")
    assert (channels, width) == (16, W)


def test_bad_files_raise_model_load_error(tmp_path):
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 this is not a zip")
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    sd = random_weights("decoder", 6)
    write(tmp_path / "missing.pth", {k: v for k, v in sd.items() if k != "9.conv.2.bias"})
    write(tmp_path / "extra.pth", {**sd, "20.weight": torch.zeros(3)})
    sd_shape = dict(sd)
    sd_shape["7.weight"] = torch.zeros(W, W, 1, 1)
    write(tmp_path / "shape.pth", sd_shape)
    write(tmp_path / "encoder_as_decoder.pth", random_weights("encoder", 7))
    for name in ("corrupt.pth", "garbage.safetensors", "missing.pth", "extra.pth", "shape.pth",
                 "encoder_as_decoder.pth", "absent.pth"):
        with pytest.raises(ModelLoadError):
            taesd.load_decoder(tmp_path / name)
    write(tmp_path / "enc16.pth", random_weights("encoder", 8, channels=16))
    write(tmp_path / "dec4.pth", sd)
    with pytest.raises(ModelLoadError, match="do not match"):
        taesd.load_taesd(tmp_path / "enc16.pth", tmp_path / "dec4.pth")


def test_taesd_vae_applies_the_family_scale(tmp_path):
    dec_sd, enc_sd = random_weights("decoder", 11), random_weights("encoder", 12)
    write(tmp_path / "d.pth", dec_sd)
    write(tmp_path / "e.safetensors", enc_sd)
    vae = taesd.taesd_vae("taesdxl", tmp_path / "e.safetensors", tmp_path / "d.pth", device=torch.device("cpu"),
                          dtype=torch.float32)
    z = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(13)) * 5
    image = vae.decode(z)
    assert image.shape == (2, 32, 48, 3)
    # VAE decode: decoder(z * 0.13025) * 2 - 1, then ComfyUI's (x + 1) / 2 clamp = decoder(...) clamped to 0..1
    expected = ref_decoder(dec_sd, z * 0.13025).clamp(0, 1).movedim(1, -1)
    torch.testing.assert_close(image, expected, rtol=1e-5, atol=1e-5)
    pixels = torch.rand(1, 33, 50, 3, generator=torch.Generator().manual_seed(14))  # cropped to 32×48
    latent = vae.encode(pixels)
    expected = ref_encoder(enc_sd, pixels[:, :32, 1:49].movedim(-1, 1)) / 0.13025
    torch.testing.assert_close(latent, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ModelLoadError):
        taesd.taesd_vae("taesd9", tmp_path / "e.safetensors", tmp_path / "d.pth", device=torch.device("cpu"),
                        dtype=torch.float32)


# -- through an engine: VAELoader and previews -----------------------------------------------------------------------

ORANGE = (0.9, 0.5, 0.1)


def constant_decoder(width: int = W) -> dict[str, torch.Tensor]:
    """A decoder whose output is ORANGE everywhere (zero head weights, bias = the colour)."""
    sd = random_weights("decoder", 21, width)
    sd["19.weight"] = torch.zeros_like(sd["19.weight"])
    sd["19.bias"] = torch.tensor(ORANGE)
    return sd


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("taesd_models")
    fm.write_checkpoint(root / "checkpoints" / CKPT, "sd1")
    write(root / "vae_approx" / "taesd_decoder.pth", constant_decoder())
    write(root / "vae_approx" / "taesd_encoder.safetensors", random_weights("encoder", 22))
    write(root / "vae_approx" / "taesdxl_decoder.pth", random_weights("decoder", 23))  # no XL encoder
    return root


def run_with_previews(tmp_path, models_dir, method, steps=2, store=None):
    engine = make_engine(tmp_path, models_dir, store, preview_method=method, preview_size=96)
    frames = []
    sub = engine.events.subscribe(lambda m: frames.append(m.event) if m.type == "preview" else None)
    try:
        engine.run(txt2img(CKPT, seed=5, steps=steps, keep="p", save=False))
        engine.run(txt2img(CKPT, seed=6, steps=steps, keep="p", save=False))
        loads = engine.models.stats.loads.get("taesd_decoder", 0)
    finally:
        sub.close()
        engine.close()
    return frames, loads


def mean_rgb(jpeg: bytes) -> tuple[tuple[float, ...], tuple[int, int], float]:
    with Image.open(io.BytesIO(jpeg)) as img:
        t = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32)).reshape(-1, 3)  # [N, 3]
        return tuple((t.mean(0) / 255).tolist()), img.size, float(t.std(0).max())


def test_taesd_previews_during_ksampler(tmp_path, models_dir):
    frames, loads = run_with_previews(tmp_path, models_dir, "taesd")
    assert len(frames) == 4 and all(f.node_id == SAMPLER and f.image_type == "image/jpeg" for f in frames)
    assert loads == 1  # the decoder is loaded once through the model cache, for both runs
    for frame in frames:
        mean, size, spread = mean_rgb(frame.image)
        assert size == (96, 96)  # 8×8 latent -> 64×64 TAESD pixels, fitted into preview_size²
        assert mean == pytest.approx(ORANGE, abs=0.02) and spread < 4


def test_auto_previews_are_latent2rgb_like_comfyui(tmp_path, models_dir):
    frames, loads = run_with_previews(tmp_path, models_dir, "auto", steps=1)
    assert len(frames) == 2 and loads == 0
    assert all(mean_rgb(f.image)[0] != pytest.approx(ORANGE, abs=0.05) for f in frames)


def test_taesd_previews_fall_back_to_latent2rgb_without_a_decoder(tmp_path, models_dir, caplog):
    bare = tmp_path / "models"
    (bare / "checkpoints").mkdir(parents=True)
    (bare / "checkpoints" / CKPT).symlink_to(models_dir / "checkpoints" / CKPT)
    frames, loads = run_with_previews(tmp_path, bare, "taesd", steps=1)
    assert len(frames) == 2 and loads == 0 and "taesd_decoder" in caplog.text
    assert all(mean_rgb(f.image)[0] != pytest.approx(ORANGE, abs=0.05) for f in frames)


def test_taesd_preview_jpeg_matches_a_direct_decode():
    sd = random_weights("decoder", 31)
    decoder = taesd.build_decoder(4, W)
    decoder.load_state_dict(sd)
    x0 = torch.randn(2, 4, 6, 10, generator=torch.Generator().manual_seed(32))
    jpeg = taesd_preview_jpeg(decoder, x0, max_size=512)
    with Image.open(io.BytesIO(jpeg)) as img:
        assert img.format == "JPEG" and img.size == (512, 307)  # 80×48 fitted into 512²
    direct = ref_decoder(sd, x0[:1])[0].clamp(0, 1).mul(255).to(torch.uint8).movedim(0, -1).numpy()
    expected = Image.fromarray(direct).resize((512, 307), Image.Resampling.BILINEAR)
    with Image.open(io.BytesIO(jpeg)) as img:
        diff = np.abs(np.asarray(img.convert("RGB"), dtype=np.float32) - np.asarray(expected, dtype=np.float32))
    assert diff.mean() < 3  # JPEG noise only


def test_vae_loader_lists_and_decodes_with_taesd(tmp_path, models_dir):
    store: dict = {}
    engine = make_engine(tmp_path, models_dir, store)
    try:
        choices = engine.object_info("VAELoader")["VAELoader"]["input"]["required"]["vae_name"][0]
        assert choices == ["taesd", "pixel_space"]  # taesdxl lacks its encoder
        prompt = txt2img(CKPT, seed=7, steps=1, keep="tiny", save=False)
        prompt["20"] = {"class_type": "VAELoader", "inputs": {"vae_name": "taesd"}}
        prompt[DECODE]["inputs"]["vae"] = ["20", 0]
        engine.run(prompt)
        prompt["20"]["inputs"]["vae_name"] = "taesdxl"
        with pytest.raises(PromptError, match="failed validation"):  # not a choice: half of it is missing
            engine.run(prompt)
    finally:
        engine.close()
    image = store["tiny_image"]
    assert image.shape == (1, 64, 64, 3)
    torch.testing.assert_close(image, torch.tensor(ORANGE).expand(1, 64, 64, 3), rtol=0, atol=1e-6)
