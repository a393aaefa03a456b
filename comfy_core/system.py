"""`/system_stats` facts: OS, Python, torch and the one compute device, in ComfyUI's shape."""
from __future__ import annotations

import os
import sys
from typing import Any


def _memory() -> tuple[int, int]:
    """(total, available) RAM in bytes from /proc/meminfo, or sysconf where that is missing."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines() if ":" in line)
        kib = lambda key: int(fields[key].strip().split()[0]) * 1024  # noqa: E731
        return kib("MemTotal"), kib("MemAvailable")
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return pages, pages


def system_stats(device, version: str, api_version: str) -> dict[str, Any]:
    import torch

    ram_total, ram_free = _memory()
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        stats = torch.cuda.memory_stats(device)
        reserved, active = stats.get("reserved_bytes.all.current", 0), stats.get("active_bytes.all.current", 0)
        name = f"{device}: {torch.cuda.get_device_name(device)}"
        dev = {"name": name, "type": "cuda", "index": device.index or 0, "vram_total": total,
               "vram_free": free + reserved - active, "torch_vram_total": reserved,
               "torch_vram_free": reserved - active}
    else:
        dev = {"name": str(device), "type": device.type, "index": None, "vram_total": ram_total,
               "vram_free": ram_free, "torch_vram_total": ram_total, "torch_vram_free": ram_free}
    return {
        "system": {"os": os.name, "ram_total": ram_total, "ram_free": ram_free, "comfyui_version": api_version,
                   "comfy_core_version": version, "python_version": sys.version,
                   "pytorch_version": torch.__version__, "embedded_python": False, "argv": list(sys.argv)},
        "devices": [dev],
    }
