"""HED annotator: network layout, loading from the annotators folder, and the pack's pipeline against OpenCV refs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from comfy_core.config import EngineConfig
from comfy_core.errors import ModelLoadError
from comfy_core.folders import ModelFolders
from comfy_core.models.hed import HEDNetwork, find_hed_file, hed_detect, hed_edges, load_hed
from fixtures_guidance import guidance_test_image, hed_shapes, tiny_hed

REFS = Path(__file__).parent / "data" / "guidance_refs.safetensors"


@pytest.fixture(scope="module")
def refs() -> dict[str, torch.Tensor]:
    return load_file(str(REFS))


@pytest.fixture(scope="module")
def net() -> HEDNetwork:
    return HEDNetwork.from_state_dict(tiny_hed())


def test_real_layout_builds_with_real_sizes():
    shapes = hed_shapes((64, 128, 256, 512, 512))
    assert len(shapes) == 37  # the real ControlNetHED.pth has 37 tensors
    with torch.device("meta"):
        net = HEDNetwork()
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == shapes
    assert sum(v.numel() for v in net.state_dict().values()) == 14716168


def test_side_outputs_shapes(net):
    sides = net(torch.rand(1, 3, 64, 128) * 255)
    assert [tuple(s.shape) for s in sides] == [(1, 1, 64 // 2**k, 128 // 2**k) for k in range(5)]


def test_edges_range_and_safe_levels(net):
    img = guidance_test_image()
    soft = hed_edges(net, np.pad(img, [[0, 38], [0, 8], [0, 0]], mode="edge"))
    assert soft.dtype == np.uint8 and soft.shape == (128, 128)
    assert len(np.unique(soft)) > 10  # a grey ramp
    safe = hed_edges(net, np.pad(img, [[0, 38], [0, 8], [0, 0]], mode="edge"), safe=True)
    assert set(np.unique(safe)) <= {0, 127, 255}


@pytest.mark.parametrize("res,safe,scribble", [(128, False, False), (128, True, False), (192, False, True),
                                               (64, True, True)])
def test_detect_matches_opencv_pipeline(net, refs, res, safe, scribble):
    out = hed_detect(net, guidance_test_image(), res, safe, scribble)
    ref = refs[f"hed/{res}_{int(safe)}_{int(scribble)}"].numpy()
    assert out.shape == (*ref.shape, 3)  # detection size, 3 identical channels
    assert out.shape[0] == res  # the short side is the resolution
    assert (out[..., 0] == out[..., 2]).all()
    diff = out[..., 0].astype(int) - ref
    # OpenCV accumulates the float blur of the scribble NMS in another order: ties may flip a few pixels
    assert (diff != 0).mean() <= (0.001 if scribble else 0.0)
    if scribble:
        assert set(np.unique(out)) <= {0, 255}


def test_load_from_annotators_folder(tmp_path):
    folder = tmp_path / "models" / "annotators"
    folder.mkdir(parents=True)
    torch.save({k: v.half() for k, v in tiny_hed().items()}, folder / "ControlNetHED.pth")
    folders = ModelFolders(tmp_path / "models")
    path = find_hed_file(folders)
    assert path == folder / "ControlNetHED.pth"
    net = load_hed(path)
    assert net.block5.projection.weight.dtype == torch.float32
    assert torch.allclose(net.norm.view(3), torch.tensor([104.0, 117.0, 123.0]))


def test_configured_annotators_dir_and_pack_subfolder(tmp_path):
    cfg = EngineConfig(models_dir=str(tmp_path / "m"), annotators_dir=str(tmp_path / "ann"))
    nested = tmp_path / "ann" / "lllyasviel" / "Annotators"
    nested.mkdir(parents=True)
    torch.save(tiny_hed(), nested / "ControlNetHED.pth")
    folders = ModelFolders(cfg.models_dir, annotators_dir=cfg.annotators_dir)
    assert find_hed_file(folders) == nested / "ControlNetHED.pth"


def test_missing_file_names_file_and_folder(tmp_path):
    folders = ModelFolders(tmp_path / "models")
    with pytest.raises(ModelLoadError) as e:
        find_hed_file(folders)
    assert "ControlNetHED.pth" in str(e.value) and str(tmp_path / "models" / "annotators") in str(e.value)


def test_wrong_weights_are_refused(tmp_path):
    sd = tiny_hed()
    del sd["block3.convs.2.bias"]
    torch.save(sd, tmp_path / "ControlNetHED.pth")
    with pytest.raises(ModelLoadError, match="block3.convs.2.bias"):
        load_hed(tmp_path / "ControlNetHED.pth")


@pytest.mark.cuda
def test_hed_on_cuda_matches_cpu(net):
    gpu = HEDNetwork.from_state_dict(tiny_hed()).to("cuda")
    img = guidance_test_image()
    a, b = hed_detect(net, img, 128), hed_detect(gpu, img, 128)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_seed_workflow_preview_branches_run_in_an_engine(tmp_path):
    """Nodes 34 -> 44 (HEDPreprocessor, safe only) -> 45 and 34 -> 47 (ScribblePreprocessor) -> 48 of the seed
    workflow, plus its dangling node 43 (a HEDPreprocessor without an image, which must be ignored)."""
    from PIL import Image

    from comfy_core import Engine
    cfg = EngineConfig(models_dir=str(tmp_path / "m"), input_dir=str(tmp_path / "i"), output_dir=str(tmp_path / "o"),
                       temp_dir=str(tmp_path / "t"))
    (tmp_path / "m" / "annotators").mkdir(parents=True)
    torch.save(tiny_hed(), tmp_path / "m" / "annotators" / "ControlNetHED.pth")
    (tmp_path / "i").mkdir()
    Image.fromarray(guidance_test_image()).save(tmp_path / "i" / "pic.png")
    prompt = {
        "34": {"class_type": "LoadImage", "inputs": {"image": "pic.png"}},
        "43": {"class_type": "HEDPreprocessor", "inputs": {"safe": "enable"}},
        "44": {"class_type": "HEDPreprocessor", "inputs": {"safe": "enable", "image": ["34", 0]}},
        "45": {"class_type": "PreviewImage", "inputs": {"images": ["44", 0]}},
        "47": {"class_type": "ScribblePreprocessor", "inputs": {"image": ["34", 0]}},
        "48": {"class_type": "PreviewImage", "inputs": {"images": ["47", 0]}},
    }
    with Engine(cfg) as engine:  # previews live in the temp folder, which closing the engine clears
        result = engine.run(prompt, timeout=120)
        for node in ("45", "48"):
            (path,) = result.images[node]
            with Image.open(path) as im:
                assert im.size == (683, 512)  # short side = the default resolution 512
                values = set(np.unique(np.asarray(im)))
            assert values <= ({0, 127, 255} if node == "45" else {0, 255})
