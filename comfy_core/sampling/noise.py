"""Seed -> noise, bit-identical to ComfyUI.

* `prepare_noise`: the KSampler's initial noise. ComfyUI seeds torch's *global* CPU generator; we use a private
  `torch.Generator("cpu")` with the same seed, which yields the same mt19937 stream without touching global state
  (several engines may share a process).
* `default_noise_sampler`: the extra noise of ancestral samplers (a generator on x's device seeded with the sampler
  seed itself, one `randn` per call). On the CPU this stream therefore starts like the initial noise, as in ComfyUI
  v0.3.64 (later ComfyUI versions add 1 to the seed on the CPU; we follow the reference version).
* `BrownianTreeNoiseSampler`: torchsde Brownian tree (Kidger et al. 2021) for the SDE samplers, so that the noise
  is a function of (sigma, sigma_next) and not of the step count.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_SEED_MOD = 2**64


def cpu_generator(seed: int) -> torch.Generator:
    """A fresh CPU generator seeded like `torch.manual_seed(seed)` (any int; taken modulo 2**64 as torch does)."""
    return torch.Generator("cpu").manual_seed(int(seed) % _SEED_MOD)


def prepare_noise(latent: torch.Tensor, seed: int, batch_index: Sequence[int] | None = None) -> torch.Tensor:
    """Initial noise for `latent` [B, C, H, W], drawn on the CPU in `latent`'s dtype.

    With `batch_index`, draw one [1, C, H, W] sample per index 0..max(batch_index) in order and keep the listed ones,
    so batch item k gets the noise index k would get in a single-image run.
    """
    gen = cpu_generator(seed)
    if batch_index is None:
        return torch.randn(latent.shape, dtype=latent.dtype, layout=latent.layout, generator=gen, device="cpu")
    indices = [int(i) for i in batch_index]
    if not indices:
        raise ValueError("batch_index must not be empty")
    if min(indices) < 0:
        raise ValueError(f"batch_index values must be >= 0, got {indices}")
    wanted = set(indices)
    drawn: dict[int, torch.Tensor] = {}
    one = [1, *latent.shape[1:]]
    for i in range(max(indices) + 1):
        sample = torch.randn(one, dtype=latent.dtype, layout=latent.layout, generator=gen, device="cpu")
        if i in wanted:
            drawn[i] = sample
    return torch.cat([drawn[i] for i in indices], dim=0)


def inpaint_random_noise(shape: Sequence[int], seed: int | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The separate noise ComfyUI's `ddim` sampler uses to re-noise the kept region when inpainting (seed + 1)."""
    gen = cpu_generator((41 if seed is None else seed) + 1)
    return torch.randn(list(shape), generator=gen, device="cpu").to(dtype)


def default_noise_sampler(x: torch.Tensor, seed: int | None = None) -> NoiseSampler:
    """Noise for ancestral steps: a generator on x's device seeded with `seed`, one `randn_like(x)` per call."""
    generator = None
    if seed is not None:
        generator = torch.Generator(device=x.device).manual_seed(int(seed) % _SEED_MOD)

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)

    return sample


class BrownianTreeNoiseSampler:
    """Unit-variance increments (W(sigma_next) - W(sigma)) / sqrt(|Δsigma|) of one Brownian motion on
    [sigma_min, sigma_max].

    `seed` may be a list of one seed per batch row (one tree each); `cpu=True` keeps the tree on the CPU (the
    bit-reproducible choice ComfyUI's non-`_gpu` SDE samplers make).
    """

    def __init__(self, x: torch.Tensor, sigma_min: torch.Tensor | float, sigma_max: torch.Tensor | float,
                 seed: int | Sequence[int] | None = None, cpu: bool = True,
                 transform: Callable[[torch.Tensor], torch.Tensor] = lambda s: s):
        import torchsde  # deferred: only SDE samplers need it

        self.transform = transform
        self.cpu = cpu
        self.device = x.device  # increments come back on x's device even when sigmas live on the host
        t0, t1 = transform(torch.as_tensor(sigma_min)), transform(torch.as_tensor(sigma_max))
        t0, t1, self.sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        w0 = torch.zeros_like(x)
        self.batched = isinstance(seed, (list, tuple))
        if seed is None:
            seeds: Sequence[int] = (int(torch.randint(0, 2**63 - 1, ()).item()),)
        elif self.batched:
            if len(seed) != x.shape[0]:
                raise ValueError("a list of Brownian-tree seeds needs one seed per batch row")
            seeds, w0 = seed, w0[0]
        else:
            seeds = (seed,)
        if cpu:
            t0, w0, t1 = t0.detach().cpu(), w0.detach().cpu(), t1.detach().cpu()
        else:
            t0, t1 = t0.to(self.device), t1.to(self.device)
        self.trees = tuple(torchsde.BrownianTree(t0, w0, t1, entropy=s) for s in seeds)

    def _increment(self, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        t0, t1, sign = (t0, t1, 1) if t0 < t1 else (t1, t0, -1)
        dtype = t0.dtype
        if self.cpu:
            t0, t1 = t0.detach().cpu().float(), t1.detach().cpu().float()
        else:
            t0, t1 = t0.to(self.device), t1.to(self.device)
        w = torch.stack([tree(t0, t1) for tree in self.trees]).to(device=self.device, dtype=dtype) * (self.sign * sign)
        return w if self.batched else w[0]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = self.transform(torch.as_tensor(sigma)), self.transform(torch.as_tensor(sigma_next))
        return self._increment(t0, t1) / (t1 - t0).abs().sqrt()


def brownian_noise_sampler(x: torch.Tensor, sigmas: torch.Tensor, seed: int | None,
                           cpu: bool = True) -> BrownianTreeNoiseSampler:
    """The Brownian tree of an SDE sampler run: it spans [smallest positive sigma, largest sigma] of the schedule,
    as ComfyUI's SDE samplers build it."""
    return BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed, cpu=cpu)
