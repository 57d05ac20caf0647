"""The wheel `make wheel` builds installs into a fresh virtual environment and solves a problem there."""

import os
import pathlib
import subprocess
import sys
import sysconfig
import textwrap
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_into_fresh_venv_and_solves(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", str(ROOT), "-w", str(dist)],
        check=True, cwd=ROOT, timeout=900,
    )
    wheels = list(dist.glob("fastdiffeq-*.whl"))
    assert len(wheels) == 1, wheels

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheels[0])],
                   check=True, timeout=300)
    # The same torch as the build: after installing (so pip does not see this environment's fastdiffeq),
    # expose this interpreter's site-packages *after* the fresh venv's own (a .pth file appends).
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (pathlib.Path(site) / "shared_torch.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    script = textwrap.dedent("""
        import math, torch, fastdiffeq
        print(fastdiffeq.__file__)
        t = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
        ys = fastdiffeq.odeint(lambda t, y: -0.5 * y, torch.tensor([1.0, 2.0], dtype=torch.float64), t)
        err = (ys - torch.exp(-0.5 * t)[:, None] * torch.tensor([1.0, 2.0], dtype=torch.float64)).abs().max()
        print(float(err))
    """)
    out = subprocess.run([str(py), "-c", script], check=True, capture_output=True, text=True, cwd=tmp_path,
                         timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    location, err = out.stdout.split()
    assert location.startswith(str(env_dir)), f"fastdiffeq was imported from {location}, not the fresh venv"
    assert float(err) < 1e-6
