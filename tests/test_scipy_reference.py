"""fastdiffeq.odeint against scipy's DOP853 at rtol = atol = 1e-12 (float64), an independent reference.

fastdiffeq runs at rtol=1e-9, atol=1e-11 and must agree within 1e-6 (relative to max(1, |y|)).
Van der Pol is compared forward only: its limit cycle repels backwards in time, so a reverse solve
amplifies the reference's own error. Lotka-Volterra (conservative) is compared in both directions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fastdiffeq

pytestmark = pytest.mark.usefixtures("single_thread")

solve_ivp = pytest.importorskip("scipy.integrate").solve_ivp

RTOL, ATOL = 1e-9, 1e-11
MATCH = 1e-6

MU = 1.0
LV_A, LV_B, LV_C, LV_D = 1.5, 1.0, 3.0, 1.0  # x' = a x - b x y, y' = d x y - c y (scipy's docs example)


def vdp_np(t, y):
    return [y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]]


def vdp(t, y):
    return torch.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def lv_np(t, y):
    return [LV_A * y[0] - LV_B * y[0] * y[1], LV_D * y[0] * y[1] - LV_C * y[1]]


def lv(t, y):
    return torch.stack([LV_A * y[0] - LV_B * y[0] * y[1], LV_D * y[0] * y[1] - LV_C * y[1]])


def lv_batched(t, y):  # y: [B, 2]
    x, z = y[..., 0], y[..., 1]
    return torch.stack([LV_A * x - LV_B * x * z, LV_D * x * z - LV_C * z], dim=-1)


PROBLEMS = {
    "vdp": (vdp, vdp_np, [2.0, 0.0], 10.0),
    "lotka_volterra": (lv, lv_np, [10.0, 5.0], 15.0),
}


def _reference(fnp, y0, ts):
    sol = solve_ivp(fnp, (float(ts[0]), float(ts[-1])), y0, method="DOP853", rtol=1e-12, atol=1e-12,
                    t_eval=ts, dense_output=False)
    assert sol.success
    return torch.from_numpy(sol.y.T.copy())


def _assert_match(y, ref, what):
    err = (y - ref).abs() / ref.abs().clamp(min=1.0)
    assert float(err.max()) <= MATCH, f"{what}: max scaled error {float(err.max()):.3g} > {MATCH}"


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_matches_scipy_dop853_forward(problem, method):
    f, fnp, y0, T = PROBLEMS[problem]
    ts = np.linspace(0.0, T, 61)
    ref = _reference(fnp, y0, ts)
    with torch.no_grad():
        y = fastdiffeq.odeint(f, torch.tensor(y0, dtype=torch.float64), torch.from_numpy(ts), rtol=RTOL, atol=ATOL,
                              method=method)
    assert y.dtype == torch.float64 and y.shape == ref.shape
    _assert_match(y, ref, f"{problem}/{method}")


def test_matches_scipy_dop853_bosh3_vdp():
    # bosh3 (order 3) needs ~6000 steps at rtol 1e-9: one problem only, to keep the suite fast.
    f, fnp, y0, T = PROBLEMS["vdp"]
    ts = np.linspace(0.0, T, 21)
    ref = _reference(fnp, y0, ts)
    with torch.no_grad():
        y = fastdiffeq.odeint(f, torch.tensor(y0, dtype=torch.float64), torch.from_numpy(ts), rtol=RTOL, atol=ATOL,
                              method="bosh3")
    _assert_match(y, ref, "vdp/bosh3")


@pytest.mark.parametrize("method", ["dopri5", "tsit5"])
def test_matches_scipy_dop853_reverse_lotka_volterra(method):
    f, fnp, y0, T = PROBLEMS["lotka_volterra"]
    ts = np.linspace(0.0, T, 31)
    ref = _reference(fnp, y0, ts)
    with torch.no_grad():
        y = fastdiffeq.odeint(f, ref[-1].clone(), torch.from_numpy(ts[::-1].copy()), rtol=RTOL, atol=ATOL,
                              method=method)
    _assert_match(y, ref.flip(0), f"lotka_volterra reverse/{method}")


def test_matches_scipy_irregular_grid_and_batch():
    # An irregular output grid and a batch of initial conditions solved as one joint system.
    rng = np.random.default_rng(3)
    ts = np.concatenate([[0.0], np.sort(rng.uniform(0.0, 15.0, 40)), [15.0]])
    y0s = [[10.0, 5.0], [4.0, 2.0], [1.0, 1.5]]
    refs = torch.stack([_reference(lv_np, y0, ts) for y0 in y0s], dim=1)  # [T, B, 2]
    with torch.no_grad():
        y = fastdiffeq.odeint(lv_batched, torch.tensor(y0s, dtype=torch.float64), torch.from_numpy(ts),
                              rtol=RTOL, atol=ATOL)
    assert y.shape == refs.shape
    _assert_match(y, refs, "lotka_volterra batch, irregular grid")
