"""Alternative noise schedules and output parameterisations a MODEL can be switched to (ComfyUI's ModelSampling* nodes).

Every class here has `ModelSampling`'s interface (sigmas, sigma_min/max, timestep, sigma, percent_to_sigma,
calculate_input, calculate_denoised, noise_scaling, inverse_noise_scaling), so schedulers, samplers and
`DiffusionModel.apply_model` use an override without knowing it.

Parameterisations (x: sampler state in VE space, F: UNet output, s: sigma, sd: sigma_data):
    eps          D = x - s·F                                   (Ho et al. 2020)
    v            D = x·sd²/(s²+sd²) - F·s·sd/sqrt(s²+sd²)        (Salimans & Ho 2022)
    edm          D = x·sd²/(s²+sd²) + F·s·sd/sqrt(s²+sd²)        (Karras et al. 2022, sign of v flipped)
    x0           D = F
    img_to_img   D = F, and the UNet sees x unscaled
    lcm          D = c_out(t)·(x - s·F) + c_skip(t)·x, t the distilled timestep (Luo et al. 2023, boundary condition)
    cosmos_rflow rectified flow in t = s/(s+1): input x·(1-t), D = x·(1-t) - F·t
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .model_sampling import (
    SDXL_LATENT,
    LatentFormat,
    ModelSampling,
    _sigma_view,
    scaled_linear_betas,
)

DISCRETE_PREDICTIONS = ("eps", "v", "lcm", "x0", "img_to_img")
CONTINUOUS_PREDICTIONS = ("eps", "v", "edm", "cosmos_rflow")
ZSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08  # ComfyUI's stand-in for alphā_T = 0 (keeps sigma_max finite, ~4519)


def rescale_zero_terminal_snr_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024 ("Common diffusion noise schedules and sample steps are flawed"), Algorithm 1: shift and scale
    sqrt(alphā) so the last timestep has zero SNR while the first keeps its value; computed in sigmas' dtype."""
    root = (1.0 / (sigmas * sigmas + 1.0)).sqrt()  # sqrt(alphā_t)
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alpha_bar[-1] = ZSNR_LAST_ALPHA_BAR
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


def _parameterised_denoised(prediction: str, sigma: torch.Tensor, out: torch.Tensor, x: torch.Tensor,
                            sigma_data: float) -> torch.Tensor:
    """Model output -> denoised x0 for the eps / v / edm / x0 parameterisations (see the module docstring)."""
    if prediction in ("x0", "img_to_img"):
        return out
    sigma = _sigma_view(sigma, out.ndim)
    if prediction == "eps":
        return x - out * sigma
    sd2 = sigma_data**2
    skip = x * sd2 / (sigma**2 + sd2)
    scaled = out * sigma * sigma_data / (sigma**2 + sd2) ** 0.5
    return skip + scaled if prediction == "edm" else skip - scaled


class DiscreteSampling(ModelSampling):
    """The scaled-linear 1000-step schedule with any discrete parameterisation, optionally rescaled to zero terminal
    SNR (`zsnr`, computed in float64 before the float32 tables as ComfyUI does)."""

    def __init__(self, prediction: str = "eps", *, zsnr: bool = False, linear_start: float = 0.00085,
                 linear_end: float = 0.012, timesteps: int = 1000):
        if prediction not in DISCRETE_PREDICTIONS:
            raise ValueError(f"prediction must be one of {DISCRETE_PREDICTIONS}, got {prediction!r}")
        super().__init__("v" if prediction == "v" else "eps", linear_start=linear_start, linear_end=linear_end,
                         timesteps=timesteps)
        self.prediction = prediction  # type: ignore[assignment]
        self.zsnr = bool(zsnr)
        if zsnr:
            alphas_cumprod = torch.cumprod(1.0 - scaled_linear_betas(timesteps, linear_start, linear_end), dim=0)
            self.set_sigmas(rescale_zero_terminal_snr_sigmas(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5))

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.sigmas = sigmas.float()
        self.log_sigmas = sigmas.log().float()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prediction={self.prediction!r}, zsnr={self.zsnr})"

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.prediction == "img_to_img":
            return x
        return super().calculate_input(sigma, x)

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        return _parameterised_denoised(self.prediction, sigma, model_output, model_input, self.sigma_data)


class DistilledSampling(DiscreteSampling):
    """LCM: the 50 timesteps a consistency model was distilled on (every 20th, ending at 999), with the LCM boundary
    condition c_skip = sd²/((10t)²+sd²), c_out = 10t/sqrt((10t)²+sd²), sd = 0.5 (Luo et al. 2023)."""

    original_timesteps = 50

    def __init__(self, *, zsnr: bool = False, **kwargs):
        super().__init__("lcm", zsnr=zsnr, **kwargs)
        self.skip_steps = self.num_timesteps // self.original_timesteps
        picks = [self.num_timesteps - 1 - i * self.skip_steps for i in range(self.original_timesteps)][::-1]
        self.set_sigmas(self.sigmas[picks])

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        index = super().timestep(sigma)  # nearest of the 50 sigmas
        return index * self.skip_steps + (self.skip_steps - 1)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        timestep = torch.as_tensor(timestep)
        return super().sigma((timestep.float() - (self.skip_steps - 1)) / self.skip_steps).to(timestep.device)

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma).reshape(-1)
        t = _sigma_view(self.timestep(sigma), model_output.ndim).to(model_output.device) * 10.0  # timestep_scaling
        x0 = model_input - model_output * _sigma_view(sigma, model_output.ndim)
        sd2 = 0.5**2
        c_skip = sd2 / (t**2 + sd2)
        c_out = t / (t**2 + sd2) ** 0.5
        return c_out * x0 + c_skip * model_input


class ContinuousEDMSampling(ModelSampling):
    """A continuous log-uniform sigma range (EDM, Karras et al. 2022): timestep = log(sigma)/4; the 1000-entry
    `sigmas` table exists only for the schedulers that read one."""

    def __init__(self, prediction: str = "eps", sigma_min: float = 0.002, sigma_max: float = 120.0,
                 sigma_data: float = 1.0):
        if prediction not in CONTINUOUS_PREDICTIONS:
            raise ValueError(f"prediction must be one of {CONTINUOUS_PREDICTIONS}, got {prediction!r}")
        if not (sigma_min > 0 and sigma_max > 0):
            raise ValueError(f"sigma_min and sigma_max must be > 0 (log-spaced), got {sigma_min} and {sigma_max}")
        self.prediction = prediction  # type: ignore[assignment]
        self.sigma_data = sigma_data
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.log_sigmas = self.sigmas.log()
        self.num_timesteps = 1000

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(prediction={self.prediction!r}, sigma_min={float(self.sigma_min):g}, "
                f"sigma_max={float(self.sigma_max):g}, sigma_data={self.sigma_data})")

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return 0.25 * torch.as_tensor(sigma).log()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(timestep) / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        log_min = math.log(self.sigma_min)
        return math.exp((math.log(self.sigma_max) - log_min) * (1.0 - percent) + log_min)

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        return _parameterised_denoised(self.prediction, sigma, model_output, model_input, self.sigma_data)


class ContinuousVSampling(ContinuousEDMSampling):
    """Continuous v-prediction with the timestep as an angle: t = atan(sigma)·2/pi in [0, 1)."""

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(sigma).atan() / math.pi * 2

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        return (torch.as_tensor(timestep) * math.pi / 2).tan()


class CosmosRFlowSampling(ContinuousEDMSampling):
    """Cosmos' rectified flow seen in VE sigmas: t = sigma/(sigma+1); the start noise is never sqrt(1+s²)-scaled."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 120.0, sigma_data: float = 1.0):
        super().__init__("cosmos_rflow", sigma_min, sigma_max, sigma_data)

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        return sigma / (sigma + 1)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        timestep = torch.as_tensor(timestep)
        sigma_max = self.sigma_max
        if timestep >= sigma_max / (sigma_max + 1):
            return sigma_max
        return timestep / (1 - timestep)

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = _sigma_view(torch.as_tensor(sigma) / (torch.as_tensor(sigma) + 1), x.ndim)
        return x * (1.0 - t)

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        t = _sigma_view(torch.as_tensor(sigma) / (torch.as_tensor(sigma) + 1), model_output.ndim)
        return model_input * (1.0 - t) - model_output * t

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        return noise * _sigma_view(sigma, noise.ndim) + latent


@dataclass(frozen=True)
class NormalizedLatentFormat(LatentFormat):
    """A latent space normalised per channel before scaling: in = (z - mean)·scale/std (Playground v2.5)."""

    latents_mean: tuple[float, ...] = ()
    latents_std: tuple[float, ...] = ()

    def _stats(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (latent.ndim - 2)  # [1, C, 1, 1]
        mean = torch.tensor(self.latents_mean, dtype=latent.dtype, device=latent.device).view(shape)
        std = torch.tensor(self.latents_std, dtype=latent.dtype, device=latent.device).view(shape)
        return mean, std

    def process_in(self, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latent)
        return (latent - mean) * self.scale_factor / std

    def process_out(self, latent: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latent)
        return latent * std / self.scale_factor + mean


PLAYGROUND_V25_LATENT = NormalizedLatentFormat(
    name="SDXL_Playground_2_5",
    scale_factor=0.5,
    latent_rgb_factors=(
        (0.3920, 0.4054, 0.4549),
        (-0.2634, -0.0196, 0.0653),
        (0.0568, 0.1687, -0.0755),
        (-0.3112, -0.2359, -0.2076),
    ),
    taesd_decoder_name=SDXL_LATENT.taesd_decoder_name,
    latents_mean=(-1.6574, 1.886, -1.383, 2.5155),
    latents_std=(8.4927, 5.9022, 6.5498, 5.2299),
)
