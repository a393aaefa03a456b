"""Discrete-time noise schedules (sigma <-> timestep) and latent formats of SD1.x / SD2.x / SDXL.

Numbers and conventions follow ComfyUI's `ModelSamplingDiscrete` (EPS and V-prediction) so that sigmas, timesteps and
the initial noise scaling are identical float32 values:

    betas   = linspace(sqrt(0.00085), sqrt(0.012), 1000, float64) ** 2      "scaled linear" (LDM)
    sigma_t = sqrt((1 - alphā_t) / alphā_t),  alphā_t = prod_{s<=t} (1 - beta_s)   (Karras et al. 2022, eq. VP->VE)

A sampler works in k-diffusion's VE space, x = x0 + sigma * eps; the UNet sees `calculate_input` (x / sqrt(sigma²+1))
and the timestep `timestep(sigma)`; its output turns into a denoised x0 through `calculate_denoised`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

Prediction = Literal["eps", "v"]


def _sigma_view(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """Per-row sigma [B] -> [B, 1, ..., 1] to broadcast over [B, C, H, W]; a single sigma stays a scalar."""
    sigma = torch.as_tensor(sigma)
    if sigma.numel() == 1:
        return sigma.reshape(())
    return sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))


def scaled_linear_betas(timesteps: int, linear_start: float, linear_end: float) -> torch.Tensor:
    """LDM's "linear" schedule (really linear in sqrt(beta)), computed in float64 like the original."""
    return torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2


class ModelSampling:
    """Discrete VP schedule seen as a VE sigma ladder, with eps- or v-prediction parameterisation.

    `sigmas`/`log_sigmas` are float32 [timesteps] ascending (index t = timestep t). The object is small and immutable
    in practice; `to(device)` returns a copy whose tables live on `device`.
    """

    sigma_data = 1.0

    def __init__(
        self,
        prediction: Prediction = "eps",
        *,
        linear_start: float = 0.00085,
        linear_end: float = 0.012,
        timesteps: int = 1000,
    ):
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        self.prediction: Prediction = prediction
        self.linear_start, self.linear_end = linear_start, linear_end
        betas = scaled_linear_betas(timesteps, linear_start, linear_end)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5  # float64 [T]
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()
        self.num_timesteps = int(timesteps)

    def to(self, device: torch.device | str) -> "ModelSampling":
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)
        other.sigmas, other.log_sigmas = self.sigmas.to(device), self.log_sigmas.to(device)
        return other

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(prediction={self.prediction!r}, linear_start={self.linear_start}, "
                f"linear_end={self.linear_end}, timesteps={self.num_timesteps})")

    # -- schedule ---------------------------------------------------------------------------------------------------
    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Nearest discrete timestep in log-sigma (an int64 tensor shaped like `sigma`)."""
        sigma = torch.as_tensor(sigma)
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]  # [T, N]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep, interpolating linearly in log-sigma between the two neighbours."""
        timestep = torch.as_tensor(timestep)
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        """Sampling progress (0 = start, 1 = end) -> sigma; used for timestep ranges of conds and ControlNets."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()

    def max_denoise(self, sigmas: torch.Tensor) -> bool:
        """True when sampling starts from (or above) the top of the schedule: noise then gets sqrt(1 + sigma²)."""
        max_sigma, sigma = float(self.sigma_max), float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma

    # -- parameterisation ---------------------------------------------------------------------------------------------
    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """c_in: the UNet sees x / sqrt(sigma² + sigma_data²)."""
        sigma = _sigma_view(sigma, x.ndim)
        return x / (sigma**2 + self.sigma_data**2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        """Model output -> denoised x0. eps: x - sigma·eps; v: c_skip·x - c_out·v (Salimans & Ho 2022)."""
        sigma = _sigma_view(sigma, model_output.ndim)
        if self.prediction == "eps":
            return model_input - model_output * sigma
        sd2 = self.sigma_data**2
        return (model_input * sd2 / (sigma**2 + sd2)
                - model_output * sigma * self.sigma_data / (sigma**2 + sd2) ** 0.5)

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        """Initial sampler input: latent + sigma·noise (sqrt(1 + sigma²)·noise when starting from pure noise)."""
        sigma = _sigma_view(sigma, noise.ndim)
        if max_denoise:
            noise = noise * torch.sqrt(1.0 + sigma**2.0)
        else:
            noise = noise * sigma
        return noise + latent

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """Identity for VE-space discrete models (kept for the KSampler's symmetry with other model families)."""
        return latent


class ModelSamplingV(ModelSampling):
    """v-prediction (SD2.x 768-v): same schedule, different output parameterisation."""

    def __init__(self, **kwargs):
        super().__init__("v", **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Latent formats
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatentFormat:
    """How VAE latents are scaled into the diffusion model's space, plus a cheap latent -> RGB preview projection."""

    name: str
    scale_factor: float
    latent_channels: int = 4
    latent_rgb_factors: tuple[tuple[float, float, float], ...] = ()
    latent_rgb_factors_bias: tuple[float, float, float] | None = None
    taesd_decoder_name: str | None = field(default=None)

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        return latent * self.scale_factor

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        return latent / self.scale_factor

    def preview_rgb(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] latent -> [B, H, W, 3] rough RGB in 0..1 (a linear projection, like ComfyUI's previews)."""
        factors = torch.tensor(self.latent_rgb_factors, dtype=latent.dtype, device=latent.device)  # [C, 3]
        rgb = torch.einsum("bchw,cr->bhwr", latent, factors)
        if self.latent_rgb_factors_bias is not None:
            rgb = rgb + torch.tensor(self.latent_rgb_factors_bias, dtype=latent.dtype, device=latent.device)
        return ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)


SD15_LATENT = LatentFormat(
    name="SD15",
    scale_factor=0.18215,
    latent_rgb_factors=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
    taesd_decoder_name="taesd_decoder",
)
SD2_LATENT = SD15_LATENT  # SD2.x shares SD1.x's VAE and scale
SDXL_LATENT = LatentFormat(
    name="SDXL",
    scale_factor=0.13025,
    latent_rgb_factors=(
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    latent_rgb_factors_bias=(0.1084, -0.0175, -0.0011),
    taesd_decoder_name="taesdxl_decoder",
)
