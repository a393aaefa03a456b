"""Seed -> noise parity with ComfyUI (bit-identical), and the samplers' noise sources."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from comfy_core.sampling.noise import (
    BrownianTreeNoiseSampler, default_noise_sampler, inpaint_random_noise, prepare_noise,
)

DATA = Path(__file__).parent / "data"
ENTRIES = json.loads((DATA / "noise_ref.json").read_text())["entries"]


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(DATA / "noise_ref.safetensors")


@pytest.mark.parametrize("key", sorted(ENTRIES))
def test_prepare_noise_is_bit_identical(key: str, expected: dict[str, torch.Tensor]) -> None:
    entry = ENTRIES[key]
    out = prepare_noise(torch.zeros(entry["shape"]), entry["seed"], entry["batch_index"])
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.equal(out, expected[key])


def test_batch_index_gives_each_item_its_single_run_noise() -> None:
    single = [prepare_noise(torch.zeros(1, 4, 8, 8), 7, [i]) for i in range(4)]
    batch = prepare_noise(torch.zeros(3, 4, 8, 8), 7, [3, 0, 3])
    assert torch.equal(batch, torch.cat([single[3], single[0], single[3]]))
    assert torch.equal(single[0], prepare_noise(torch.zeros(1, 4, 8, 8), 7))


def test_prepare_noise_leaves_the_global_rng_alone() -> None:
    state = torch.get_rng_state()
    prepare_noise(torch.zeros(1, 4, 8, 8), 123)
    assert torch.equal(state, torch.get_rng_state())


def test_largest_seed_matches_torch_manual_seed() -> None:
    seed = 2**64 - 1
    expected = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(prepare_noise(torch.zeros(1, 4, 2, 2), seed), expected)


@pytest.mark.parametrize("bad", [[], [-1]])
def test_bad_batch_index_is_a_value_error(bad: list[int]) -> None:
    with pytest.raises(ValueError, match="batch_index"):
        prepare_noise(torch.zeros(1, 4, 2, 2), 0, bad)


def test_inpaint_random_noise_uses_seed_plus_one() -> None:
    assert torch.equal(inpaint_random_noise((1, 4, 8, 8), 41), prepare_noise(torch.zeros(1, 4, 8, 8), 42))
    assert torch.equal(inpaint_random_noise((1, 4, 8, 8), None), prepare_noise(torch.zeros(1, 4, 8, 8), 42))


def test_default_noise_sampler_stream() -> None:
    x = torch.zeros(2, 4, 8, 8)
    ns = default_noise_sampler(x, seed=42)
    gen = torch.Generator().manual_seed(42)
    for _ in range(3):  # one fresh draw per call, from a generator seeded once with the sampler seed
        assert torch.equal(ns(torch.tensor(1.0), torch.tensor(0.5)), torch.randn(2, 4, 8, 8, generator=gen))
    unseeded = default_noise_sampler(x)(torch.tensor(1.0), torch.tensor(0.5))
    assert unseeded.shape == x.shape


def test_brownian_tree_is_seeded_and_consistent() -> None:
    x = torch.zeros(1, 4, 16, 16)
    a = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=5)
    b = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=5)
    c = BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=6)
    s0, s1, s2 = torch.tensor(10.0), torch.tensor(4.0), torch.tensor(1.0)
    n01 = a(s0, s1)
    assert n01.shape == x.shape and torch.equal(n01, b(s0, s1)) and not torch.equal(n01, c(s0, s1))
    assert 0.8 < float(n01.std()) < 1.2  # normalised to unit variance
    # Same Brownian path: W(s0 -> s2) = W(s0 -> s1) + W(s1 -> s2), whatever the query order
    w = lambda p, q: a(p, q) * (p - q).abs().sqrt()  # noqa: E731
    assert torch.allclose(w(s0, s2), w(s0, s1) + w(s1, s2), atol=1e-4)
    assert torch.allclose(a(s1, s0), -a(s0, s1), atol=1e-5)  # reversed interval flips the sign


def test_brownian_tree_per_row_seeds() -> None:
    x = torch.zeros(2, 4, 4, 4)
    ns = BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=[1, 2])
    single = BrownianTreeNoiseSampler(x[:1], 0.1, 10.0, seed=1)
    out = ns(torch.tensor(5.0), torch.tensor(2.0))
    assert out.shape == x.shape
    assert torch.equal(out[0], single(torch.tensor(5.0), torch.tensor(2.0))[0])
    with pytest.raises(ValueError, match="one seed per batch row"):
        BrownianTreeNoiseSampler(x, 0.1, 10.0, seed=[1])
