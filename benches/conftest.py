"""Benchmarks: run with `pytest benches/` (pytest-benchmark). Results JSON goes to benches/results/."""
import json
import os
import platform
import sys
from pathlib import Path

import pytest

RESULTS = Path(os.environ.get("COMFY_CORE_BENCH_RESULTS", Path(__file__).parent / "results"))


def machine() -> dict:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    return {"device": device, "python": sys.version.split()[0], "torch": torch.__version__,
            "platform": platform.platform()}


@pytest.fixture(scope="session")
def write_results():
    """Call write_results(name, rows) to save `rows` (plus machine info) as benches/results/<name>.json."""
    def write(name: str, rows) -> Path:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"{name}.json"
        path.write_text(json.dumps({"machine": machine(), "results": rows}, indent=1))
        return path
    return write
