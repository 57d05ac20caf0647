"""The wheel: its metadata pins the torch it is compiled against, it installs into a fresh virtual environment
with pip resolving its dependencies (a compatible torch) from this machine's local package index, and an
import into another torch fails with a clear ImportError.

Cost (2-core machine): building the wheel reuses the build directory of the installed package (about 3 s when
nothing changed); the fresh-venv install (a new venv with pip, the CPU torch wheel and its dependencies unpacked
from local disk, then a solve there) took 26 s, so it is not marked slow.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
import tarfile
import venv
import zipfile

import pytest
import torch

import fastdiffeq
from fastdiffeq import _torch_compat

ROOT = pathlib.Path(__file__).resolve().parents[1]
TORCH_MINOR = ".".join(torch.__version__.split("+")[0].split(".")[:2])

# This machine's package sources (no network): pip's local index mirrors and the directory of wheels on disk
# (the CPU torch wheel lies there). The fresh-venv test resolves dependencies from these only.
LOCAL_INDEXES = [pathlib.Path("/opt/pypi/simple"), pathlib.Path("/opt/pypi-more/simple")]
LOCAL_WHEELS = pathlib.Path("/opt/wheels")


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    """The wheel `make wheel` builds (version label on), compiled against this interpreter's torch."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", str(ROOT), "-w", str(dist)],
        check=True, cwd=ROOT, timeout=900, env=_clean_env(FASTDIFFEQ_LOCAL_VERSION="1"),
    )
    wheels = list(dist.glob("fastdiffeq-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _metadata(wheel: pathlib.Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return z.read(name).decode()


def test_wheel_metadata_pins_the_torch_it_was_built_against(wheel):
    meta = _metadata(wheel)
    requires = re.findall(r"^Requires-Dist: (torch\b[^;\n]*)$", meta, re.M)
    assert requires == [f"torch=={TORCH_MINOR}.*"], requires
    # The version's local label names that torch and the kernels' CUDA version (cpu without CUDA kernels).
    kernels = "cu" + torch.version.cuda.replace(".", "") if fastdiffeq._C.built_with_cuda else "cpu"
    label = f"+torch{TORCH_MINOR}.{kernels}"
    assert re.search(rf"^Version: {re.escape(fastdiffeq.__version__ + label)}$", meta, re.M), meta[:300]
    assert wheel.name.startswith(f"fastdiffeq-{fastdiffeq.__version__}{label}-"), wheel.name
    # The package records what it was compiled against (checked at import).
    with zipfile.ZipFile(wheel) as z:
        info = z.read("fastdiffeq/_build_info.py").decode()
    assert f'TORCH_VERSION = "{torch.__version__}"' in info


def test_wheel_installs_with_dependency_resolution_into_fresh_venv_and_solves(wheel, tmp_path):
    if not all(p.is_dir() for p in [*LOCAL_INDEXES, LOCAL_WHEELS]):
        pytest.skip("needs this machine's local package index (/opt/pypi/simple, /opt/pypi-more/simple, /opt/wheels)")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    report = tmp_path / "report.json"
    # Resolve everything (torch, numpy and torch's dependencies) from local disk only: --index-url replaces
    # PyPI. torch==X.Y.* from the wheel's metadata selects the CPU torch wheel in /opt/wheels.
    sources = ["--index-url", LOCAL_INDEXES[0].as_uri(), "--extra-index-url", LOCAL_INDEXES[1].as_uri(),
               "--find-links", str(LOCAL_WHEELS)]
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *sources,
                    "--report", str(report), str(wheel)],
                   check=True, timeout=600, env=_clean_env())
    installed = {item["metadata"]["name"].lower(): item for item in json.loads(report.read_text())["install"]}
    assert installed["torch"]["metadata"]["version"].startswith(TORCH_MINOR + "."), installed["torch"]["metadata"]
    urls = [item["download_info"]["url"] for item in installed.values()]
    assert all(u.startswith("file://") for u in urls), f"pip fetched from the network: {urls}"

    script = textwrap.dedent("""
        import torch, fastdiffeq
        print(fastdiffeq.__file__)
        t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
        y0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
        ys = fastdiffeq.odeint(lambda t, y: -0.5 * y, y0, t)
        print(float((ys - torch.exp(-0.5 * t)[:, None] * y0).abs().max()))
    """)
    out = subprocess.run([str(py), "-c", script], check=True, capture_output=True, text=True, cwd=tmp_path,
                         timeout=120, env=_clean_env())
    location, err = out.stdout.split()
    assert location.startswith(str(env_dir)), f"fastdiffeq was imported from {location}, not the fresh venv"
    assert float(err) < 1e-6


def test_import_into_another_torch_raises_a_clear_import_error(tmp_path):
    """A copy of the installed package whose build record names another torch fails at import, before _C."""
    pkg = tmp_path / "fastdiffeq"
    shutil.copytree(pathlib.Path(fastdiffeq.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "_build_info.py").write_text('TORCH_VERSION = "2.99.1+cu999"\nCUDA_VERSION = "99.9"\n')
    out = subprocess.run([sys.executable, "-c", "import fastdiffeq"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120, env=_clean_env(PYTHONPATH=str(tmp_path)))
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: "), out.stderr[-2000:]
    assert "2.99.1+cu999" in last and torch.__version__ in last, last
    assert "--no-build-isolation" in last and "torch==2.99.*" in last, last


@pytest.mark.parametrize("built, built_cuda, running, running_cuda, expect", [
    ("2.13.0+cpu", None, "2.13.0+cpu", None, None),
    ("2.13.0+cpu", None, "2.13.1", "12.8", None),               # patch releases are compatible; CPU kernels load anywhere
    ("2.14.1", "13.0", "2.14.1", "13.0", None),
    ("2.14.1", "13.0", "2.14.0", "13.2", None),
    ("2.13.0+cpu", None, "2.14.1", "13.0", "built against torch 2.13.0+cpu, but torch 2.14.1"),
    ("2.14.1", "13.0", "2.14.1+cpu", None, "has no CUDA"),
    ("2.14.1", "13.0", "2.14.1+cu126", "12.6", "uses CUDA 12.6"),
])
def test_torch_mismatch_rules(built, built_cuda, running, running_cuda, expect):
    problem = _torch_compat.mismatch(built, built_cuda, running, running_cuda)
    if expect is None:
        assert problem is None
    else:
        assert problem is not None and expect in problem, problem
        assert "--no-build-isolation" in problem


def test_sdist_stays_unpinned(tmp_path):
    """The sdist builds against whatever torch is installed: open range, Requires-Dist marked dynamic."""
    code = f"from scikit_build_core.build import build_sdist; print(build_sdist({str(tmp_path)!r}))"
    name = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env=_clean_env(FASTDIFFEQ_LOCAL_VERSION="1")).stdout.split()[-1]
    with tarfile.open(tmp_path / name) as tar:
        pkg_info = tar.extractfile(f"{name[:-len('.tar.gz')]}/PKG-INFO").read().decode()
    assert re.search(r"^Version: " + re.escape(fastdiffeq.__version__) + "$", pkg_info, re.M), "no local label"
    assert re.findall(r"^Requires-Dist: (torch\b[^;\n]*)$", pkg_info, re.M) == ["torch>=2.4"]
    assert re.search(r"^Dynamic: Requires-Dist$", pkg_info, re.M)


def _build_meta():
    spec = importlib.util.spec_from_file_location("fastdiffeq_build_meta",
                                                  ROOT / "tools" / "build_meta" / "fastdiffeq_build_meta.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("torch_version, torch_cuda, mode, nvcc, label", [
    ("2.14.1+cu130", "13.0", "AUTO", True, "torch2.14.cu130"),
    ("2.14.1", "13.0", "AUTO", False, "torch2.14.cpu"),      # no nvcc: CPU kernels only
    ("2.14.1", "13.0", "OFF", True, "torch2.14.cpu"),
    ("2.13.0+cpu", None, "ON", True, "torch2.13.cpu"),       # (CMake refuses ON without a CUDA torch)
    ("2.12.0+cu126", "12.6", "ON", False, "torch2.12.cu126"),
])
def test_local_version_label(torch_version, torch_cuda, mode, nvcc, label):
    meta = _build_meta()
    assert meta.local_label(torch_version, torch_cuda, mode, nvcc) == label
    assert meta.torch_pin(torch_version) == "torch==" + ".".join(torch_version.split("+")[0].split(".")[:2]) + ".*"
