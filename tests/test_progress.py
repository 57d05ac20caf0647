"""progress=True: a tqdm bar of integration time, driven from the C++ loops (csrc/solver/progress.h)."""

from __future__ import annotations

import sys

import pytest
import torch

import fastdiffeq
from fastdiffeq import _progress

pytestmark = pytest.mark.usefixtures("single_thread")


class Field(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    def forward(self, t, y):
        return self.net(y)


@pytest.fixture
def calls(monkeypatch):
    """Every (fraction, t) the C++ loops report, with the throttle off (a report per step)."""
    seen = []
    original = _progress.ProgressBar.__call__

    def spy(self, fraction, t):
        seen.append((fraction, t))
        original(self, fraction, t)

    monkeypatch.setattr(_progress.ProgressBar, "interval", 0.0)
    monkeypatch.setattr(_progress.ProgressBar, "__call__", spy)
    return seen


def _check_reports(seen, t0, t1, n_steps):
    assert len(seen) >= n_steps - 1, (len(seen), n_steps)
    fractions = [f for f, _ in seen]
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert fractions == sorted(fractions), "the bar never goes back"
    # t moves from t0 towards t1 (the last step may end past t1: outputs are interpolated)
    direction = 1.0 if t1 > t0 else -1.0
    assert all(0.0 <= direction * (t - t0) <= 2 * abs(t1 - t0) for _, t in seen)


@pytest.mark.parametrize("grad", [False, True], ids=["masked-loop", "host-loop"])
@pytest.mark.parametrize("t_end", [5.0, -5.0], ids=["forward", "backward-in-time"])
def test_odeint_bar_reaches_t_end(capsys, calls, grad, t_end):
    f = Field()
    t = torch.linspace(0.0, t_end, 10)
    with torch.set_grad_enabled(grad):
        fastdiffeq.odeint(f, torch.randn(8, 2), t, rtol=1e-7, atol=1e-7, progress=True)
    stats = fastdiffeq.last_stats()
    _check_reports(calls, 0.0, t_end, stats.n_steps)
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()[-1]
    assert final.startswith("odeint: 100%") and f"t={t_end:.4g}/{t_end:.4g}" in final, final


def test_odeint_adjoint_bars_forward_and_backward(capsys, calls):
    f = Field()
    t = torch.linspace(0.0, 3.0, 4)
    y0 = torch.randn(8, 2, requires_grad=True)
    ys = fastdiffeq.odeint_adjoint(f, y0, t, rtol=1e-6, atol=1e-6, progress=True)
    n_forward = len(calls)
    ys.square().sum().backward()
    backward_stats = fastdiffeq.last_backward_stats()
    _check_reports(calls[n_forward:], 3.0, 0.0, backward_stats.n_steps)
    assert calls[-1][1] <= calls[n_forward][1], "the backward solve runs from t[-1] to t[0]"
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any(line.startswith("odeint_adjoint: 100%") for line in lines)
    assert any(line.startswith("odeint_adjoint (backward): 100%") and "t=0/0" in line for line in lines)


@pytest.mark.parametrize("gradient", [None, "direct", "checkpoint", "adjoint"])
def test_solve_ivp_bar_follows_the_slowest_sample(capsys, calls, gradient):
    # Per-sample solves report the least advanced sample: the bar never goes back and ends at 100 %.
    f = Field()
    y0 = torch.randn(6, 2)
    t = torch.linspace(0.0, 4.0, 9)
    if gradient is None:
        with torch.no_grad():
            sol = fastdiffeq.solve_ivp(f, y0, t, rtol=1e-7, atol=1e-7, progress=True)
    else:
        sol = fastdiffeq.solve_ivp(f, y0.requires_grad_(True), t, rtol=1e-7, atol=1e-7, gradient=gradient,
                                   progress=True)
    n_forward = len(calls)
    _check_reports(calls, 0.0, 4.0, int(sol.n_steps.max()))
    if gradient is not None:
        sol.ys.square().sum().backward()
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    assert any(line.startswith("solve_ivp: 100%") and "t=4/4" in line for line in lines)
    if gradient == "adjoint":
        _check_reports(calls[n_forward:], 4.0, 0.0, 1)
        assert any(line.startswith("solve_ivp (adjoint): 100%") for line in lines)


def test_progress_off_prints_nothing_and_never_calls_back(capsys, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("no bar may be created with progress=False")

    monkeypatch.setattr(_progress, "_tqdm", fail)
    f = Field()
    y0 = torch.randn(4, 2, requires_grad=True)
    fastdiffeq.odeint(f, y0, torch.linspace(0, 2, 3)).sum().backward()
    fastdiffeq.odeint_adjoint(f, y0, torch.linspace(0, 2, 3)).sum().backward()
    with torch.no_grad():
        fastdiffeq.odeint(f, y0, torch.linspace(0, 2, 3))
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_failed_solve_leaves_the_bar_where_it_stopped(capsys):
    with pytest.raises(fastdiffeq.MaxStepsError):
        fastdiffeq.odeint(lambda t, y: -y, torch.ones(2), torch.linspace(0, 10, 2), options={"max_num_steps": 3},
                          progress=True)
    final = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "stopped" in final and "100%" not in final, final


def test_progress_without_tqdm_is_a_clear_error_only_when_asked(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    y0, t = torch.ones(2), torch.linspace(0, 1, 3)
    fastdiffeq.odeint(lambda t, y: -y, y0, t)  # fine without tqdm
    with pytest.raises(ImportError, match="pip install tqdm"):
        fastdiffeq.odeint(lambda t, y: -y, y0, t, progress=True)


def test_progress_argument_is_checked():
    with pytest.raises(TypeError, match="`progress` must be True or False"):
        fastdiffeq.odeint(lambda t, y: -y, torch.ones(2), torch.linspace(0, 1, 3), progress="yes")
    o = fastdiffeq._odeint.solver_options("dopri5", [1e-6], [1e-6], [2], fastdiffeq._odeint._parse_options(None, 1),
                                         [], [], torch.device("cpu"))
    with pytest.raises(TypeError, match="progress must be None or a callable"):
        fastdiffeq._C.rk_solve(lambda t, y: -y, torch.ones(1, 2), torch.linspace(0, 1, 3, dtype=torch.float64), o,
                               norm=None, user_shape=[1, 2], joint=True, progress=3)
    with pytest.raises(ValueError, match="progress_interval must be >= 0"):
        fastdiffeq._C.rk_solve(lambda t, y: -y, torch.ones(1, 2), torch.linspace(0, 1, 3, dtype=torch.float64), o,
                               norm=None, user_shape=[1, 2], joint=True, progress=print, progress_interval=-1.0)


def test_solve_stats_repr_shows_every_field():
    fastdiffeq.odeint(lambda t, y: -y, torch.ones(2), torch.linspace(0, 1, 3))
    stats = fastdiffeq.last_stats()
    text = repr(stats)
    for name in ("method", "nfe", "n_steps", "n_accepted", "n_rejected", "t_final", "status"):
        assert f"{name}={getattr(stats, name)!r}" in text, text
