"""The full-size random-weight SD1.5 checkpoint that ComfyUI's reference numbers (tests/data/e2e_*) were made from.

Built once (about 25 s, 2.1 GB) with tests/tools/make_random_checkpoint.py into a cache folder shared by test runs
(`COMFY_CORE_TEST_CACHE`, default ~/.cache/comfy-core-tests), guarded by a lock file so parallel runs build it once.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SD15_SHA256 = "bd61723941de5d9ad3a07d3750284af497c5bb2229786702821366f140c3a52f"


def cache_dir() -> Path:
    path = Path(os.environ.get("COMFY_CORE_TEST_CACHE", Path.home() / ".cache" / "comfy-core-tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def random_sd15_checkpoint() -> Path:
    """Path of the random SD1.5 checkpoint, building (and verifying) it on first use."""
    target = cache_dir() / "random_sd15.safetensors"
    with open(cache_dir() / "random_sd15.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = target.with_suffix(".verified")
        if not (target.exists() and marker.exists()):
            subprocess.run(
                [sys.executable, str(HERE / "tools" / "make_random_checkpoint.py"),
                 str(HERE / "data" / "sd15_keys.json"), str(target)],
                check=True, stdout=subprocess.DEVNULL,
            )
            if _sha256(target) != SD15_SHA256:
                raise RuntimeError(f"{target} does not have the reference sha256")
            marker.write_text(SD15_SHA256)
    return target
