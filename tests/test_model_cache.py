"""ModelCache: one load per (file, part, dtype, device), reload after a change on disk, LRU eviction by bytes,
thread safety, clones that never change cached objects, and (slow) the full-size SD1.5 checkpoint loaded once."""
from __future__ import annotations

import os
import threading

import fixtures_models as fm
import pytest
import torch

from comfy_core.errors import ModelLoadError
from comfy_core.models.cache import ModelCache


@pytest.fixture()
def ckpt(tmp_path):
    return fm.write_checkpoint(tmp_path / "tiny.safetensors", "sd1")


def test_same_checkpoint_twice_loads_once(ckpt):
    cache = ModelCache()
    m1, c1, v1 = cache.load_checkpoint(ckpt)
    m2, c2, v2 = cache.load_checkpoint(ckpt)
    assert cache.stats.loads == {"unet": 1, "clip": 1, "vae": 1}
    assert cache.stats.hits == 3
    assert m1 is not m2 and m1.unet is m2.unet  # clones sharing weights
    assert v1 is v2
    assert c1 is not None and c1 is not c2
    assert m1.spec.comfy_name == "SD15" and c1.family == "sd1"
    assert cache.bytes_used("cpu") > 0


def test_parts_are_cached_separately(ckpt):
    cache = ModelCache()
    cache.load_checkpoint(ckpt, want_clip=False, want_vae=False)
    assert cache.stats.loads == {"unet": 1}
    cache.load_unet(ckpt)
    assert cache.stats.loads == {"unet": 1}
    cache.load_checkpoint(ckpt)
    assert cache.stats.loads == {"unet": 1, "clip": 1, "vae": 1}


def test_dtype_is_part_of_the_key(ckpt):
    cache = ModelCache()
    a = cache.load_unet(ckpt, dtype=torch.float32)
    b = cache.load_unet(ckpt, dtype=torch.bfloat16)
    assert cache.stats.loads["unet"] == 2
    assert (a.dtype, b.dtype) == (torch.float32, torch.bfloat16)


def test_changed_file_is_reloaded_and_stale_entry_dropped(ckpt):
    cache = ModelCache()
    first = cache.load_unet(ckpt)
    fm.write_checkpoint(ckpt, "sd1", seed=3)
    st = os.stat(ckpt)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    second = cache.load_unet(ckpt)
    assert cache.stats.loads["unet"] == 2
    assert not torch.equal(first.unet.out[2].weight, second.unet.out[2].weight)
    assert len([k for k in cache.keys() if k[5] == "unet"]) == 1


def test_lru_eviction_by_bytes(tmp_path):
    paths = [fm.write_checkpoint(tmp_path / f"m{i}.safetensors", "sd1", seed=i, text=False, vae=False)
             for i in range(3)]
    probe = ModelCache()
    one = probe.load_unet(paths[0]).memory_bytes()
    cache = ModelCache(cpu_budget_bytes=int(one * 2.5))
    cache.load_unet(paths[0])
    cache.load_unet(paths[1])
    cache.load_unet(paths[0])  # touch: m1 is now least recently used
    cache.load_unet(paths[2])
    kept = {os.path.basename(k[0]) for k in cache.keys()}
    assert kept == {"m0.safetensors", "m2.safetensors"}
    assert cache.stats.evictions == 1 and cache.bytes_used("cpu") <= one * 2.5
    cache.load_unet(paths[1])
    assert cache.stats.loads["unet"] == 4


def test_free_and_unload(ckpt):
    cache = ModelCache()
    cache.load_checkpoint(ckpt)
    assert cache.unload(ckpt) == 3 and len(cache) == 0
    cache.load_checkpoint(ckpt)
    cache.free()
    assert len(cache) == 0 and cache.bytes_used() == 0


def test_concurrent_loads_of_one_file_load_once(ckpt):
    cache = ModelCache()
    results, errors = [], []

    def worker():
        try:
            results.append(cache.load_unet(ckpt))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    assert cache.stats.loads["unet"] == 1
    assert len({id(r.unet) for r in results}) == 1


def test_missing_file_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        ModelCache().load_checkpoint(tmp_path / "missing.safetensors")


def test_checkpoint_without_vae_or_text(tmp_path):
    path = fm.write_checkpoint(tmp_path / "bare.safetensors", "sd1", text=False, vae=False)
    model, clip, vae = ModelCache().load_checkpoint(path)
    assert model is not None and clip is None and vae is None


@pytest.mark.slow
def test_full_size_sd15_loaded_once():
    from fixtures_sd15 import random_sd15_checkpoint

    path = random_sd15_checkpoint()
    cache = ModelCache()
    m1, c1, v1 = cache.load_checkpoint(path)
    m2, c2, v2 = cache.load_checkpoint(path)
    assert cache.stats.loads == {"unet": 1, "clip": 1, "vae": 1}
    assert m1.unet is m2.unet and v1 is v2
    assert m1.spec.comfy_name == "SD15" and m1.dtype == torch.float32
    assert sum(p.numel() for p in m1.unet.parameters()) == 859_520_964
