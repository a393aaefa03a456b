"""images.py: ComfyUI's PNG saving (truncating pixels, tEXt chunks), LoadImage/LoadImageMask decoding, the pixel cap,
and preview encoding for latent previews and /view."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_core.errors import InputFileError
from comfy_core.images import (encode_preview, load_image, load_image_mask, pil_to_tensor, read_png_text, save_png,
                               tensor_to_pil, view_channel, view_preview)


def test_save_png_truncates_and_clips(tmp_path):
    image = torch.tensor([[[0.999, 1.5, -0.2], [0.5, 0.00392, 1.0]]], dtype=torch.float32)  # [1,2,3]
    save_png(image, tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode == "RGB"
        # 255*0.999 = 254.7 -> 254 (truncated, not rounded); 255*0.5 = 127.5 -> 127; 255*0.00392 = 0.9996 -> 0
        assert img.getpixel((0, 0)) == (254, 255, 0)
        assert img.getpixel((1, 0)) == (127, 0, 255)


def test_save_png_rgba(tmp_path):
    save_png(torch.full((2, 2, 4), 0.5), tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as img:
        assert img.mode == "RGBA" and img.getpixel((1, 1)) == (127, 127, 127, 127)


def test_save_png_text_chunks_are_pythons_default_json(tmp_path):
    prompt = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "text": "café"}}}
    workflow = {"nodes": [1, 2], "extra": {"ds": 1.5}}
    save_png(torch.zeros(2, 2, 3), tmp_path / "a.png", prompt=prompt, extra_pnginfo={"workflow": workflow, "x": 7})
    text = read_png_text(tmp_path / "a.png")
    assert text == {
        "prompt": '{"3": {"class_type": "KSampler", "inputs": {"seed": 5, "text": "caf\\u00e9"}}}',
        "workflow": '{"nodes": [1, 2], "extra": {"ds": 1.5}}',
        "x": "7",
    }
    assert json.loads(text["prompt"]) == prompt


def test_save_png_without_metadata(tmp_path):
    save_png(torch.zeros(2, 2, 3), tmp_path / "a.png")
    assert read_png_text(tmp_path / "a.png") == {}


def test_tensor_pil_roundtrip():
    img = Image.new("RGB", (3, 2), (255, 0, 51))
    t = pil_to_tensor(img)
    assert t.shape == (1, 2, 3, 3)
    assert torch.allclose(t[0, 0, 0], torch.tensor([1.0, 0.0, 0.2]))
    assert tensor_to_pil(t[0]).getpixel((2, 1)) == (255, 0, 51)
    with pytest.raises(ValueError):
        tensor_to_pil(torch.zeros(2, 2, 5))


def test_load_rgba_mask_is_one_minus_alpha(tmp_path):
    img = Image.new("RGBA", (3, 2), (255, 0, 0, 255))
    img.putpixel((1, 1), (0, 255, 0, 51))
    img.save(tmp_path / "a.png")
    image, mask = load_image(tmp_path / "a.png")
    assert image.shape == (1, 2, 3, 3) and mask.shape == (1, 2, 3)
    assert image[0, 1, 1].tolist() == [0.0, 1.0, 0.0]
    assert mask[0, 1, 1].item() == pytest.approx(0.8)
    assert mask[0, 0, 0].item() == 0.0


def test_load_rgb_gives_64x64_zero_mask(tmp_path):
    Image.new("RGB", (5, 7), (1, 2, 3)).save(tmp_path / "a.jpg", quality=100)
    image, mask = load_image(tmp_path / "a.jpg")
    assert image.shape == (1, 7, 5, 3)
    assert mask.shape == (1, 64, 64) and mask.abs().sum() == 0


def test_load_palette_transparency(tmp_path):
    img = Image.new("P", (2, 2), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 1
    img.save(tmp_path / "p.png", transparency=1)
    image, mask = load_image(tmp_path / "p.png")
    assert mask.tolist() == [[[0.0, 1.0], [0.0, 0.0]]]
    assert image[0, 0, 0].tolist() == [1.0, 0.0, 0.0]


def test_load_animation_keeps_frames_of_first_size(tmp_path):
    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    image, mask = load_image(tmp_path / "a.gif")
    assert image.shape == (2, 4, 4, 3)
    assert image[1, 0, 0, 2].item() == 1.0 and image[1, 0, 0, 0].item() == 0.0
    assert mask.shape[0] == 2


def test_load_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img.save(tmp_path / "r.png", exif=exif)
    image, _ = load_image(tmp_path / "r.png")
    assert image.shape == (1, 4, 2, 3)  # W and H swapped
    assert image[0, 0, 1].tolist() == [1.0, 1.0, 1.0]  # top-left went to top-right


def test_load_mode_i_is_divided_by_255(tmp_path):
    array = np.array([[25500, 0]], dtype=np.int32)
    Image.fromarray(array).save(tmp_path / "i.tiff")  # 32-bit integer pixels (mode I)
    with Image.open(tmp_path / "i.tiff") as img:
        assert img.mode == "I"
    image, _ = load_image(tmp_path / "i.tiff")
    assert image[0, 0, 0, 0].item() == pytest.approx(100 / 255)


def test_pixel_cap_and_bad_files(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(InputFileError, match="more than the 5000 pixels"):
        load_image(tmp_path / "big.png", max_pixels=5000)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(InputFileError) as err:
        load_image(tmp_path / "junk.png")
    assert err.value.status == 400
    with pytest.raises(InputFileError) as err:
        load_image(tmp_path / "missing.png")
    assert err.value.status == 404


def test_load_image_mask_channels(tmp_path):
    Image.new("RGBA", (2, 1), (255, 51, 0, 102)).save(tmp_path / "a.png")
    assert load_image_mask(tmp_path / "a.png", "red").tolist() == [[[1.0, 1.0]]]
    assert load_image_mask(tmp_path / "a.png", "green")[0, 0, 0].item() == pytest.approx(0.2)
    assert load_image_mask(tmp_path / "a.png", "alpha")[0, 0, 0].item() == pytest.approx(0.6)
    Image.new("RGB", (2, 1), (0, 0, 255)).save(tmp_path / "b.png")
    assert load_image_mask(tmp_path / "b.png", "blue").tolist() == [[[1.0, 1.0]]]
    assert load_image_mask(tmp_path / "b.png", "alpha").tolist() == [[[0.0, 0.0]]]  # opaque after RGBA conversion


def test_encode_preview_jpeg_fits_max_size():
    data = encode_preview(torch.rand(1, 100, 200, 3), "JPEG", max_size=50)
    assert data[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == (50, 25)
    assert encode_preview(torch.rand(8, 8, 3), "PNG", max_size=None)[:4] == b"\x89PNG"


def test_view_preview_and_channels(tmp_path):
    Image.new("RGBA", (4, 4), (200, 100, 50, 128)).save(tmp_path / "a.png")
    data, ctype = view_preview(tmp_path / "a.png", "jpeg;80")
    assert ctype == "image/jpeg" and data[:2] == b"\xff\xd8"
    data, ctype = view_preview(tmp_path / "a.png", "jpeg;80", channel="rgba")  # an 'a' forces webp
    assert ctype == "image/webp" and data[8:12] == b"WEBP"
    assert view_preview(tmp_path / "a.png", "gif")[1] == "image/webp"
    with Image.open(io.BytesIO(view_channel(tmp_path / "a.png", "a"))) as img:
        assert img.mode == "RGBA" and img.getpixel((0, 0)) == (0, 0, 0, 128)
    with Image.open(io.BytesIO(view_channel(tmp_path / "a.png", "rgb"))) as img:
        assert img.mode == "RGB" and img.getpixel((0, 0)) == (200, 100, 50)
    Image.new("RGB", (2, 2)).save(tmp_path / "b.png")
    with Image.open(io.BytesIO(view_channel(tmp_path / "b.png", "a"))) as img:
        assert img.getpixel((0, 0)) == (0, 0, 0, 255)
