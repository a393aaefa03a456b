"""Latent operation nodes: exact values on hand-computed small tensors, ComfyUI's batch/size matching rules,
noise_mask / batch_index propagation, latent operations (also as a guidance hook), rebatching, .latent files and
inpaint-model conditioning."""
import dataclasses
import hashlib
import json
import math

import msgspec
import numpy as np
import pytest
import torch
from fixtures_nodes import engine_config, node_context
from safetensors import safe_open
from safetensors.torch import save_file

from comfy_core import Engine, NodeExecutionError, context
from comfy_core.errors import InputFileError
from comfy_core.nodes import latent_ops as lo
from comfy_core.nodes.latent_operations import LatentSharpen, ReinhardTonemap
from comfy_core.sampling.common import POST_CFG_FUNCTIONS, PRE_CFG_FUNCTIONS, guidance_is_plain
from comfy_core.sampling.guidance import CFGDenoiser, Cond


def lat(values, **extra):
    return {"samples": torch.tensor(values, dtype=torch.float32), **extra}


GRID = [[[[1.0, 2.0], [3.0, 4.0]]]]  # [1,1,2,2]


# --- arithmetic and batch/size matching -------------------------------------------------------------------------

def test_add_subtract_multiply_values_and_propagation():
    mask = torch.ones(1, 1, 16, 16)
    a = lat(GRID, noise_mask=mask, batch_index=[7])
    b = lat([[[[10.0, 20.0], [30.0, 40.0]]]], batch_index=[1])
    added = lo.LatentAdd().execute(a, b)[0]
    assert added["samples"].tolist() == [[[[11.0, 22.0], [33.0, 44.0]]]]
    assert added["noise_mask"] is mask and added["batch_index"] == [7]  # the first input's extras travel on
    assert lo.LatentSubtract().execute(b, a)[0]["samples"].tolist() == [[[[9.0, 18.0], [27.0, 36.0]]]]
    assert lo.LatentMultiply().execute(a, -0.5)[0]["samples"].tolist() == [[[[-0.5, -1.0], [-1.5, -2.0]]]]
    assert a["samples"].tolist() == GRID  # inputs untouched


def test_second_batch_is_tiled_or_cut_to_the_first():
    three = lat([[[[0.0]]], [[[0.0]]], [[[0.0]]]])
    two = lat([[[[1.0]]], [[[2.0]]]])
    assert lo.LatentAdd().execute(three, two)[0]["samples"].flatten().tolist() == [1.0, 2.0, 1.0]
    one = lat([[[[0.0]]]])
    assert lo.LatentAdd().execute(one, two)[0]["samples"].flatten().tolist() == [1.0]


def test_second_size_is_resized_bilinear_center():
    small = lat([[[[0.0, 0.0], [0.0, 0.0]]]])
    big = {"samples": torch.arange(16.0).view(1, 1, 4, 4)}
    # 4x4 -> 2x2 bilinear at half size samples between pixel pairs: the mean of each 2x2 block
    assert lo.LatentAdd().execute(small, big)[0]["samples"].tolist() == [[[[2.5, 4.5], [10.5, 12.5]]]]


def test_channel_mismatch_is_a_clear_error():
    with pytest.raises(NodeExecutionError, match="channel"):
        lo.LatentAdd().execute({"samples": torch.zeros(1, 4, 2, 2)}, {"samples": torch.zeros(1, 16, 2, 2)})


def test_interpolate_hand_computed():
    # one pixel, 4 channels: s1 = (3,4,0,0) |5|, s2 = (0,0,0,2) |2|
    s1 = lat([[[[3.0]], [[4.0]], [[0.0]], [[0.0]]]])
    s2 = lat([[[[0.0]], [[0.0]], [[0.0]], [[2.0]]]])
    out = lo.LatentInterpolate().execute(s1, s2, 0.5)[0]["samples"].flatten()
    t = np.array([0.3, 0.4, 0.0, 0.5])  # the mean of the unit directions
    expected = t / np.linalg.norm(t) * (0.5 * 5 + 0.5 * 2)
    assert np.allclose(out.numpy(), expected, atol=1e-6)
    assert torch.allclose(lo.LatentInterpolate().execute(s1, s2, 1.0)[0]["samples"], s1["samples"])


def test_interpolate_zero_vectors_stay_finite():
    zero = lat([[[[0.0]], [[0.0]]]])
    out = lo.LatentInterpolate().execute(zero, zero, 0.3)[0]["samples"]
    assert out.tolist() == [[[[0.0]], [[0.0]]]]


def test_interpolate_batch_rule_is_comfyuis():
    """ComfyUI broadcasts the [B,H,W] norms against [B,C,H,W]: batch == channels works (with its numbers), other
    batches fail there; we refuse those with a clear error."""
    s = torch.arange(1.0, 17.0).view(4, 4, 1, 1)
    out = lo.LatentInterpolate().execute({"samples": s}, {"samples": s.flip(0)}, 0.25)[0]["samples"]
    m1, m2 = torch.linalg.vector_norm(s, dim=1), torch.linalg.vector_norm(s.flip(0), dim=1)
    t = torch.nan_to_num(s / m1) * 0.25 + torch.nan_to_num(s.flip(0) / m2) * 0.75
    assert torch.equal(out, torch.nan_to_num(t / torch.linalg.vector_norm(t, dim=1)) * (m1 * 0.25 + m2 * 0.75))
    with pytest.raises(NodeExecutionError, match="batch of 1"):
        lo.LatentInterpolate().execute({"samples": torch.ones(2, 4, 1, 1)}, {"samples": torch.ones(2, 4, 1, 1)}, 0.5)


@pytest.mark.parametrize("dim, expected", [
    ("x", [[[[1.0, 2.0, 3.0, 4.0]]]]), ("-x", [[[[3.0, 4.0, 1.0, 2.0]]]]),
    ("y", [[[[1.0, 2.0], [3.0, 4.0]]]]), ("-y", [[[[3.0, 4.0], [1.0, 2.0]]]]),
    ("t", [[[[1.0, 2.0]], [[3.0, 4.0]]]]),  # on a 4-D latent the axis before height is the channels
])
def test_concat(dim, expected):
    out = lo.LatentConcat().execute(lat([[[[1.0, 2.0]]]], batch_index=[3]), lat([[[[3.0, 4.0]]]]), dim)[0]
    assert out["samples"].tolist() == expected and out["batch_index"] == [3]


def test_concat_repeats_batch_and_reports_mismatch():
    out = lo.LatentConcat().execute({"samples": torch.zeros(2, 1, 1, 1)}, lat([[[[5.0]]]]), "x")[0]
    assert out["samples"].flatten().tolist() == [0.0, 5.0, 0.0, 5.0]
    with pytest.raises(NodeExecutionError, match="differ"):
        lo.LatentConcat().execute({"samples": torch.zeros(1, 1, 2, 2)}, {"samples": torch.zeros(1, 1, 3, 3)}, "x")


@pytest.mark.parametrize("index, amount, expected", [
    (1, 2, [1, 2]), (4, 3, [4]), (10, 2, [4]), (-2, 5, [3, 4]), (-10, 2, [0, 1]), (0, 16384, [0, 1, 2, 3, 4]),
])
def test_cut_x(index, amount, expected):
    samples = {"samples": torch.arange(5.0).view(1, 1, 1, 5)}
    assert lo.LatentCut().execute(samples, "x", index, amount)[0]["samples"].flatten().tolist() == expected


def test_cut_y_and_t():
    s = torch.arange(24.0).view(1, 2, 3, 4)
    assert torch.equal(lo.LatentCut().execute({"samples": s}, "y", -1, 1)[0]["samples"], s[:, :, 2:3])
    assert torch.equal(lo.LatentCut().execute({"samples": s}, "t", 1, 1)[0]["samples"], s[:, 1:2])


def test_batch_seed_behavior():
    three = {"samples": torch.zeros(3, 1, 1, 1)}
    assert lo.LatentBatchSeedBehavior().execute(three, "fixed")[0]["batch_index"] == [0, 0, 0]
    indexed = {"samples": torch.zeros(2, 1, 1, 1), "batch_index": [5, 6]}
    assert lo.LatentBatchSeedBehavior().execute(indexed, "fixed")[0]["batch_index"] == [5, 5]
    assert "batch_index" not in lo.LatentBatchSeedBehavior().execute(indexed, "random")[0]
    assert indexed["batch_index"] == [5, 6]


def test_latent_batch():
    mask = torch.zeros(1, 1, 8, 8)
    s1 = {"samples": torch.zeros(2, 1, 2, 2), "noise_mask": mask}
    s2 = {"samples": torch.ones(1, 1, 4, 4)}
    out = lo.LatentBatch().execute(s1, s2)[0]
    assert out["samples"].shape == (3, 1, 2, 2) and out["samples"][2].eq(1.0).all()
    assert out["batch_index"] == [0, 1, 0] and out["noise_mask"] is mask
    out = lo.LatentBatch().execute({**s1, "batch_index": [4, 5]}, {**s2, "batch_index": [9]})[0]
    assert out["batch_index"] == [4, 5, 9]


# --- transforms -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rotation, expected", [
    ("none", [[1.0, 2.0], [3.0, 4.0]]), ("90 degrees", [[3.0, 1.0], [4.0, 2.0]]),  # clockwise
    ("180 degrees", [[4.0, 3.0], [2.0, 1.0]]), ("270 degrees", [[2.0, 4.0], [1.0, 3.0]]),
])
def test_rotate(rotation, expected):
    assert lo.LatentRotate().rotate(lat(GRID), rotation)[0]["samples"][0, 0].tolist() == expected


def test_flip():
    assert lo.LatentFlip().flip(lat(GRID), "x-axis: vertically")[0]["samples"][0, 0].tolist() == [[3, 4], [1, 2]]
    assert lo.LatentFlip().flip(lat(GRID), "y-axis: horizontally")[0]["samples"][0, 0].tolist() == [[2, 1], [4, 3]]


def test_crop_pixel_units_and_clamp():
    s = torch.arange(256.0).view(1, 1, 16, 16)
    mask = torch.ones(1, 1, 128, 128)
    out = lo.LatentCrop().crop({"samples": s, "noise_mask": mask}, 64, 64, 8, 16)[0]
    assert torch.equal(out["samples"], s[:, :, 2:10, 1:9]) and out["noise_mask"] is mask
    far = lo.LatentCrop().crop({"samples": s}, 64, 64, 16384, 16384)[0]["samples"]
    assert torch.equal(far, s[:, :, 8:16, 8:16])  # the corner stays 8 latent pixels inside
    wide = lo.LatentCrop().crop({"samples": s}, 512, 64, 0, 0)[0]["samples"]
    assert wide.shape == (1, 1, 8, 16)  # clipped at the edge


def test_blend():
    out = lo.LatentBlend().blend(lat(GRID), lat([[[[5.0, 5.0], [5.0, 5.0]]]]), 0.25)[0]["samples"]
    assert out.tolist() == [[[[4.0, 4.25], [4.5, 4.75]]]]  # 0.25·s1 + 0.75·s2
    resized = lo.LatentBlend().blend(lat(GRID), {"samples": torch.full((1, 1, 4, 4), 2.0)}, 0.5)[0]["samples"]
    assert torch.allclose(resized, torch.tensor([[[[1.5, 2.0], [2.5, 3.0]]]]))
    with pytest.raises(NodeExecutionError, match="cannot"):
        lo.LatentBlend().blend({"samples": torch.zeros(2, 1, 2, 2)}, {"samples": torch.zeros(3, 1, 2, 2)}, 0.5)


def test_empty_sd3_latent():
    out = lo.EmptySD3LatentImage().generate(96, 64, 2)[0]["samples"]
    assert out.shape == (2, 16, 8, 12) and out.abs().sum() == 0


# --- latent operations ------------------------------------------------------------------------------------------

def test_tonemap_reinhard_hand_computed():
    latent = torch.tensor([[[[3.0, 0.0]], [[4.0, 1.0]]]])  # [1,2,1,2]: magnitudes 5 and 1
    out = ReinhardTonemap(1.0)(latent=latent)
    top = 3.0 + 5 * math.sqrt(8.0)  # mean 3, unbiased std sqrt(8)
    new = [m * top / (m + top) for m in (5.0, 1.0)]  # m / (1 + m/top)
    expected = [[[[0.6 * new[0], 0.0]], [[0.8 * new[0], new[1]]]]]
    assert torch.allclose(out, torch.tensor(expected), atol=1e-5)
    assert torch.equal(lo.LatentApplyOperation().execute({"samples": latent, "batch_index": [2]},
                                                          ReinhardTonemap(1.0))[0]["samples"], out)


def _reference_sharpen(x: np.ndarray, radius: int, sigma: float, alpha: float) -> np.ndarray:
    """Direct loops: directions (one channel: the sign) correlated with the sharpen kernel over a reflect border."""
    k = 2 * radius + 1
    grid = np.linspace(-1, 1, k)
    g = np.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * sigma ** 2))
    kernel = g / g.sum() * (-10 * alpha)
    kernel[radius, radius] += 1.0 - kernel.sum()
    direction = x / (np.abs(x) + 1e-6)
    padded = np.pad(direction, radius, mode="reflect")
    out = np.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = (padded[i:i + k, j:j + k] * kernel).sum()
    return (np.abs(x) + 1e-6) * out


def test_sharpen_against_direct_reference():
    x = np.array([[1.0, -2.0, 3.0, 0.5], [-1.0, 2.0, -0.5, 1.5], [2.0, 1.0, -3.0, 1.0], [0.5, -1.0, 1.0, 2.0]])
    out = LatentSharpen(1, 0.8, 0.3)(latent=torch.tensor(x, dtype=torch.float32)[None, None])
    assert np.allclose(out[0, 0].numpy(), _reference_sharpen(x, 1, 0.8, 0.3), atol=1e-5)


def test_sharpen_keeps_constant_directions_and_rejects_small_latents():
    x = torch.rand(1, 4, 6, 6) + 0.5
    x = x[:, :1].expand(1, 4, 6, 6) * torch.tensor([1.0, 2.0, -1.0, 0.5]).view(1, 4, 1, 1)  # one direction
    assert torch.allclose(LatentSharpen(2, 1.0, 2.0)(latent=x), x, atol=1e-5)  # the kernel sums to 1
    with pytest.raises(NodeExecutionError, match="radius of 9"):
        LatentSharpen(9, 1.0, 0.1)(latent=torch.ones(1, 4, 8, 8))


def test_operation_nodes_build_callables():
    op = lo.LatentOperationSharpen().execute(2, 1.5, 0.2)[0]
    assert isinstance(op, LatentSharpen) and (op.radius, op.sigma, op.alpha) == (2, 1.5, 0.2)
    assert lo.LatentOperationTonemapReinhard().execute(2.0)[0].multiplier == 2.0


class _StandInModel:
    """Enough of a MODEL for CFGDenoiser: the prediction is x times the conditioning's first token value."""

    model_sampling = None

    def __init__(self):
        self.model_options = {"transformer_options": {}}

    def clone(self):
        other = _StandInModel()
        other.model_options = dict(self.model_options)
        return other

    def apply_model(self, x, sigma, context=None, **_):
        return x * context[:, :1, :1].reshape(-1, 1, 1, 1)


def _denoise(model, cfg):
    denoiser = CFGDenoiser(model, [Cond(torch.full((1, 1, 2), 2.0))], [Cond(torch.full((1, 1, 2), 0.5))], cfg)
    return denoiser(torch.ones(1, 4, 2, 2), torch.ones(1))


def test_apply_operation_cfg_acts_on_the_guidance_direction():
    base = _StandInModel()
    assert torch.allclose(_denoise(base, 2.0), torch.full((1, 4, 2, 2), 3.5))  # 0.5 + 2·(2 − 0.5)
    patched = lo.LatentApplyOperationCFG().execute(base, lambda latent, **_: latent * 3)[0]
    assert patched is not base and PRE_CFG_FUNCTIONS not in base.model_options
    assert guidance_is_plain(base.model_options) and not guidance_is_plain(patched.model_options)  # no fused step
    # cond' = 3·(2 − 0.5) + 0.5 = 5; denoised = 0.5 + 2·(5 − 0.5) = 9.5
    assert torch.allclose(_denoise(patched, 2.0), torch.full((1, 4, 2, 2), 9.5))
    # at cfg 1 the uncond pass is skipped (zeros): op(cond) = 6
    assert torch.allclose(_denoise(patched, 1.0), torch.full((1, 4, 2, 2), 6.0))


def test_apply_operation_cfg_chains_in_order_before_the_combine_and_post_hooks():
    def post_hook(args):
        return args["denoised"] + 100

    base = _StandInModel()
    base.model_options[POST_CFG_FUNCTIONS] = [post_hook]
    m1 = lo.LatentApplyOperationCFG().execute(base, lambda latent, **_: latent * 2)[0]
    m2 = lo.LatentApplyOperationCFG().execute(m1, lambda latent, **_: latent + 1)[0]
    assert len(m2.model_options[PRE_CFG_FUNCTIONS]) == 2 and m2.model_options[POST_CFG_FUNCTIONS] == [post_hook]
    # cond' = (2·1.5 + 0.5), then ((cond' − 0.5) + 1) + 0.5 = 4.5; denoised = 0.5 + 2·4 = 8.5; +100 by the post hook
    assert torch.allclose(_denoise(m2, 2.0), torch.full((1, 4, 2, 2), 108.5))
    assert len(m1.model_options[PRE_CFG_FUNCTIONS]) == 1  # the first clone is not changed by the second node


def test_apply_operation_cfg_composes_with_a_custom_cfg_function():
    from comfy_core.sampling.common import CFG_FUNCTION

    base = _StandInModel()
    base.model_options[CFG_FUNCTION] = lambda args: args["uncond"]  # eps-space: denoised = uncond prediction
    patched = lo.LatentApplyOperationCFG().execute(base, lambda latent, **_: latent * 3)[0]
    # the operation rewrites cond only; the custom combine then returns the (untouched) uncond: 0.5
    assert torch.allclose(_denoise(patched, 2.0), torch.full((1, 4, 2, 2), 0.5))


# --- rebatching -------------------------------------------------------------------------------------------------

def _items(n, start=0.0, size=2):
    return torch.arange(start, start + n).view(n, 1, 1, 1).expand(n, 1, size, size).clone()


def test_rebatch_regroups_in_order():
    latents = [{"samples": _items(3)}, {"samples": _items(2, 3.0)}]
    out = lo.RebatchLatents().rebatch(latents, [2])[0]
    assert [o["samples"][:, 0, 0, 0].tolist() for o in out] == [[0, 1], [2, 3], [4]]
    assert [o["batch_index"] for o in out] == [[0, 1], [2, 3], [4]]
    assert all("noise_mask" not in o for o in out)  # all-ones masks are dropped


def test_rebatch_keeps_real_masks_and_indices():
    mask = torch.zeros(1, 1, 16, 16)
    latents = [{"samples": _items(2), "noise_mask": mask, "batch_index": [10, 11]}, {"samples": _items(1, 2.0)}]
    out = lo.RebatchLatents().rebatch(latents, [3])[0]
    assert len(out) == 1 and out[0]["batch_index"] == [10, 11, 2]
    assert out[0]["noise_mask"].shape == (3, 1, 16, 16)
    assert out[0]["noise_mask"][:2].sum() == 0 and out[0]["noise_mask"][2].eq(1).all()


def test_rebatch_size_change_closes_the_group():
    latents = [{"samples": _items(3)}, {"samples": _items(1, 9.0, size=4)}]
    out = lo.RebatchLatents().rebatch(latents, [4])[0]
    assert [tuple(o["samples"].shape) for o in out] == [(3, 1, 2, 2), (1, 1, 4, 4)]
    assert out[1]["batch_index"] == [3]


def test_rebatch_incompatible_masks_are_a_clear_error():
    latents = [{"samples": _items(1), "noise_mask": torch.zeros(1, 1, 5, 5)}, {"samples": _items(1)}]
    with pytest.raises(NodeExecutionError, match="cannot share a batch"):
        lo.RebatchLatents().rebatch(latents, [4])


# --- .latent files ----------------------------------------------------------------------------------------------

@pytest.fixture
def ctx(tmp_path):
    node_ctx = node_context(tmp_path)
    with context.use(node_ctx):
        yield node_ctx


def test_save_latent_format_counter_and_metadata(ctx, tmp_path):
    samples = {"samples": torch.arange(8.0).view(1, 2, 2, 2)}
    prompt, extra = {"1": {"class_type": "X"}}, {"workflow": {"nodes": [1]}}
    ui = lo.SaveLatent().save(samples, "latents/test", prompt=prompt, extra_pnginfo=extra)["ui"]
    assert ui == {"latents": [{"filename": "test_00001_.latent", "subfolder": "latents", "type": "output"}]}
    path = tmp_path / "out" / "latents" / "test_00001_.latent"
    with safe_open(str(path), "pt") as f:
        assert set(f.keys()) == {"latent_tensor", "latent_format_version_0"}
        assert torch.equal(f.get_tensor("latent_tensor"), samples["samples"])
        assert f.get_tensor("latent_format_version_0").numel() == 0
        assert f.metadata() == {"prompt": json.dumps(prompt), "workflow": json.dumps(extra["workflow"])}
    again = lo.SaveLatent().save(samples, "latents/test")["ui"]["latents"][0]
    assert again["filename"] == "test_00002_.latent"
    with safe_open(str(tmp_path / "out" / "latents" / again["filename"]), "pt") as f:
        assert f.metadata() == {"prompt": ""}


def test_save_latent_without_metadata(tmp_path):
    node_ctx = node_context(tmp_path)
    node_ctx.config = msgspec.structs.replace(node_ctx.config, save_metadata=False)
    with context.use(node_ctx):
        name = lo.SaveLatent().save({"samples": torch.zeros(1, 4, 1, 1)}, "x", prompt={"a": 1})["ui"]["latents"][0]
    with safe_open(str(tmp_path / "out" / name["filename"]), "pt") as f:
        assert not f.metadata()


def test_load_latent_round_trip_and_legacy_scale(ctx, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    value = torch.randn(2, 4, 3, 3)
    save_file({"latent_tensor": value, "latent_format_version_0": torch.tensor([])}, str(inp / "new.latent"))
    save_file({"latent_tensor": value.half()}, str(inp / "old.latent"))
    (inp / "photo.png").write_bytes(b"x")
    assert lo.LoadLatent.INPUT_TYPES() == {"required": {"latent": [["new.latent", "old.latent"]]}}
    assert torch.equal(lo.LoadLatent().load("new.latent")[0]["samples"], value)
    legacy = lo.LoadLatent().load("old.latent")[0]["samples"]
    assert legacy.dtype == torch.float32
    assert torch.allclose(legacy, value.half().float() * (1.0 / 0.18215))
    assert lo.LoadLatent.IS_CHANGED("new.latent") == hashlib.sha256((inp / "new.latent").read_bytes()).hexdigest()
    assert lo.LoadLatent.VALIDATE_INPUTS("new.latent") is True
    assert lo.LoadLatent.VALIDATE_INPUTS("missing.latent") == "Invalid latent file: missing.latent"
    assert lo.LoadLatent.VALIDATE_INPUTS("../etc/passwd") == "Invalid latent file: ../etc/passwd"


def test_load_latent_bad_files(ctx, tmp_path):
    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    (inp / "junk.latent").write_bytes(b"not safetensors")
    save_file({"other": torch.zeros(1)}, str(inp / "other.latent"))
    with pytest.raises(InputFileError, match="not a readable"):
        lo.LoadLatent().load("junk.latent")
    with pytest.raises(InputFileError, match="latent_tensor"):
        lo.LoadLatent().load("other.latent")


# --- inpaint-model conditioning ---------------------------------------------------------------------------------

class _MeanVAE:
    """A VAE stand-in: 8x8 average pooling of the RGB image, channels first (center crop as the real encoder)."""

    downscale_ratio = 8

    def __init__(self):
        self.seen = []

    def encode(self, pixels, progress=None):
        self.seen.append(pixels.clone())
        h, w = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
        oy, ox = (pixels.shape[1] - h) // 2, (pixels.shape[2] - w) // 2
        x = pixels[:, oy:oy + h, ox:ox + w, :3].movedim(-1, 1)
        return torch.nn.functional.avg_pool2d(x, 8)


def test_inpaint_model_conditioning_values():
    pixels = torch.full((1, 16, 16, 3), 0.9)
    mask = torch.zeros(1, 16, 16)
    mask[:, :8, :8] = 1.0  # the top-left quarter is repainted
    positive = [[torch.zeros(1, 2, 3), {"strength": 1.0}]]
    negative = [[torch.ones(1, 2, 3), {}]]
    vae = _MeanVAE()
    pos, neg, latent = lo.InpaintModelConditioning().encode(positive, negative, pixels, vae, mask, True)
    grey = vae.seen[0]
    assert grey[0, :8, :8].eq(0.5).all() and grey[0, 8:, :].eq(0.9).all()  # masked area mid-grey
    assert torch.equal(vae.seen[1], pixels)  # the latent is the untouched image
    concat = pos[0][1]["concat_latent_image"]
    assert torch.allclose(concat[0, :, 0, 0], torch.tensor(0.5)) and torch.allclose(concat[0, :, 1, 1],
                                                                                    torch.tensor(0.9))
    assert pos[0][1]["concat_mask"].shape == (1, 1, 16, 16) and torch.equal(pos[0][1]["concat_mask"][0, 0], mask[0])
    assert pos[0][1]["strength"] == 1.0 and neg[0][1]["concat_latent_image"] is concat
    assert "concat_mask" not in positive[0][1]  # inputs untouched
    assert torch.equal(latent["noise_mask"], pos[0][1]["concat_mask"])
    assert torch.allclose(latent["samples"], torch.full((1, 3, 2, 2), 0.9))
    assert "noise_mask" not in lo.InpaintModelConditioning().encode(positive, negative, pixels, vae, mask, False)[2]


def test_inpaint_model_conditioning_crops_to_multiples_of_8():
    pixels = torch.rand(1, 10, 13, 3)
    mask = torch.zeros(1, 10, 13)
    vae = _MeanVAE()
    pos, _, _ = lo.InpaintModelConditioning().encode([[torch.zeros(1, 1, 1), {}]], [], pixels, vae, mask, True)
    assert vae.seen[0].shape == (1, 8, 8, 3)
    assert torch.equal(vae.seen[0], pixels[:, 1:9, 2:10])  # centered: offsets (10 % 8) // 2, (13 % 8) // 2
    assert pos[0][1]["concat_mask"].shape == (1, 1, 8, 8)


def test_inpaint_model_conditioning_with_a_real_vae(tmp_path):
    """With a (tiny, random) real VAE: the concat latent is the encode of the greyed, cropped image."""
    import fixtures_models as fm

    from comfy_core.models.cache import ModelCache
    from comfy_core.nodes import loaders

    node_ctx = node_context(tmp_path, models=ModelCache(), device=torch.device("cpu"), dtype=torch.float32)
    with context.use(node_ctx):
        fm.write(tmp_path / "models" / "vae" / "v.safetensors", fm.vae_state_dict())
        (vae,) = loaders.VAELoader().load_vae("v.safetensors")
        image = torch.rand(1, 17, 24, 3)
        mask = torch.zeros(1, 17, 24)
        mask[:, 4:12, 8:16] = 1.0
        pos, _, latent = lo.InpaintModelConditioning().encode([[torch.zeros(1, 1, 1), {}]], [], image, vae, mask)
    greyed = image[:, :16].clone()  # 17 rows -> 16 (offset (17 % 8) // 2 = 0), 24 columns kept
    greyed[:, 4:12, 8:16] = 0.5
    assert torch.allclose(pos[0][1]["concat_latent_image"], vae.encode(greyed), atol=1e-6)
    assert torch.allclose(latent["samples"], vae.encode(image), atol=1e-6)
    assert latent["samples"].shape == (1, 4, 2, 3) and latent["noise_mask"].shape == (1, 1, 16, 24)


def test_invalid_vae_is_a_clear_error():
    with pytest.raises(NodeExecutionError, match="VAE is invalid"):
        lo.InpaintModelConditioning().encode([], [], torch.zeros(1, 8, 8, 3), None, torch.zeros(1, 8, 8))


def test_inpaint_model_consumes_the_conds():
    """An inpaint UNet's extra_conds turns concat_mask / concat_latent_image into its 5 extra input channels."""
    from fixtures_guidance import tiny_diffusion_model, tiny_unet_config

    model = tiny_diffusion_model(dataclasses.replace(tiny_unet_config(), in_channels=9))
    assert model.spec.inpaint
    concat = torch.randn(1, 4, 2, 2)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8, :] = 0.7
    c = model.extra_conds(noise=torch.zeros(2, 4, 2, 2), concat_latent_image=concat, concat_mask=mask)["c_concat"]
    assert c.shape == (2, 5, 2, 2)
    assert c[:, 0].tolist() == [[[1.0, 1.0], [0.0, 0.0]]] * 2  # resized to the latent and rounded
    assert torch.allclose(c[:, 1:], model.process_latent_in(concat).expand(2, 4, 2, 2))


# --- through the engine -----------------------------------------------------------------------------------------

def test_latent_workflow_through_engine(tmp_path):
    """LoadLatent -> multiply -> flip -> concat with itself -> rebatch -> SaveLatent: files hold the exact values."""
    config = engine_config(tmp_path)
    (tmp_path / "in").mkdir()
    source = torch.arange(12.0).view(3, 1, 2, 2)
    save_file({"latent_tensor": source, "latent_format_version_0": torch.tensor([])}, str(tmp_path / "in/a.latent"))
    prompt = {
        "1": {"class_type": "LoadLatent", "inputs": {"latent": "a.latent"}},
        "2": {"class_type": "LatentMultiply", "inputs": {"samples": ["1", 0], "multiplier": 2.0}},
        "3": {"class_type": "LatentFlip", "inputs": {"samples": ["2", 0], "flip_method": "y-axis: horizontally"}},
        "4": {"class_type": "RebatchLatents", "inputs": {"latents": ["3", 0], "batch_size": 2}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "wf/out"}},
    }
    with Engine(config) as engine:
        result = engine.run(prompt, extra_data={"extra_pnginfo": {"workflow": {"id": 1}}})
    files = [entry["filename"] for entry in result.outputs["5"]["latents"]]
    assert files == ["out_00001_.latent", "out_00002_.latent"]
    expected = (source * 2).flip(3)
    for name, part in zip(files, (expected[:2], expected[2:])):
        with safe_open(str(tmp_path / "out" / "wf" / name), "pt") as f:
            assert torch.equal(f.get_tensor("latent_tensor"), part)
            assert json.loads(f.metadata()["prompt"])["5"]["class_type"] == "SaveLatent"
            assert f.metadata()["workflow"] == '{"id": 1}'
