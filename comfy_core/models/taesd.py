"""TAESD, the Tiny AutoEncoder for Stable Diffusion (madebyollin): fast latent previews and the "taesd" VAEs.

The networks are plain `nn.Sequential` stacks so parameter names equal the keys of the released
`taesd_decoder.pth` / `taesdxl_encoder.safetensors` ... files (`1.weight`, `3.conv.0.weight`, ...). Each half is a
separate file; the decoder reads latents in the diffusion model's (scaled) space and returns pixels in 0..1, the
encoder the reverse. As in ComfyUI, the VAE-socket object multiplies unscaled latents by the family's `vae_scale`
(after subtracting `vae_shift`) before decoding, so VAEDecode with "taesd" behaves like a real VAE.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from .state_dict import open_state_dict
from .vae import VAE, VAEConfig

WIDTH = 64  # channels of every hidden layer in the released files
BLOCKS_PER_STAGE = 3
# VAELoader name -> (vae_scale, vae_shift): the family's latent scale and shift (ComfyUI's load_taesd)
TAESD_VAES: dict[str, tuple[float, float]] = {
    "taesd": (0.18215, 0.0),
    "taesdxl": (0.13025, 0.0),
    "taesd3": (1.5305, 0.0609),
    "taef1": (0.3611, 0.1159),
}


def conv(n_in: int, n_out: int, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, stride=stride, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of decoder inputs to about ±3 (tanh keeps it smooth)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Residual conv block: three 3x3 convs (ReLU between), plus a skip, then a final ReLU."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def build_encoder(latent_channels: int = 4, width: int = WIDTH) -> nn.Sequential:
    """[B,3,H,W] in 0..1 -> [B,C,H/8,W/8]: stem, then three (stride-2 conv + 3 blocks) stages, then a projection."""
    layers: list[nn.Module] = [conv(3, width), Block(width, width)]
    for _ in range(3):
        layers += [conv(width, width, stride=2, bias=False)] + [Block(width, width) for _ in range(BLOCKS_PER_STAGE)]
    return nn.Sequential(*layers, conv(width, latent_channels))


def build_decoder(latent_channels: int = 4, width: int = WIDTH) -> nn.Sequential:
    """[B,C,h,w] -> [B,3,8h,8w] in about 0..1: clamp, stem, three (3 blocks + nearest ×2 + conv) stages, head."""
    layers: list[nn.Module] = [Clamp(), conv(latent_channels, width), nn.ReLU()]
    for _ in range(3):
        layers += [Block(width, width) for _ in range(BLOCKS_PER_STAGE)]
        layers += [nn.Upsample(scale_factor=2), conv(width, width, bias=False)]
    return nn.Sequential(*layers, Block(width, width), conv(width, 3))


class TAESD(nn.Module):
    """Either or both halves, with the latent scale/shift ComfyUI applies; encode/decode speak VAE conventions
    (pixels in -1..1, latents unscaled) so the module can sit inside a `VAE` object."""

    def __init__(self, encoder: nn.Sequential | None, decoder: nn.Sequential | None, latent_channels: int,
                 vae_scale: float = 1.0, vae_shift: float = 0.0, width: int = WIDTH):
        super().__init__()
        self.taesd_encoder, self.taesd_decoder = encoder, decoder
        self.vae_scale, self.vae_shift = float(vae_scale), float(vae_shift)
        # downscale 8 (the default ch_mult) and the latent channels: all that `VAE` reads from a config
        self.config = VAEConfig(ch=width, z_channels=latent_channels, embed_dim=latent_channels)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent [B,C,h,w] -> pixels [B,3,8h,8w] in about -1..1."""
        if self.taesd_decoder is None:
            raise ModelLoadError("this TAESD has no decoder file")
        return self.taesd_decoder((z - self.vae_shift) * self.vae_scale) * 2.0 - 1.0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels [B,3,H,W] in -1..1 -> unscaled latent [B,C,H/8,W/8]."""
        if self.taesd_encoder is None:
            raise ModelLoadError("this TAESD has no encoder file")
        return self.taesd_encoder(x * 0.5 + 0.5) / self.vae_scale + self.vae_shift


# --- loading ----------------------------------------------------------------------------------------------------------


def _read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    sd = open_state_dict(path)
    try:
        tensors = {k: sd[k] for k in sd}
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or corrupt tensor data
        raise ModelLoadError(f"{path}: cannot read TAESD weights: {e}") from None
    finally:
        sd.close()
    for prefix in ("taesd_decoder.", "taesd_encoder.", "decoder.", "encoder."):
        if tensors and all(k.startswith(prefix) for k in tensors):
            return {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _load_half(path: str | Path, build: Callable[[int, int], nn.Sequential], probe: str,
               probe_dims: tuple[int, int], kind: str) -> tuple[nn.Sequential, int, int]:
    """Build one half sized from the file (probe key's dims give width and latent channels) and load it strictly."""
    tensors = _read_tensors(path)
    weight = tensors.get(probe)
    if weight is None or weight.ndim != 4:
        raise ModelLoadError(f"{path}: not a TAESD {kind} (no {probe!r} conv weight)")
    width, latent_channels = int(weight.shape[probe_dims[0]]), int(weight.shape[probe_dims[1]])
    module = build(latent_channels, width)
    expected = module.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    bad = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or bad:
        raise ModelLoadError(f"{path}: not a TAESD {kind} layout (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}, wrong shapes {bad[:3]})")
    module.load_state_dict({k: tensors[k].float() for k in expected})
    return module.eval().requires_grad_(False), latent_channels, width


def load_decoder(path: str | Path) -> tuple[nn.Sequential, int, int]:
    """(decoder, latent channels, width) of a `*_decoder` file; its `1.weight` is the [width, C, 3, 3] stem."""
    return _load_half(path, build_decoder, "1.weight", (0, 1), "decoder")


def load_encoder(path: str | Path) -> tuple[nn.Sequential, int, int]:
    """(encoder, latent channels, width) of an `*_encoder` file; its last conv `14.weight` is [C, width, 3, 3]."""
    return _load_half(path, build_encoder, "14.weight", (1, 0), "encoder")


def load_taesd(encoder_path: str | Path | None, decoder_path: str | Path | None, *, vae_scale: float = 1.0,
               vae_shift: float = 0.0) -> TAESD:
    encoder = load_encoder(encoder_path) if encoder_path is not None else None
    decoder = load_decoder(decoder_path) if decoder_path is not None else None
    sizes = {half[1:] for half in (encoder, decoder) if half is not None}  # {(latent channels, width)}
    if not sizes:
        raise ModelLoadError("TAESD needs an encoder or a decoder file")
    if len(sizes) > 1:
        raise ModelLoadError(f"TAESD encoder and decoder do not match ({encoder_path}, {decoder_path})")
    ((channels, width),) = sizes
    return TAESD(encoder[0] if encoder else None, decoder[0] if decoder else None, channels, vae_scale, vae_shift,
                 width)


def taesd_vae(name: str, encoder_path: str | Path, decoder_path: str | Path, *, device: torch.device,
              dtype: torch.dtype) -> VAE:
    """VAELoader's "taesd"/"taesdxl"/...: both halves as a VAE object (pixels 0..1 <-> unscaled latents)."""
    if name not in TAESD_VAES:
        raise ModelLoadError(f"unknown TAESD VAE {name!r}")
    scale, shift = TAESD_VAES[name]
    model = load_taesd(encoder_path, decoder_path, vae_scale=scale, vae_shift=shift).to(device, dtype)
    return VAE(model, device=device, dtype=dtype, source=name)  # type: ignore[arg-type]


def decode_preview(decoder: nn.Module, x0: torch.Tensor) -> torch.Tensor:
    """Model-space latent x0 [B,C,h,w] -> the first image as [8h, 8w, 3] in 0..1 (float32, CPU)."""
    param = next(decoder.parameters())
    with torch.no_grad():
        pixels = decoder(x0[:1].to(param.device, param.dtype))[0]  # [3, 8h, 8w] in about 0..1
    return pixels.float().clamp(0.0, 1.0).movedim(0, -1).cpu()
