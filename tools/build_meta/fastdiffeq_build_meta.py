"""Build-time metadata of fastdiffeq: a scikit-build-core dynamic-metadata provider (dynamic-metadata 0.3,
``[[tool.dynamic-metadata]]`` in pyproject.toml).

The compiled extension links against libtorch's C++ symbols, which change between torch minor releases, so:

- a wheel depends on ``torch==X.Y.*``, X.Y being the torch it is compiled against (the torch installed in the
  build environment: builds run with ``--no-build-isolation``); the sdist keeps the open range given in the
  settings (``sdist-torch``) and says so (``Dynamic: Requires-Dist``), since it builds against whatever torch
  is installed;
- with ``FASTDIFFEQ_LOCAL_VERSION=1`` in the environment (``make wheel`` sets it) the wheel's version gets a
  local label naming that torch and the kernels' CUDA version, ``0.1.0+torch2.14.cu130`` or
  ``0.1.0+torch2.13.cpu``, so wheels for different torches can sit side by side. Without it the version is
  the plain one (an sdist's version must equal the wheels built from it).

The version itself is ``__version__`` of the file named by ``version-file``. The torch version is read from
torch's ``version.py`` without importing torch (seconds). What the build really compiled against is also
recorded in the package (``fastdiffeq/_build_info.py``, written by CMake) and checked at import.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import runpy
import shutil
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["build_state", "dynamic_metadata", "dynamic_wheel", "torch_pin", "local_label"]

_state = {"build_state": "metadata_wheel"}


def build_state(state: str) -> None:
    _state["build_state"] = state


def dynamic_wheel(settings: Mapping[str, Any]) -> Dict[str, bool]:
    return {"dependencies": True}


def installed_torch() -> Tuple[str, Optional[str]]:
    """(torch.__version__, torch.version.cuda) of the torch this interpreter would import."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "fastdiffeq: torch is not installed in the build environment. Install torch first and build with "
            "`pip install --no-build-isolation .` (the extension is compiled against the installed torch)"
        )
    info = runpy.run_path(str(pathlib.Path(list(spec.submodule_search_locations)[0]) / "version.py"))
    return str(info["__version__"]), info.get("cuda")


def torch_pin(torch_version: str) -> str:
    major, minor = torch_version.split("+")[0].split(".")[:2]
    return f"torch=={major}.{minor}.*"


def local_label(torch_version: str, torch_cuda: Optional[str], cuda_mode: str, have_nvcc: bool) -> str:
    """'torch2.14.cu130' or 'torch2.13.cpu': the torch the wheel is for and whether its kernels include CUDA
    (as CMakeLists.txt decides: FASTDIFFEQ_CUDA=ON/OFF, or AUTO = torch has CUDA and nvcc is found)."""
    major, minor = torch_version.split("+")[0].split(".")[:2]
    with_cuda = bool(torch_cuda) and (cuda_mode == "ON" or (cuda_mode == "AUTO" and have_nvcc))
    kernels = "cu" + torch_cuda.replace(".", "") if with_cuda else "cpu"
    return f"torch{major}.{minor}.{kernels}"


def _version(settings: Mapping[str, Any]) -> str:
    path = settings.get("version-file")
    if not isinstance(path, str):
        raise KeyError("fastdiffeq_build_meta: set `version-file` (the file holding __version__ = '...')")
    match = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", pathlib.Path(path).read_text(), re.M)
    if match is None:
        raise ValueError(f"fastdiffeq_build_meta: no __version__ = '...' line in {path}")
    return match.group(1)


def dynamic_metadata(settings: Mapping[str, Any], project: Mapping[str, Any]) -> Dict[str, Any]:
    version = _version(settings)
    if _state["build_state"] == "sdist":
        return {"version": version, "dependencies": [settings.get("sdist-torch", "torch")]}
    torch_version, torch_cuda = installed_torch()
    if os.environ.get("FASTDIFFEQ_LOCAL_VERSION", "") not in ("", "0"):
        cuda_mode = os.environ.get("FASTDIFFEQ_CUDA", "AUTO").upper()
        have_nvcc = bool(os.environ.get("CUDACXX")) or shutil.which("nvcc") is not None
        version += "+" + local_label(torch_version, torch_cuda, cuda_mode, have_nvcc)
    return {"version": version, "dependencies": [torch_pin(torch_version)]}
