"""The distribution installs `comfy_core`, `comfy_core.kernels` (from kernels/) and `comfy_core.asgi` (from asgi/),
both as a wheel and as an editable install, and they import from any working directory."""
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ("import comfy_core, comfy_core.kernels, comfy_core.asgi, comfy_core.nodes, comfy_core.models, "
         "comfy_core.sampling; print(comfy_core.kernels.__file__); print(comfy_core.asgi.__file__)")


def make_venv(path: Path) -> Path:
    # no pip of its own: the outer pip installs into it (`--python`), building with the outer setuptools
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(path)
    return path / "bin" / "python"


def pip(python: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-build-isolation",
                    "--disable-pip-version-check", *args], check=True, cwd=ROOT)


def imports_from_elsewhere(python: Path, cwd: Path) -> list[str]:
    out = subprocess.run([str(python), "-c", CHECK], check=True, capture_output=True, text=True, cwd=cwd)
    return out.stdout.split()


@pytest.mark.slow
def test_wheel_install_imports_all_packages(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(ROOT)], check=True)
    (wheel,) = (tmp_path / "dist").glob("comfy_core-*.whl")
    python = make_venv(tmp_path / "venv")
    pip(python, str(wheel))
    kernels, asgi = imports_from_elsewhere(python, tmp_path)
    assert kernels.endswith("comfy_core/kernels/__init__.py") and "site-packages" in kernels
    assert asgi.endswith("comfy_core/asgi/__init__.py") and "site-packages" in asgi


@pytest.mark.slow
def test_editable_install_imports_all_packages(tmp_path):
    python = make_venv(tmp_path / "venv")
    pip(python, "-e", str(ROOT))
    kernels, asgi = imports_from_elsewhere(python, tmp_path)
    assert Path(kernels) == ROOT / "kernels" / "__init__.py"
    assert Path(asgi) == ROOT / "asgi" / "__init__.py"
