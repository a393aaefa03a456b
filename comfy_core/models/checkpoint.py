"""Build MODEL / VAE (and CLIP, through the text-encoder module) objects from model files.

These functions do the actual loading; `cache.ModelCache` decides when to call them. Every failure is a
`ModelLoadError` whose message names the file and what was wrong.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from .adm import NoiseAugmentor
from .detect import (
    ModelSpec,
    detect_model,
    detect_vae_config,
    find_unet_prefix,
    find_vae_prefix,
)
from .diffusers_layout import (
    is_diffusers_unet,
    is_diffusers_vae,
    unet_from_diffusers,
    vae_from_diffusers,
)
from .diffusion import DiffusionModel
from .fp8 import cast_on_forward, is_fp8, stored_fp8_dtype
from .sampling_variants import DiscreteSampling
from .state_dict import PrefixView, StateDict, materialize, open_state_dict
from .text_encoders import load_clip_from_state_dict
from .unet import UNetModel
from .vae import VAE, AutoencoderKL

log = logging.getLogger(__name__)


def default_device_dtype(device: Any = None, dtype: Any = None) -> tuple[torch.device, torch.dtype]:
    """CPU float32 unless told otherwise; float16 by default on CUDA (no device probing here)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dtype is None:
        dtype = torch.float16 if dev.type == "cuda" else torch.float32
    return dev, dtype


def build_diffusion_model(
    sd: StateDict, *, device: Any, dtype: torch.dtype, source: str, prefix: str | None = None,
    spec: ModelSpec | None = None, storage: torch.dtype | None = None, fp8_matmul: bool = False,
) -> DiffusionModel:
    """The UNet of `sd` (a checkpoint or a standalone UNet file) as a MODEL.

    `storage`: keep the weights in this fp8 dtype (UNETLoader's weight_dtype); by default a file whose UNet weights
    are stored as fp8 stays fp8. fp8 weights are cast per layer to `dtype` at forward time (see fp8.py)."""
    prefix = find_unet_prefix(sd) if prefix is None else prefix
    if prefix is None and is_diffusers_unet(sd):
        sd, prefix = unet_from_diffusers(sd, "", source), ""
    spec = spec or detect_model(sd, prefix, source)
    unet_sd = PrefixView(sd, prefix) if prefix else sd
    storage = storage or stored_fp8_dtype(unet_sd, (k for k in unet_sd if k.endswith(".weight")))
    held = storage if storage is not None and is_fp8(storage) else dtype
    unet = materialize(lambda: UNetModel(spec.unet), unet_sd, dtype=held, device=device, source=source, what="UNet")
    if held != dtype:
        cast_on_forward(unet, dtype, fp8_matmul=fp8_matmul)
    augmentor = None
    if spec.family == "sd2_unclip":
        # ComfyUI builds the augmentor from its model config (timestep_dim = half the ADM width) and loads only the
        # UNet's weights, so any noise_augmentor.data_mean/data_std in the file are ignored: mean 0, std 1.
        augmentor = NoiseAugmentor(spec.unet.adm_in_channels // 2)
    model = DiffusionModel(unet, spec, source=source, noise_augmentor=augmentor)
    if spec.ztsnr and spec.family == "sdxl" and spec.prediction == "v":
        # ComfyUI honours the `ztsnr` marker only on SDXL-type v-prediction files (its SDXL.model_type)
        model.model_sampling = DiscreteSampling("v", zsnr=True)
    log.info("loaded %s UNet (%s, %s weights, %s compute) from %s", spec.comfy_name, spec.prediction, held, dtype,
             source)
    return model


def build_vae(sd: StateDict, *, device: Any, dtype: torch.dtype, source: str, prefix: str | None = None) -> VAE:
    """The AutoencoderKL of `sd` (a checkpoint's first_stage_model.* or a standalone VAE file)."""
    prefix = find_vae_prefix(sd) if prefix is None else prefix
    if prefix is None:
        raise ModelLoadError(f"{source}: no VAE found (no 'first_stage_model.decoder.conv_in.weight' or "
                             "'decoder.conv_in.weight')")
    vae_sd = PrefixView(sd, prefix) if prefix else sd
    if is_diffusers_vae(vae_sd):
        vae_sd = vae_from_diffusers(vae_sd, "", source)
    cfg = detect_vae_config(vae_sd, "", source)
    module = materialize(lambda: AutoencoderKL(cfg), _without_loss_keys(vae_sd), dtype=dtype, device=device,
                         source=source, what="VAE")
    return VAE(module, device=device, dtype=dtype, source=source)


def _without_loss_keys(sd: StateDict) -> StateDict:
    """Training-only keys (`loss.*`, e.g. LPIPS/discriminator weights in some VAE files) are not part of the model."""
    if any(k.startswith("loss.") for k in sd):
        return PrefixView(sd, "", exclude=("loss.",))
    return sd


def build_clip(sd: StateDict, *, device: Any, dtype: torch.dtype, source: str,
               embedding_dirs: Iterable[str] = ()) -> Any | None:
    """The text encoder(s) of a whole checkpoint, via the text-encoder module; None when the file has none."""
    # dtype None: the text encoders keep ComfyUI's float16 weight storage (float32 compute) on every device
    return load_clip_from_state_dict(sd, device=device, dtype=None, embedding_dirs=tuple(embedding_dirs))


def open_model_file(path: str | Path) -> StateDict:
    """open_state_dict with errors that always name the file."""
    try:
        return open_state_dict(path)
    except ModelLoadError:
        raise
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read model file: {e}") from None


def load_checkpoint_file(
    path: str | Path, *, device: Any = None, dtype: torch.dtype | None = None, want_clip: bool = True,
    want_vae: bool = True, embedding_dirs: Iterable[str] = (),
) -> tuple[DiffusionModel, Any | None, VAE | None]:
    """(MODEL, CLIP or None, VAE or None) from one checkpoint file, uncached."""
    dev, dt = default_device_dtype(device, dtype)
    sd = open_model_file(path)
    try:
        source = str(path)
        model = build_diffusion_model(sd, device=dev, dtype=dt, source=source)
        clip = build_clip(sd, device=dev, dtype=dt, source=source, embedding_dirs=embedding_dirs) if want_clip else None
        vae = build_vae(sd, device=dev, dtype=dt, source=source) if want_vae and find_vae_prefix(sd) is not None else None
        return model, clip, vae
    finally:
        sd.close()
