"""SafetensorsFile.get_as: a cast read (through a mapping of the tensor's own bytes) gives exactly torch's cast of
the stored tensor, for every float dtype, odd offsets, empty and 0-d tensors; a file cut short after opening is a
ModelLoadError, never a crash."""
import pytest
import torch
from safetensors.torch import save_file

from comfy_core.errors import ModelLoadError
from comfy_core.models.state_dict import SafetensorsFile


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a.f16": torch.randn(3, 5, generator=g).half(),  # 30 bytes: later offsets are not 4-byte aligned
        "b.bf16": torch.randn(7, generator=g).bfloat16(),
        "c.f32": torch.randn(4, 4, generator=g),
        "d.empty": torch.zeros(0, 3, dtype=torch.float16),
        "e.scalar": torch.tensor(1.5, dtype=torch.float16),
        "f.big": torch.randn(70_000, generator=g).half(),  # spans several pages
        "g.int": torch.arange(6, dtype=torch.int64),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cast_reads_equal_torch_casts(tmp_path, tensors, dtype):
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    with SafetensorsFile(path) as sd:
        for key, ref in tensors.items():
            got = sd.get_as(key, dtype)
            want = ref.to(dtype) if ref.is_floating_point() else ref
            assert got.dtype == want.dtype and got.shape == want.shape, key
            assert torch.equal(got, want), key


def test_file_cut_short_after_opening(tmp_path, tensors):
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    with SafetensorsFile(path) as sd:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size - 1000)
        with pytest.raises(ModelLoadError, match="truncated"):
            sd.get_as("f.big", torch.float32)
