"""The torch the extension was compiled against vs the torch that is running.

``fastdiffeq._C`` links against libtorch's C++ symbols, which change between torch minor releases: loaded
into another torch it fails with an undefined-symbol error (or worse). ``import fastdiffeq`` calls
:func:`check` before it imports ``_C``, so a mismatch is an ImportError that names both versions and the fix.
Patch releases of one minor version are compatible (the wheel's metadata pins ``torch==X.Y.*``).
"""

from __future__ import annotations

from typing import Optional, Tuple

__all__ = ["check", "mismatch"]

_FIX = (
    "Install the torch it was built for (pip install 'torch=={minor}.*'), or rebuild fastdiffeq against the "
    "installed torch: from a source checkout, `pip install --no-build-isolation --force-reinstall --no-deps .` "
    "(--no-build-isolation compiles against the torch you have; an isolated build would fetch another one)."
)


def _minor(version: str) -> Tuple[int, int]:
    parts = version.split("+")[0].split(".")
    return int(parts[0]), int(parts[1])


def mismatch(built_torch: str, built_cuda: Optional[str], torch_version: str,
             torch_cuda: Optional[str]) -> Optional[str]:
    """Why a module built against (built_torch, built_cuda) cannot load into (torch_version, torch_cuda), or
    None when it can: same torch major.minor; a CUDA build needs a CUDA torch of the same CUDA major version."""
    built_minor = "%d.%d" % _minor(built_torch)
    fix = _FIX.format(minor=built_minor)
    if _minor(built_torch) != _minor(torch_version):
        return (f"fastdiffeq's compiled extension was built against torch {built_torch}, but torch {torch_version} "
                f"is installed; it only loads with torch {built_minor}.x. {fix}")
    if built_cuda is not None:
        if torch_cuda is None:
            return (f"fastdiffeq's compiled extension was built with CUDA {built_cuda} kernels against torch "
                    f"{built_torch}, but the installed torch {torch_version} has no CUDA. {fix}")
        if built_cuda.split(".")[0] != torch_cuda.split(".")[0]:
            return (f"fastdiffeq's compiled extension was built with CUDA {built_cuda} (torch {built_torch}), but "
                    f"the installed torch {torch_version} uses CUDA {torch_cuda}. {fix}")
    return None


def check() -> None:
    """Raise ImportError when the running torch is not the one ``fastdiffeq._C`` was compiled against."""
    import torch

    try:
        from . import _build_info
    except ImportError as e:
        raise ImportError(
            "fastdiffeq is not built (no fastdiffeq/_build_info.py next to the compiled extension): install it with "
            "`pip install --no-build-isolation .` from a source checkout"
        ) from e
    problem = mismatch(_build_info.TORCH_VERSION, _build_info.CUDA_VERSION, torch.__version__, torch.version.cuda)
    if problem is not None:
        raise ImportError(problem)
