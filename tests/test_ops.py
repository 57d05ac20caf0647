"""The fused ops under torch.ops.fastdiffeq and the Butcher tableaus from fastdiffeq._C.tableau.

Every op is (a) run through torch.library.opcheck (schema, fake/meta kernel, autograd registration,
AOT dispatch), (b) compared against a plain-torch / plain-Python reference written here from the
formulas in DESIGN.md §4 and REFERENCE.md §1, and (c) fed malformed inputs, which must raise
RuntimeError instead of crashing the process.

The tableaus are checked against the Runge-Kutta order conditions, generated here from rooted trees
(Butcher's theory), not against copied coefficients.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from functools import lru_cache

import numpy as np
import pytest
import torch

import fastdiffeq
from fastdiffeq import Status, _C
from fastdiffeq._status import MAX_NON_FINITE_RETRIES, Counter

pytestmark = pytest.mark.usefixtures("single_thread")

OPS = torch.ops.fastdiffeq
DTYPES = [torch.float32, torch.float64]
BATCHES = [1, 3]
ADAPTIVE = ["dopri5", "tsit5", "bosh3", "fehlberg2", "adaptive_heun", "dopri8"]
# The tableaus whose structure and embedded / midpoint orders are checked here (every tableau's order conditions
# are checked by tests/test_methods.py).
CHECKED_HERE = ["dopri5", "tsit5", "bosh3"]
METHODS = ADAPTIVE + ["euler", "midpoint", "heun2", "heun3", "rk4"]

# Default controller arguments (safety, ifactor, dfactor, exponent, min_step, max_step).
CTRL = dict(safety=0.9, ifactor=10.0, dfactor=0.2, exponent=0.2, min_step=0.0, max_step=math.inf)


def _control(c=CTRL):
    """The ops' `control` argument: the controller's fields packed in the core's order."""
    return _C.ControllerParams(**c).pack()


@contextlib.contextmanager
def _threads(n):
    # Large inputs run with 2 intra-op threads so the kernels' parallel chunking (chunks that split rows,
    # per-row parallel reductions) is exercised; the suite otherwise runs single-threaded (conftest.py).
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _gen(seed):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _randn(*shape, dtype, seed):
    return torch.randn(*shape, generator=_gen(seed), dtype=torch.float64).to(dtype)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------------------
# Plain-Python references
# ---------------------------------------------------------------------------------------------------

def ref_controller(ratio: float, h: float, c=CTRL):
    """torchdiffeq's accept rule and integral controller (REFERENCE.md §1, DESIGN.md §4)."""
    abs_h = abs(h)
    if not math.isfinite(ratio):
        accept = False
        factor = c["dfactor"]
    else:
        accept = ratio <= 1.0
        if abs_h > c["max_step"]:
            accept = False
        if abs_h <= c["min_step"]:
            accept = True
        if ratio == 0.0:
            factor = c["ifactor"]
        else:
            floor = 1.0 if ratio < 1.0 else c["dfactor"]
            factor = min(c["ifactor"], max(c["safety"] * ratio ** (-c["exponent"]), floor))
    h_abs = min(max(abs_h * factor, c["min_step"]), c["max_step"])
    return accept, math.copysign(h_abs, h) if h != 0 else h_abs


def ref_ratio(y0, y1, ks, h, e, rtol, atol, segment_ends):
    """max over segments of the RMS of err / (atol + rtol max(|y0|, |y1|)), err = h sum e_j k_j."""
    y0 = y0.double()
    y1 = y1.double()
    err = torch.zeros_like(y0)
    for ej, k in zip(e, ks):
        err = err + ej * k.double()
    err = err * h.double()[:, None]
    out = torch.zeros(y0.shape[0], dtype=torch.float64)
    begin = 0
    for s, end in enumerate(segment_ends):
        if end == begin:
            continue
        tol = atol[s] + rtol[s] * torch.maximum(y0[:, begin:end].abs(), y1[:, begin:end].abs())
        rms = (err[:, begin:end] / tol).pow(2).mean(dim=1).sqrt()
        out = torch.maximum(out, rms)
        begin = end
    return out


def ref_quartic(y0, y1, y_mid, hf0, hf1, x):
    """The quartic p with p(0)=y0, p(1)=y1, p(1/2)=y_mid, p'(0)=hf0, p'(1)=hf1, by a linear solve."""
    # Rows: p(0), p(1), p(1/2), p'(0), p'(1) for p(x) = sum_k c_k x^k, k = 0..4.
    M = np.array([
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0.5, 0.25, 0.125, 0.0625],
        [0, 1, 0, 0, 0],
        [0, 1, 2, 3, 4],
    ], dtype=np.float64)
    rhs = np.stack([y0, y1, y_mid, hf0, hf1])  # [5, D]
    coef = np.linalg.solve(M, rhs)  # [5, D]
    return sum(coef[k] * x ** k for k in range(5))


# ---------------------------------------------------------------------------------------------------
# rk_stage
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("D", [5, 40000])
def test_rk_stage_values(dtype, B, D):
    y = _randn(B, D, dtype=dtype, seed=1)
    ks = [_randn(B, D, dtype=dtype, seed=10 + j) for j in range(5)]
    h = torch.tensor([0.1, -0.37, 2.5][:B], dtype=torch.float64)
    coeffs = [0.3, -1.25, 0.0, 2.0]  # fewer coefficients than stages, one of them zero
    with _threads(2):
        out = OPS.rk_stage(y, ks, h, coeffs)
    assert out.shape == y.shape and out.dtype == dtype
    ref = y.double() + h[:, None] * sum(c * k.double() for c, k in zip(coeffs, ks))
    torch.testing.assert_close(out.double(), ref, **_tol(dtype))
    # The inputs are not modified.
    torch.testing.assert_close(y, _randn(B, D, dtype=dtype, seed=1), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rk_stage_zero_coefficients_returns_copy(dtype):
    y = _randn(2, 7, dtype=dtype, seed=3)
    k = _randn(2, 7, dtype=dtype, seed=4)
    out = OPS.rk_stage(y, [k], torch.tensor([1.0, 2.0], dtype=torch.float64), [0.0])
    torch.testing.assert_close(out, y, rtol=0, atol=0)
    assert out.data_ptr() != y.data_ptr()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
def test_rk_stage_opcheck(dtype, B):
    y = _randn(B, 6, dtype=dtype, seed=5)
    ks = [_randn(B, 6, dtype=dtype, seed=6 + j) for j in range(3)]
    h = torch.linspace(0.1, 0.3, B, dtype=torch.float64)
    torch.library.opcheck(OPS.rk_stage.default, (y, ks, h, [0.5, 0.25, -1.0]))


# ---------------------------------------------------------------------------------------------------
# rk_stage_times
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
def test_rk_stage_times_values(dtype, B):
    t0 = torch.tensor([0.0, 1.5, -3.0][:B], dtype=torch.float64)
    h = torch.tensor([0.125, -0.3, 1e-3][:B], dtype=torch.float64)
    c = _C.tableau("dopri5")["c"]
    out = OPS.rk_stage_times(t0, h, c, dtype)
    assert out.shape == (len(c), B) and out.dtype == dtype
    for i, ci in enumerate(c):
        for b in range(B):
            if ci == 1.0:
                # One ulp (in the state's dtype) before t0 + h, towards t0: the field sees the left limit.
                end = torch.tensor(float(t0[b] + h[b]), dtype=dtype)
                start = torch.tensor(float(t0[b]), dtype=dtype)
                expected = torch.nextafter(end, start)
                assert out[i, b] == expected, (i, b, out[i, b], expected)
                assert out[i, b] != end
            else:
                expected = torch.tensor(float(t0[b]) + ci * float(h[b]), dtype=torch.float64).to(dtype)
                assert out[i, b] == expected, (i, b, out[i, b], expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
def test_rk_stage_times_opcheck(dtype, B):
    t0 = torch.linspace(0, 1, B, dtype=torch.float64)
    h = torch.full((B,), 0.25, dtype=torch.float64)
    torch.library.opcheck(OPS.rk_stage_times.default, (t0, h, [0.0, 0.5, 1.0], dtype))


# ---------------------------------------------------------------------------------------------------
# rk_error_control and step_size_control
# ---------------------------------------------------------------------------------------------------

def _error_control_inputs(dtype, B, D=12, seed=0, scale=1e-3):
    y0 = _randn(B, D, dtype=dtype, seed=seed)
    y1 = y0 + scale * _randn(B, D, dtype=dtype, seed=seed + 1)
    ks = [_randn(B, D, dtype=dtype, seed=seed + 2 + j) for j in range(7)]
    h = torch.tensor([0.05, -0.2, 0.8][:B], dtype=torch.float64)
    return y0, y1, ks, h


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("segments", [[12], [5, 12], [3, 3, 12]])  # the middle case has an empty segment
@pytest.mark.parametrize("err_scale", [1e-6, 1e-4, 1e-2, 1.0])
def test_rk_error_control_values(dtype, B, segments, err_scale):
    y0, y1, ks, h = _error_control_inputs(dtype, B)
    e = [err_scale * x for x in _C.tableau("dopri5")["e"]]
    S = len(segments)
    rtol = torch.tensor([1e-3, 1e-4, 1e-5][:S], dtype=torch.float64)
    atol = torch.tensor([1e-4, 1e-6, 1e-3][:S], dtype=torch.float64)
    ratio, accept, h_next = OPS.rk_error_control(y0, y1, ks, h, e, rtol, atol, segments, _control())
    assert ratio.dtype == torch.float64 and h_next.dtype == torch.float64 and accept.dtype == torch.bool
    assert ratio.shape == accept.shape == h_next.shape == (B,)
    expected = ref_ratio(y0, y1, ks, h, e, rtol.tolist(), atol.tolist(), segments)
    torch.testing.assert_close(ratio, expected, rtol=1e-10, atol=0)
    for b in range(B):
        acc, hn = ref_controller(float(ratio[b]), float(h[b]))
        assert bool(accept[b]) == acc
        assert float(h_next[b]) == pytest.approx(hn, rel=1e-12)
        assert math.copysign(1.0, float(h_next[b])) == math.copysign(1.0, float(h[b]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
def test_rk_error_control_values_large(dtype, B):
    # Large rows: the B = 1 path reduces one row in parallel, B > 1 splits rows across threads.
    D = 50000
    y0, y1, ks, h = _error_control_inputs(dtype, B, D=D, seed=5)
    e = [1e-3 * x for x in _C.tableau("tsit5")["e"]]
    segments = [17000, 17001, D]
    rtol = torch.tensor([1e-3, 1e-4, 1e-5], dtype=torch.float64)
    atol = torch.tensor([1e-4, 1e-6, 1e-3], dtype=torch.float64)
    with _threads(2):
        ratio, accept, h_next = OPS.rk_error_control(y0, y1, ks, h, e, rtol, atol, segments, _control())
    expected = ref_ratio(y0, y1, ks, h, e, rtol.tolist(), atol.tolist(), segments)
    torch.testing.assert_close(ratio, expected, rtol=1e-10, atol=0)
    for b in range(B):
        acc, hn = ref_controller(float(ratio[b]), float(h[b]))
        assert bool(accept[b]) == acc and float(h_next[b]) == pytest.approx(hn, rel=1e-12)


def test_rk_error_control_accepts_and_rejects():
    # Both branches must actually be exercised by the values test: make sure the inputs produce both.
    dtype = torch.float64
    y0, y1, ks, h = _error_control_inputs(dtype, 1)
    e = _C.tableau("dopri5")["e"]
    rtol = torch.tensor([1e-3], dtype=torch.float64)
    atol = torch.tensor([1e-4], dtype=torch.float64)
    small = OPS.rk_error_control(y0, y1, ks, h, [1e-6 * x for x in e], rtol, atol, [12], _control())
    large = OPS.rk_error_control(y0, y1, ks, h, e, rtol, atol, [12], _control())
    assert bool(small[1][0]) and float(small[0][0]) < 1
    assert not bool(large[1][0]) and float(large[0][0]) > 1
    assert abs(float(small[2][0])) >= abs(float(h[0]))  # never shrink after an accepted step
    assert abs(float(large[2][0])) < abs(float(h[0]))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rk_error_control_nan_is_rejected(dtype):
    y0, y1, ks, h = _error_control_inputs(dtype, 3)
    ks[3][1, 4] = float("nan")
    rtol = torch.tensor([1e-3], dtype=torch.float64)
    atol = torch.tensor([1e-4], dtype=torch.float64)
    ratio, accept, h_next = OPS.rk_error_control(y0, y1, ks, h, _C.tableau("dopri5")["e"], rtol, atol, [12],
                                                 _control())
    assert math.isnan(float(ratio[1])) or math.isinf(float(ratio[1]))
    assert not bool(accept[1])
    assert float(h_next[1]) == pytest.approx(float(h[1]) * CTRL["dfactor"], rel=1e-12)
    # The other samples are unaffected.
    assert math.isfinite(float(ratio[0])) and math.isfinite(float(ratio[2]))


def test_rk_error_control_zero_error_grows_by_ifactor():
    y0, y1, ks, h = _error_control_inputs(torch.float64, 3)
    rtol = torch.tensor([1e-3], dtype=torch.float64)
    atol = torch.tensor([1e-4], dtype=torch.float64)
    ratio, accept, h_next = OPS.rk_error_control(y0, y1, ks, h, [0.0] * 7, rtol, atol, [12], _control())
    assert (ratio == 0).all() and accept.all()
    torch.testing.assert_close(h_next, h * CTRL["ifactor"], rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rk_error_control_min_max_step(dtype):
    y0, y1, ks, h = _error_control_inputs(dtype, 3)
    e = _C.tableau("dopri5")["e"]
    rtol = torch.tensor([1e-3], dtype=torch.float64)
    atol = torch.tensor([1e-4], dtype=torch.float64)
    # |h| = 0.05, 0.2, 0.8 with min_step 0.1 and max_step 0.5: sample 0 is always accepted (|h| <= min),
    # sample 2 always rejected (|h| > max); h_next is clamped to [min, max].
    c = dict(CTRL, min_step=0.1, max_step=0.5)
    for scale in (1e-6, 1.0):
        ratio, accept, h_next = OPS.rk_error_control(y0, y1, ks, h, [scale * x for x in e], rtol, atol, [12],
                                                     _control(c))
        for b in range(3):
            acc, hn = ref_controller(float(ratio[b]), float(h[b]), c)
            assert bool(accept[b]) == acc
            assert float(h_next[b]) == pytest.approx(hn, rel=1e-12)
            assert 0.1 - 1e-15 <= abs(float(h_next[b])) <= 0.5 + 1e-15
        assert bool(accept[0]) and not bool(accept[2])


@pytest.mark.parametrize("B", BATCHES)
def test_step_size_control_values(B):
    ratios = [0.0, 1e-8, 0.3, 0.99, 1.0, 1.0000001, 3.0, 1e6, float("nan"), float("inf")]
    for c in (CTRL, dict(CTRL, safety=0.8, ifactor=5.0, dfactor=0.1, exponent=1 / 3),
              dict(CTRL, min_step=0.01, max_step=0.6)):
        for r in itertools.combinations(ratios, B):
            ratio = torch.tensor(r, dtype=torch.float64)
            h = torch.tensor([0.5, -0.001, 0.7][:B], dtype=torch.float64)
            accept, h_next = OPS.step_size_control(ratio, h, _control(c))
            assert accept.dtype == torch.bool and h_next.dtype == torch.float64
            for b in range(B):
                acc, hn = ref_controller(float(ratio[b]), float(h[b]), c)
                assert bool(accept[b]) == acc, (r, b, c)
                assert float(h_next[b]) == pytest.approx(hn, rel=1e-12), (r, b, c)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
def test_rk_error_control_opcheck(dtype, B):
    y0, y1, ks, h = _error_control_inputs(dtype, B, D=8)
    rtol = torch.tensor([1e-3, 1e-4], dtype=torch.float64)
    atol = torch.tensor([1e-4, 1e-6], dtype=torch.float64)
    e = _C.tableau("dopri5")["e"]
    torch.library.opcheck(OPS.rk_error_control.default, (y0, y1, ks, h, e, rtol, atol, [3, 8], _control()))


@pytest.mark.parametrize("B", BATCHES)
def test_step_size_control_opcheck(B):
    ratio = torch.tensor([0.5, 2.0, 0.0][:B], dtype=torch.float64)
    h = torch.tensor([0.1, -0.2, 0.3][:B], dtype=torch.float64)
    torch.library.opcheck(OPS.step_size_control.default, (ratio, h, _control()))


# ---------------------------------------------------------------------------------------------------
# rk_dense_output
# ---------------------------------------------------------------------------------------------------

def _dense_inputs(dtype, B, D=9, method="dopri5", seed=20):
    tab = _C.tableau(method)
    S = tab["stages"]
    y0 = _randn(B, D, dtype=dtype, seed=seed)
    y1 = y0 + 0.1 * _randn(B, D, dtype=dtype, seed=seed + 1)
    ks = [_randn(B, D, dtype=dtype, seed=seed + 2 + j) for j in range(S)]
    return tab, y0, y1, ks


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("method", ADAPTIVE)
@pytest.mark.parametrize("per_sample_t", [False, True])
def test_rk_dense_output_values(dtype, B, method, per_sample_t):
    tab, y0, y1, ks = _dense_inputs(dtype, B, method=method)
    D = y0.shape[1]
    # Sample 0: forward step (0.2, 0.7]; sample 1: another step, backward from 1.0 to 0.6 (h < 0) on its own
    # decreasing grid, or forward (0.3, 0.75] on the shared grid; sample 2: rejected (nothing is written).
    t0 = torch.tensor([0.2, 1.0 if per_sample_t else 0.3, 0.2][:B], dtype=torch.float64)
    h = torch.tensor([0.5, -0.4 if per_sample_t else 0.45, 0.5][:B], dtype=torch.float64)
    accept = torch.tensor([True, True, False][:B])
    t_shared = torch.tensor([0.0, 0.2, 0.3, 0.45, 0.7, 0.71, 0.9], dtype=torch.float64)
    if per_sample_t:
        rows = [t_shared, torch.tensor([1.2, 1.0, 0.95, 0.8, 0.6, 0.59, 0.1], dtype=torch.float64), t_shared]
        t_out = torch.stack(rows[:B]).contiguous()
        out_index = torch.tensor([2, 2, 2][:B], dtype=torch.long)
    else:
        t_out = t_shared
        out_index = torch.tensor([2, 3, 2][:B], dtype=torch.long)
    T = t_out.shape[-1]
    sentinel = -12345.0
    out = torch.full((T, B, D), sentinel, dtype=dtype)
    OPS.rk_dense_output(out, y0, y1, ks, h, t0, accept, t_out, out_index, tab["mid"])

    for b in range(B):
        tb = t_out[b] if t_out.dim() == 2 else t_out
        hb, t0b = float(h[b]), float(t0[b])
        y_mid = (y0[b].double() + hb * sum(m * k[b].double() for m, k in zip(tab["mid"], ks))).numpy()
        for i in range(T):
            ti = float(tb[i])
            inside = (i >= int(out_index[b]) and bool(accept[b])
                      and 0 < (ti - t0b) / hb <= 1.0)
            if inside:
                x = (ti - t0b) / hb
                ref = ref_quartic(y0[b].double().numpy(), y1[b].double().numpy(), y_mid,
                                  hb * ks[0][b].double().numpy(), hb * ks[-1][b].double().numpy(), x)
                torch.testing.assert_close(out[i, b].double(), torch.from_numpy(ref), **_tol(dtype))
            else:
                assert (out[i, b] == sentinel).all(), (b, i, ti)
    # Some rows were written (the test is not vacuous).
    assert (out != sentinel).any()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rk_dense_output_end_point_is_y1(dtype):
    tab, y0, y1, ks = _dense_inputs(dtype, 1)
    t_out = torch.tensor([0.0, 0.5], dtype=torch.float64)
    out = torch.zeros(2, 1, y0.shape[1], dtype=dtype)
    OPS.rk_dense_output(out, y0, y1, ks, torch.tensor([0.5], dtype=torch.float64),
                        torch.tensor([0.0], dtype=torch.float64), torch.tensor([True]), t_out,
                        torch.tensor([1]), tab["mid"])
    torch.testing.assert_close(out[1], y1, **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
def test_rk_dense_output_opcheck(dtype, B):
    tab, y0, y1, ks = _dense_inputs(dtype, B, D=5)
    t_out = torch.tensor([0.0, 0.1, 0.3, 0.6], dtype=torch.float64)
    out = torch.zeros(4, B, 5, dtype=dtype)
    args = (out, y0, y1, ks, torch.full((B,), 0.4, dtype=torch.float64), torch.zeros(B, dtype=torch.float64),
            torch.ones(B, dtype=torch.bool), t_out, torch.ones(B, dtype=torch.long), tab["mid"])
    torch.library.opcheck(OPS.rk_dense_output.default, args)


# ---------------------------------------------------------------------------------------------------
# rk_dense_eval / rk_dense_weights (the differentiable dense output)
# ---------------------------------------------------------------------------------------------------

def _dense_eval_case(dtype, B, method="dopri5", seed=60):
    tab, y0, y1, ks = _dense_inputs(dtype, B, D=6, method=method, seed=seed)
    h = torch.tensor([0.5, -0.25, 2.0][:B], dtype=torch.float64)
    t0 = torch.tensor([0.1, 1.0, -1.0][:B], dtype=torch.float64)
    return tab, y0, y1, ks, h, t0


def _ref_dense_eval(tab, y0, y1, ks, h, t0, t_eval):
    R, B, D = len(t_eval), y0.shape[0], y0.shape[1]
    out = torch.empty(R, B, D, dtype=torch.float64)
    for b in range(B):
        hb, t0b = float(h[b]), float(t0[b])
        y_mid = (y0[b].double() + hb * sum(m * k[b].double() for m, k in zip(tab["mid"], ks))).numpy()
        for r, tr in enumerate(t_eval.tolist()):
            x = (tr - t0b) / hb
            out[r, b] = torch.from_numpy(ref_quartic(y0[b].double().numpy(), y1[b].double().numpy(), y_mid,
                                                     hb * ks[0][b].double().numpy(),
                                                     hb * ks[-1][b].double().numpy(), x))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("method", ADAPTIVE)
def test_rk_dense_eval_values(dtype, B, method):
    tab, y0, y1, ks, h, t0 = _dense_eval_case(dtype, B, method)
    t_eval = torch.tensor([0.1, 0.3, 0.6, 0.35, 1.0], dtype=torch.float64)  # shared, x differs per sample
    out = OPS.rk_dense_eval(y0, y1, ks, h, t0, t_eval, tab["mid"])
    assert out.shape == (5, B, 6) and out.dtype == dtype
    torch.testing.assert_close(out.double(), _ref_dense_eval(tab, y0, y1, ks, h, t0, t_eval), **_tol(dtype))
    # x = 0 gives y0 (sample 0: t_eval[0] == t0[0]).
    torch.testing.assert_close(out[0, 0], y0[0], **_tol(dtype))


@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("method", ADAPTIVE)
def test_rk_dense_weights_values(B, method):
    tab, y0, y1, ks, h, t0 = _dense_eval_case(torch.float64, B, method)
    S = tab["stages"]
    t_eval = torch.tensor([0.1, 0.3, 0.6, 0.35, 1.0], dtype=torch.float64)
    w = OPS.rk_dense_weights(h, t0, t_eval, tab["mid"])
    assert w.shape == (5, B, 2 + S) and w.dtype == torch.float64
    # The weights reproduce the interpolant: out = w_y0 y0 + w_y1 y1 + sum_j w_kj k_j.
    recon = (w[..., 0:1] * y0[None] + w[..., 1:2] * y1[None]
             + sum(w[..., 2 + j:3 + j] * ks[j][None] for j in range(S)))
    torch.testing.assert_close(recon, _ref_dense_eval(tab, y0, y1, ks, h, t0, t_eval), rtol=1e-12, atol=1e-12)
    # Consistency: an interpolant of a constant state (k = 0) is that constant -> w_y0 + w_y1 == 1.
    torch.testing.assert_close(w[..., 0] + w[..., 1], torch.ones(5, B, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
def test_rk_dense_eval_opcheck(dtype, B):
    tab, y0, y1, ks, h, t0 = _dense_eval_case(dtype, B)
    t_eval = torch.tensor([0.2, 0.4], dtype=torch.float64)
    torch.library.opcheck(OPS.rk_dense_eval.default, (y0, y1, ks, h, t0, t_eval, tab["mid"]))
    torch.library.opcheck(OPS.rk_dense_weights.default, (h, t0, t_eval, tab["mid"]))


@pytest.mark.parametrize("B", BATCHES)
def test_differentiable_ops_autograd(B):
    # rk_stage and rk_dense_eval are linear in their state inputs and have autograd formulas: opcheck's
    # autograd registration test and a float64 gradcheck against finite differences.
    tab, y0, y1, ks, h, t0 = _dense_eval_case(torch.float64, B)
    y0 = y0.clone().requires_grad_(True)
    y1 = y1.clone().requires_grad_(True)
    ks = [k.clone().requires_grad_(True) for k in ks]
    t_eval = torch.tensor([0.2, 0.4], dtype=torch.float64)
    torch.library.opcheck(OPS.rk_stage.default, (y0, ks[:3], h, [0.5, 0.0, -1.0]))
    torch.library.opcheck(OPS.rk_dense_eval.default, (y0, y1, ks, h, t0, t_eval, tab["mid"]))
    assert torch.autograd.gradcheck(lambda y, *k: OPS.rk_stage(y, list(k), h, [0.5, 0.0, -1.0]), (y0, *ks[:3]))
    assert torch.autograd.gradcheck(lambda a, b, *k: OPS.rk_dense_eval(a, b, list(k), h, t0, t_eval, tab["mid"]),
                                    (y0, y1, *ks))


def test_rk_dense_eval_rejects_bad_inputs():
    tab, y0, y1, ks, h, t0 = _dense_eval_case(torch.float64, 2)
    t_eval = torch.tensor([0.2, 0.4], dtype=torch.float64)
    good = [y0, y1, ks, h, t0, t_eval, tab["mid"]]
    OPS.rk_dense_eval(*good)

    def with_(i, v):
        a = list(good)
        a[i] = v
        return a

    for args, pattern in [
        (with_(1, y1.float()), r"y1 must have dtype"),
        (with_(2, ks[:-1]), r"mid_coeffs has 7 entries but only 6 stages"),
        (with_(3, h.float()), r"h must be float64"),
        (with_(4, t0[:1]), r"t0 must have shape \[2\]"),
        (with_(5, t_eval.reshape(1, 2)), r"t_eval must be 1-D"),
        (with_(5, t_eval.float()), r"t_eval must be float64"),
        (with_(4, torch.tensor(0.0, dtype=torch.float64)), r"t0 must have shape \[2\]"),  # 0-dim
    ]:
        with pytest.raises(RuntimeError, match=pattern):
            OPS.rk_dense_eval(*args)
    with pytest.raises(RuntimeError, match=r"t0 must have shape \[2\]"):
        OPS.rk_dense_weights(h, t0[:1], t_eval, tab["mid"])
    with pytest.raises(RuntimeError, match=r"h must be 1-D"):
        OPS.rk_dense_weights(torch.tensor(0.5, dtype=torch.float64), t0, t_eval, tab["mid"])


# ---------------------------------------------------------------------------------------------------
# rk_commit
# ---------------------------------------------------------------------------------------------------

RUNNING, SUCCESS, MAX_STEPS, UNDERFLOW, NON_FINITE = (Status.RUNNING, Status.SUCCESS, Status.MAX_STEPS,
                                                      Status.STEP_UNDERFLOW, Status.NON_FINITE)
ACC, REJ, SINCE_OUT, NF_STREAK = (Counter.ACCEPTED, Counter.REJECTED, Counter.ATTEMPTS_SINCE_OUTPUT,
                                  Counter.NON_FINITE_STREAK)


def _commit_state(dtype, B, D=6, seed=40):
    st = dict(
        y0=_randn(B, D, dtype=dtype, seed=seed),
        k0=_randn(B, D, dtype=dtype, seed=seed + 1),
        t0=torch.tensor([0.0, 0.25, 0.5][:B], dtype=torch.float64),
        h=torch.tensor([0.3, 0.1, 0.2][:B], dtype=torch.float64),
        status=torch.full((B,), RUNNING, dtype=torch.int32),
        counters=torch.tensor([[3, 1, 2, 0], [5, 2, 4, 1], [7, 0, 1, 0]][:B], dtype=torch.long),
        out_index=torch.tensor([1, 2, 2][:B], dtype=torch.long),
    )
    ins = dict(
        y1=_randn(B, D, dtype=dtype, seed=seed + 2),
        k_last=_randn(B, D, dtype=dtype, seed=seed + 3),
        h_next=torch.tensor([0.6, 0.05, 0.4][:B], dtype=torch.float64),
        accept=torch.tensor([True, False, True][:B]),
        ratio=torch.tensor([0.5, 3.0, 0.1][:B], dtype=torch.float64),
    )
    return st, ins


def ref_commit(st, ins, t_out, max_num_steps):
    """DESIGN/ops.h semantics of rk_commit, written out per sample in plain Python."""
    st = {k: v.clone() for k, v in st.items()}
    B = st["y0"].shape[0]
    T = t_out.shape[-1]
    for b in range(B):
        if int(st["status"][b]) != RUNNING:
            continue
        tb = t_out[b] if t_out.dim() == 2 else t_out
        c = st["counters"][b]
        c[SINCE_OUT] += 1
        stalled = False
        if bool(ins["accept"][b]):
            t1 = float(st["t0"][b]) + float(st["h"][b])
            stalled = t1 == float(st["t0"][b])  # a step that does not move t passes no output
            d = 1.0 if float(st["h"][b]) > 0 else -1.0
            i = int(st["out_index"][b])
            while not stalled and i < T and d * (float(tb[i]) - t1) <= 0:
                i += 1
            if i != int(st["out_index"][b]):
                c[SINCE_OUT] = 0
            st["out_index"][b] = i
            st["y0"][b] = ins["y1"][b]
            st["k0"][b] = ins["k_last"][b]
            st["t0"][b] = t1
            c[ACC] += 1
            c[NF_STREAK] = 0
        else:
            c[REJ] += 1
            if not math.isfinite(float(ins["ratio"][b])):
                c[NF_STREAK] += 1
        st["h"][b] = ins["h_next"][b]
        t0, hb = float(st["t0"][b]), float(st["h"][b])
        if int(st["out_index"][b]) >= T:
            st["status"][b] = SUCCESS
        elif int(c[NF_STREAK]) >= MAX_NON_FINITE_RETRIES:
            st["status"][b] = NON_FINITE
        elif stalled or t0 + hb == t0:
            st["status"][b] = UNDERFLOW
        elif int(c[SINCE_OUT]) >= max_num_steps:
            st["status"][b] = MAX_STEPS
        if int(st["status"][b]) != RUNNING:
            st["h"][b] = 0.0  # a sample that stops stops moving
    return st


def _run_commit(st, ins, t_out, max_num_steps):
    st = {k: v.clone() for k, v in st.items()}
    OPS.rk_commit(st["y0"], st["k0"], st["t0"], st["h"], st["status"], st["counters"], st["out_index"],
                  ins["y1"], ins["k_last"], ins["h_next"], ins["accept"], ins["ratio"], t_out, max_num_steps)
    return st


def _assert_same_state(got, exp):
    for k in exp:
        torch.testing.assert_close(got[k], exp[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
def test_rk_commit_values(dtype, B):
    st, ins = _commit_state(dtype, B)
    t_out = torch.tensor([0.0, 0.1, 0.3, 0.35, 0.6, 0.75, 1.0], dtype=torch.float64)
    got = _run_commit(st, ins, t_out, 1000)
    exp = ref_commit(st, ins, t_out, 1000)
    _assert_same_state(got, exp)
    # Sample 0 was accepted and moved past the outputs at 0.1 and 0.3 (t1 = 0.3 included).
    assert int(got["out_index"][0]) == 3 and float(got["t0"][0]) == pytest.approx(0.3)
    torch.testing.assert_close(got["y0"][0], ins["y1"][0], rtol=0, atol=0)
    torch.testing.assert_close(got["k0"][0], ins["k_last"][0], rtol=0, atol=0)
    assert got["counters"][0].tolist() == [4, 1, 0, 0]
    if B > 1:
        # Sample 1 was rejected: only its counters and h change.
        torch.testing.assert_close(got["y0"][1], st["y0"][1], rtol=0, atol=0)
        assert float(got["t0"][1]) == 0.25 and float(got["h"][1]) == 0.05
        assert got["counters"][1].tolist() == [5, 3, 5, 1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_rk_commit_status_transitions(dtype):
    t_out = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    # success: the accepted step reaches the last output.
    st, ins = _commit_state(dtype, 1)
    st["t0"][0], st["h"][0], st["out_index"][0] = 0.75, 0.5, 2
    got = _run_commit(st, ins, t_out, 100)
    _assert_same_state(got, ref_commit(st, ins, t_out, 100))
    assert int(got["status"][0]) == SUCCESS
    # non-finite: the 10th non-finite rejection in a row.
    st, ins = _commit_state(dtype, 1)
    st["counters"][0, NF_STREAK] = MAX_NON_FINITE_RETRIES - 1
    ins["accept"][0], ins["ratio"][0] = False, float("nan")
    got = _run_commit(st, ins, t_out, 100)
    _assert_same_state(got, ref_commit(st, ins, t_out, 100))
    assert int(got["status"][0]) == NON_FINITE
    # underflow: t0 + h_next == t0.
    st, ins = _commit_state(dtype, 1)
    st["t0"][0] = 0.1
    ins["accept"][0], ins["ratio"][0], ins["h_next"][0] = False, 5.0, 1e-300
    got = _run_commit(st, ins, t_out, 100)
    _assert_same_state(got, ref_commit(st, ins, t_out, 100))
    assert int(got["status"][0]) == UNDERFLOW
    # max steps: attempts since the last output reach max_num_steps.
    st, ins = _commit_state(dtype, 1)
    st["counters"][0, SINCE_OUT] = 4
    ins["accept"][0] = False
    got = _run_commit(st, ins, t_out, 5)
    _assert_same_state(got, ref_commit(st, ins, t_out, 5))
    assert int(got["status"][0]) == MAX_STEPS
    # finished samples are left alone entirely.
    st, ins = _commit_state(dtype, 3)
    st["status"][:] = torch.tensor([SUCCESS, MAX_STEPS, RUNNING], dtype=torch.int32)
    got = _run_commit(st, ins, t_out, 100)
    _assert_same_state(got, ref_commit(st, ins, t_out, 100))
    for k in ("y0", "k0", "t0", "h", "counters", "out_index"):
        torch.testing.assert_close(got[k][:2], st[k][:2], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rk_commit_backward_per_sample_grid(dtype):
    st, ins = _commit_state(dtype, 3)
    st["t0"][:] = torch.tensor([1.0, 1.0, 0.8], dtype=torch.float64)
    st["h"][:] = torch.tensor([-0.3, -0.6, -0.1], dtype=torch.float64)
    st["out_index"][:] = 1
    ins["accept"][:] = True
    t_out = torch.tensor([[1.0, 0.9, 0.7, 0.4, 0.0]] * 3, dtype=torch.float64)
    got = _run_commit(st, ins, t_out, 100)
    _assert_same_state(got, ref_commit(st, ins, t_out, 100))
    assert got["out_index"].tolist() == [3, 4, 2]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
def test_rk_commit_opcheck(dtype, B):
    st, ins = _commit_state(dtype, B)
    t_out = torch.tensor([0.0, 0.1, 0.3, 0.35, 0.6, 0.75, 1.0], dtype=torch.float64)
    args = (st["y0"], st["k0"], st["t0"], st["h"], st["status"], st["counters"], st["out_index"],
            ins["y1"], ins["k_last"], ins["h_next"], ins["accept"], ins["ratio"], t_out, 1000)
    torch.library.opcheck(OPS.rk_commit.default, args)


# ---------------------------------------------------------------------------------------------------
# Every op is covered
# ---------------------------------------------------------------------------------------------------

def test_every_registered_op_is_tested():
    # dir(torch.ops.fastdiffeq) only lists ops already looked up; ask the dispatcher for every schema.
    names = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastdiffeq::")}
    tested = {"rk_stage", "rk_stage_times", "rk_error_control", "step_size_control", "rk_dense_output", "rk_commit",
              "rk_dense_eval", "rk_dense_weights", "initial_step_probe", "initial_step_final"}
    assert tested <= names, f"ops missing from torch.ops.fastdiffeq: {tested - names}"
    assert names <= tested, f"ops without tests in this file: {names - tested}"


# ---------------------------------------------------------------------------------------------------
# Bad inputs raise RuntimeError with a message naming the argument (never a crash)
# ---------------------------------------------------------------------------------------------------

def _good_stage_args(B=2, D=4, dtype=torch.float64):
    y = torch.zeros(B, D, dtype=dtype)
    ks = [torch.ones(B, D, dtype=dtype) for _ in range(3)]
    return y, ks, torch.ones(B, dtype=torch.float64), [0.1, 0.2, 0.3]


def test_rk_stage_rejects_bad_inputs():
    y, ks, h, c = _good_stage_args()
    bad = [
        ((y.reshape(-1), ks, h, c), r"y must be a 2-D"),                                  # 1-D state
        ((y, [k.float() for k in ks], h, c), r"each stage in ks must have dtype"),       # dtype mismatch
        ((y, ks[:1] + [torch.ones(2, 5, dtype=torch.float64)] + ks[2:], h, c), r"each stage in ks must have shape"),
        ((y, ks, h.float(), c), r"h must be float64"),
        ((y, ks, torch.ones(3, dtype=torch.float64), c), r"h must have shape \[2\]"),
        ((y, ks, torch.tensor(1.0, dtype=torch.float64), c), r"h must have shape \[2\]"),  # 0-dim h
        ((y, ks[:2], h, c), r"coeffs has 3 entries but only 2 stages"),
        ((y, [], h, []), r"ks must hold at least one stage"),
        ((y.int(), [k.int() for k in ks], h, c), r"y must be float32 or float64"),
        ((y.half(), [k.half() for k in ks], h, c), r"y must be float32 or float64"),
        ((y.t(), [k.t() for k in ks], torch.ones(4, dtype=torch.float64), c), r"y must be contiguous"),
        ((y, [torch.ones(2, 4, dtype=torch.float64)] * 15, h, [0.1] * 15), r"at most 14 stages"),
    ]
    for args, pattern in bad:
        with pytest.raises(RuntimeError, match=pattern):
            OPS.rk_stage(*args)


def test_rk_stage_times_rejects_bad_inputs():
    t0 = torch.zeros(2, dtype=torch.float64)
    h = torch.ones(2, dtype=torch.float64)
    for args, pattern in [
        ((t0.float(), h, [0.5], torch.float64), r"t0 must be float64"),
        ((t0, h[:1], [0.5], torch.float64), r"h must have shape \[2\]"),
        ((t0.reshape(2, 1), h, [0.5], torch.float64), r"t0 must be 1-D"),
        ((torch.tensor(0.0, dtype=torch.float64), h, [0.5], torch.float64), r"t0 must be 1-D"),  # 0-dim
        ((t0, h, [0.5], torch.int32), r"dtype must be float32 or float64"),
    ]:
        with pytest.raises(RuntimeError, match=pattern):
            OPS.rk_stage_times(*args)


def test_rk_error_control_rejects_bad_inputs():
    y0, y1, ks, h = _error_control_inputs(torch.float64, 2)
    e = _C.tableau("dopri5")["e"]
    rtol = torch.tensor([1e-3], dtype=torch.float64)
    atol = torch.tensor([1e-4], dtype=torch.float64)
    good = [y0, y1, ks, h, e, rtol, atol, [12], _control()]
    OPS.rk_error_control(*good)  # sanity: the unmodified arguments work

    def with_(i, v):
        a = list(good)
        a[i] = v
        return a

    def with_segments(ends):
        a = with_(7, ends)
        a[5] = rtol.expand(len(ends)).contiguous()
        a[6] = atol.expand(len(ends)).contiguous()
        return a

    bad = [
        (with_(1, y1.float()), r"y1 must have dtype"),
        (with_(1, y1[:, :5].contiguous()), r"y1 must have shape"),
        (with_(3, h.float()), r"h must be float64"),
        (with_(5, torch.tensor([1e-3, 1e-3], dtype=torch.float64)), r"rtol must have shape \[1\]"),
        (with_(6, atol.float()), r"atol must be float64"),
        (with_(7, [5]), r"segment_ends: the last segment must end at D = 12"),
        (with_segments([8, 5, 12]), r"segment_ends must be non-decreasing"),
        (with_segments([5, 20]), r"segment_ends must be non-decreasing"),
        (with_segments([-1, 12]), r"segment_ends must be non-decreasing from 0"),
        (with_(7, []), r"segment_ends must name at least one segment"),
        (with_(8, _control(dict(CTRL, safety=-1.0))), r"control: safety must be in \(0, 1\]"),
        (with_(8, _control(dict(CTRL, safety=2.0))), r"control: safety must be in \(0, 1\]"),
        (with_(8, _control(dict(CTRL, ifactor=0.5))), r"control: ifactor must be > 1"),
        (with_(8, _control(dict(CTRL, dfactor=1.5))), r"control: dfactor must be in \(0, 1\)"),
        (with_(8, _control(dict(CTRL, exponent=0.0))), r"control: exponent must be > 0"),
        (with_(8, _control(dict(CTRL, min_step=1.0, max_step=0.5))), r"control: max_step must be >= min_step"),
        (with_(8, _control(dict(CTRL, max_step=0.0))), r"control: max_step must be > 0"),
        (with_(8, [0.9, 10.0]), r"control must hold 6 values"),
    ]
    for args, pattern in bad:
        with pytest.raises(RuntimeError, match=pattern):
            OPS.rk_error_control(*args)


def test_step_size_control_rejects_bad_inputs():
    ratio = torch.tensor([0.5, 2.0], dtype=torch.float64)
    h = torch.tensor([0.1, 0.2], dtype=torch.float64)
    for args, pattern in [
        ((ratio[:1], h), r"ratio must have shape \[2\]"),
        ((ratio.float(), h), r"ratio must be float64"),
        ((ratio, h.float()), r"h must be float64"),
        ((ratio, h.reshape(2, 1)), r"h must be 1-D"),
        ((ratio, torch.tensor(0.1, dtype=torch.float64)), r"h must be 1-D"),  # 0-dim
    ]:
        with pytest.raises(RuntimeError, match=pattern):
            OPS.step_size_control(*args, _control())
    with pytest.raises(RuntimeError, match=r"control: dfactor must be in \(0, 1\)"):
        OPS.step_size_control(ratio, h, _control(dict(CTRL, dfactor=0.0)))


def test_rk_dense_output_rejects_bad_inputs():
    tab, y0, y1, ks = _dense_inputs(torch.float64, 2, D=5)
    t_out = torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64)
    h = torch.full((2,), 0.4, dtype=torch.float64)
    t0 = torch.zeros(2, dtype=torch.float64)
    acc = torch.ones(2, dtype=torch.bool)
    idx = torch.ones(2, dtype=torch.long)
    out = torch.zeros(3, 2, 5, dtype=torch.float64)
    good = [out, y0, y1, ks, h, t0, acc, t_out, idx, tab["mid"]]
    OPS.rk_dense_output(*good)

    def with_(i, v):
        a = list(good)
        a[i] = v
        return a

    bad = [
        (with_(0, torch.zeros(4, 2, 5, dtype=torch.float64)), r"out must have shape \[3, 2, 5\]"),
        (with_(0, torch.zeros(3, 2, 5, dtype=torch.float32)), r"out must be a contiguous Double tensor"),
        (with_(2, y1.float()), r"y1 must have dtype"),
        (with_(3, ks[:1]), r"mid_coeffs has 7 entries but only 1 stages"),
        (with_(6, acc.int()), r"accept must be a \[2\] Bool tensor"),
        (with_(7, t_out.float()), r"t_out must be float64"),
        (with_(7, torch.zeros(3, 3, dtype=torch.float64)), r"t_out must be \[T\] or \[B, T\]"),
        (with_(7, torch.tensor(0.0, dtype=torch.float64)), r"t_out must be \[T\] or \[B, T\]"),  # 0-dim
        (with_(8, idx.int()), r"out_index must be a \[2\] Long tensor"),
    ]
    for args, pattern in bad:
        with pytest.raises(RuntimeError, match=pattern):
            OPS.rk_dense_output(*args)


def test_rk_commit_rejects_bad_inputs():
    st, ins = _commit_state(torch.float64, 2)
    t_out = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)

    def call(**over):
        s = {k: v.clone() for k, v in st.items()}
        i = dict(ins)
        for k, v in over.items():
            (s if k in s else i)[k] = v
        mns = over.get("max_num_steps", 10)
        OPS.rk_commit(s["y0"], s["k0"], s["t0"], s["h"], s["status"], s["counters"], s["out_index"],
                      i["y1"], i["k_last"], i["h_next"], i["accept"], i["ratio"], over.get("t_out", t_out), mns)

    call()  # sanity
    for over, pattern in [
        (dict(counters=torch.zeros(2, len(Counter) - 1, dtype=torch.long)),
         rf"counters must be a contiguous int64 \[2, {len(Counter)}\]"),
        (dict(counters=torch.zeros(2, len(Counter), dtype=torch.int32)), r"counters must be a contiguous int64"),
        (dict(status=torch.zeros(2, dtype=torch.int64)), r"status must be a \[2\] Int tensor"),
        (dict(out_index=torch.zeros(2, dtype=torch.int32)), r"out_index must be a \[2\] Long tensor"),
        (dict(accept=torch.ones(2, dtype=torch.uint8)), r"accept must be a \[2\] Bool tensor"),
        (dict(y1=ins["y1"].float()), r"y1 must have dtype"),
        (dict(k_last=ins["k_last"][:, :3].contiguous()), r"k_last must have shape"),
        (dict(h_next=ins["h_next"][:1]), r"h_next must have shape \[2\]"),
        (dict(t_out=t_out.float()), r"t_out must be float64"),
        (dict(t0=torch.tensor(0.0, dtype=torch.float64)), r"t0 must have shape \[2\]"),  # 0-dim
        (dict(max_num_steps=0), r"max_num_steps must be positive"),
    ]:
        with pytest.raises(RuntimeError, match=pattern):
            call(**over)


# ---------------------------------------------------------------------------------------------------
# Tableaus: order conditions from rooted trees
# ---------------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _trees(n):
    """All rooted trees with n nodes, each a sorted tuple of its subtrees."""
    if n == 1:
        return ((),)
    found = set()
    for forest in _forests(n - 1):
        found.add(tuple(sorted(forest)))
    return tuple(sorted(found))


@lru_cache(maxsize=None)
def _forests(m):
    if m == 0:
        return ((),)
    out = []
    for k in range(1, m + 1):
        for t in _trees(k):
            for rest in _forests(m - k):
                out.append((t,) + rest)
    return tuple(out)


def _order(t):
    return 1 + sum(_order(s) for s in t)


def _gamma(t):
    g = _order(t)
    for s in t:
        g *= _gamma(s)
    return g


def _phi(t, A):
    """Elementary weight vector: Phi(leaf) = 1, Phi([t1..tm]) = prod_k (A Phi(t_k))."""
    v = np.ones(A.shape[0])
    for s in t:
        v = v * (A @ _phi(s, A))
    return v


def _tab_arrays(name):
    tab = _C.tableau(name)
    S = tab["stages"]
    A = np.zeros((S, S))
    for i, row in enumerate(tab["a"]):
        A[i, :len(row)] = row
    return tab, A, np.array(tab["b"]), np.array(tab["e"]), np.array(tab["c"]), np.array(tab["mid"])


def test_tree_counts():
    # Sanity of the generator: 1, 1, 2, 4, 9 rooted trees of orders 1..5 (17 conditions for order 5).
    assert [len(_trees(n)) for n in range(1, 6)] == [1, 1, 2, 4, 9]


def _order_residuals(w, A, p, theta=1.0):
    """sum_i w_i Phi_i(t) - theta^|t| / gamma(t) for every tree of order <= p."""
    return {t: float(w @ _phi(t, A)) - theta ** _order(t) / _gamma(t)
            for n in range(1, p + 1) for t in _trees(n)}


EXPECTED_ORDERS = {"dopri5": (5, 4, 4), "tsit5": (5, 4, 4), "bosh3": (3, 2, 3)}  # (b, b - e, mid)


def test_methods_list():
    # The tableaus, the multistep Adams methods (no tableau: fastdiffeq._adams) and scipy.
    assert set(fastdiffeq.METHODS) == set(METHODS) | {"explicit_adams", "implicit_adams", "fixed_adams", "scipy_solver"}
    for m in METHODS:
        assert _C.tableau(m)["name"] == m
    with pytest.raises(ValueError):
        _C.tableau("rk45")


@pytest.mark.parametrize("method", CHECKED_HERE)
def test_tableau_structure(method):
    tab, A, b, e, c, mid = _tab_arrays(method)
    S = tab["stages"]
    assert tab["order"] == EXPECTED_ORDERS[method][0]
    assert len(c) == len(b) == len(e) == len(mid) == S == len(tab["a"])
    assert all(len(row) == i for i, row in enumerate(tab["a"]))  # explicit: strictly lower triangular
    # Row sums of A are the stage times.
    np.testing.assert_allclose(A.sum(axis=1), c, rtol=0, atol=1e-14)
    assert c[0] == 0.0
    # FSAL: the last stage is evaluated at y1 = y0 + h sum b_j k_j, at the end of the step.
    np.testing.assert_allclose(A[-1], b, rtol=0, atol=1e-15)
    assert c[-1] == 1.0 and b[-1] == 0.0
    # The error weights sum to zero (both solutions are consistent) but are not all zero.
    assert abs(e.sum()) < 1e-14
    assert np.abs(e).max() > 1e-3
    assert mid.sum() == pytest.approx(0.5, abs=1e-14)


@pytest.mark.parametrize("method", CHECKED_HERE)
def test_tableau_order_conditions(method):
    tab, A, b, e, c, mid = _tab_arrays(method)
    p_b, p_emb, p_mid = EXPECTED_ORDERS[method]
    res = _order_residuals(b, A, p_b)
    bad = {t: r for t, r in res.items() if abs(r) > 1e-12}
    assert not bad, f"{method}: b violates order conditions {bad}"
    # The propagated solution is not of a higher order than claimed for every tree (sanity of the checker).
    nxt = _order_residuals(b, A, p_b + 1)
    assert max(abs(r) for r in nxt.values()) > 1e-6

    b_hat = b - e
    res = _order_residuals(b_hat, A, p_emb)
    bad = {t: r for t, r in res.items() if abs(r) > 1e-12}
    assert not bad, f"{method}: the embedded weights b - e violate order conditions {bad}"
    # ... and the embedded solution is of strictly lower order, so the error estimate is meaningful.
    res = _order_residuals(b_hat, A, p_emb + 1)
    assert max(abs(r) for n_r in [res] for r in n_r.values()) > 1e-6


@pytest.mark.parametrize("method", CHECKED_HERE)
def test_tableau_midpoint_weights(method):
    # y0 + h sum mid_j k_j approximates y(t0 + h/2): the continuous-extension conditions at theta = 1/2.
    tab, A, b, e, c, mid = _tab_arrays(method)
    p_mid = EXPECTED_ORDERS[method][2]
    res = _order_residuals(mid, A, p_mid, theta=0.5)
    bad = {t: r for t, r in res.items() if abs(r) > 1e-12}
    assert not bad, f"{method}: mid weights violate the theta=1/2 conditions {bad}"


# ---------------------------------------------------------------------------------------------------
# initial_step_probe / initial_step_final: Hairer's initial step, fused
# ---------------------------------------------------------------------------------------------------

def ref_initial_step(y0, f0, field, t0, direction, rtol, atol, segment_ends, order, c=CTRL):
    """Hairer, Norsett & Wanner I, II.4 as torchdiffeq computes it, with the unfused path's roundings
    (solver/initial_step.cpp): scale, y/scale and the probe in the state's dtype, norms (max over
    segments of the RMS) in float64, h0 and h rounded to the state's dtype, then clamped and signed."""
    dtype = y0.dtype
    B, D = y0.shape
    rt = torch.empty(D, dtype=torch.float64)
    at = torch.empty(D, dtype=torch.float64)
    begin = 0
    for s, end in enumerate(segment_ends):
        rt[begin:end], at[begin:end] = rtol[s], atol[s]
        begin = end

    def norm(x):
        worst = torch.zeros(B, dtype=torch.float64)
        begin = 0
        for end in segment_ends:
            if end > begin:
                worst = torch.maximum(worst, x[:, begin:end].double().square().mean(1).sqrt())
            begin = end
        return worst

    def rounded(v):
        return float(torch.tensor(v, dtype=torch.float64).to(dtype))

    scale = (at + y0.abs() * rt).to(dtype)
    d0, d1 = norm(y0 / scale), norm(f0 / scale)
    h0 = torch.tensor([rounded(1e-6 if (a < 1e-5 or b < 1e-5) else 0.01 * a / b)
                       for a, b in zip(d0.tolist(), d1.tolist())], dtype=torch.float64)
    y_probe = y0 + (h0 * direction).to(dtype)[:, None] * f0
    t_probe = (t0 + h0 * direction).to(dtype)
    f1 = field(t_probe, y_probe)
    d2 = norm((f1 - f0) / scale)
    h = []
    for b in range(B):
        hb0, db1, db2 = float(h0[b]), float(d1[b]), float(d2[b]) / float(h0[b])
        h1 = max(1e-6, hb0 * 1e-3) if (db1 <= 1e-15 and db2 <= 1e-15) else (0.01 / max(db1, db2)) ** (1 / (order + 1))
        hb = rounded(min(100 * hb0, h1))
        h.append(min(max(hb, c["min_step"]), c["max_step"]) * direction)
    return dict(h0=h0, d1=d1, y_probe=y_probe, t_probe=t_probe, f1=f1, h=torch.tensor(h, dtype=torch.float64))


def _initial_step_case(dtype, B, segments, scale=1.0):
    D = segments[-1]
    y0 = _randn(B, D, dtype=dtype, seed=70) * scale
    A = _randn(D, D, dtype=torch.float64, seed=71).to(dtype)
    field = lambda t, y: torch.tanh(y @ A.T) * scale + t[:, None]  # noqa: E731
    t0 = torch.linspace(0.0, 1.0, B, dtype=torch.float64)
    return y0, field, t0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("segments", [[6], [2, 2, 6]])  # the second has an empty segment
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_initial_step_ops_match_reference(dtype, B, segments, direction):
    y0, field, t0 = _initial_step_case(dtype, B, segments)
    f0 = field(t0.to(dtype), y0)
    rtol = torch.tensor([1e-3, 1e-5, 1e-4][:len(segments)], dtype=torch.float64)
    atol = torch.tensor([1e-6, 1e-4, 1e-5][:len(segments)], dtype=torch.float64)
    c = dict(CTRL, min_step=1e-4, max_step=0.5)
    ref = ref_initial_step(y0, f0, field, t0, direction, rtol.tolist(), atol.tolist(), segments, 4, c)
    h0, d1, y_probe, t_probe = OPS.initial_step_probe(y0, f0, t0, direction, rtol, atol, segments)
    assert h0.dtype == d1.dtype == torch.float64 and y_probe.dtype == t_probe.dtype == dtype
    torch.testing.assert_close(d1, ref["d1"], rtol=1e-13, atol=0)
    torch.testing.assert_close(h0, ref["h0"], rtol=1e-13 if dtype == torch.float64 else 0, atol=0)
    # Elementwise in the state's dtype with the same roundings: equal, not just close.
    torch.testing.assert_close(y_probe, ref["y_probe"], rtol=0, atol=0)
    torch.testing.assert_close(t_probe, ref["t_probe"], rtol=0, atol=0)
    f1 = field(t_probe, y_probe)
    h = OPS.initial_step_final(y0, f0, f1, h0, d1, direction, rtol, atol, segments, 4, _control(c))
    torch.testing.assert_close(h, ref["h"], rtol=1e-12, atol=0)
    assert (torch.sign(h) == direction).all()


def test_initial_step_ops_clamp_and_small_norms():
    # d0, d1 < 1e-5 gives h0 = 1e-6; the first step is clamped to [min_step, max_step].
    y0 = torch.zeros(1, 4, dtype=torch.float64)
    f0 = torch.zeros(1, 4, dtype=torch.float64)
    t0 = torch.zeros(1, dtype=torch.float64)
    tol = torch.tensor([1e-6], dtype=torch.float64)
    h0, d1, y_probe, t_probe = OPS.initial_step_probe(y0, f0, t0, -1.0, tol, tol, [4])
    assert float(h0) == 1e-6 and float(d1) == 0.0 and float(t_probe) == -1e-6
    h = OPS.initial_step_final(y0, f0, f0, h0, d1, -1.0, tol, tol, [4], 4, _control(dict(CTRL, min_step=0.01)))
    assert float(h) == -0.01


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B", BATCHES)
def test_initial_step_ops_opcheck(dtype, B):
    y0, field, t0 = _initial_step_case(dtype, B, [2, 5])
    f0 = field(t0.to(dtype), y0)
    rtol = torch.tensor([1e-3, 1e-4], dtype=torch.float64)
    atol = torch.tensor([1e-6, 1e-5], dtype=torch.float64)
    torch.library.opcheck(OPS.initial_step_probe.default, (y0, f0, t0, 1.0, rtol, atol, [2, 5]))
    h0, d1, y_probe, t_probe = OPS.initial_step_probe(y0, f0, t0, 1.0, rtol, atol, [2, 5])
    f1 = field(t_probe, y_probe)
    torch.library.opcheck(OPS.initial_step_final.default,
                          (y0, f0, f1, h0, d1, 1.0, rtol, atol, [2, 5], 4, _control()))


def test_initial_step_ops_reject_bad_inputs():
    y0, field, t0 = _initial_step_case(torch.float64, 2, [5])
    f0 = field(t0, y0)
    tol = torch.tensor([1e-6], dtype=torch.float64)
    good = [y0, f0, t0, 1.0, tol, tol, [5]]

    def with_(i, v):
        a = list(good)
        a[i] = v
        return a

    for args, pattern in [
        (with_(1, f0.float()), r"f0 must have dtype"),
        (with_(2, torch.tensor(0.0, dtype=torch.float64)), r"t0 must have shape \[2\]"),  # 0-dim
        (with_(3, 0.5), r"direction must be 1 or -1"),
        (with_(4, torch.tensor([1e-6, 1e-6], dtype=torch.float64)), r"rtol must have shape \[1\]"),
        (with_(6, [3]), r"segment_ends: the last segment must end at D = 5"),
    ]:
        with pytest.raises(RuntimeError, match=pattern):
            OPS.initial_step_probe(*args)
    h0, d1, y_probe, t_probe = OPS.initial_step_probe(*good)
    f1 = field(t_probe, y_probe)
    final = [y0, f0, f1, h0, d1, 1.0, tol, tol, [5], 4, _control()]
    for i, v, pattern in [
        (2, f1[:1].contiguous(), r"f1 must have shape"),
        (4, d1.float(), r"d1 must be float64"),
        (9, -1, r"order must be in \[0, 64\)"),
        (10, _control(dict(CTRL, safety=2.0)), r"control: safety must be in \(0, 1\]"),
    ]:
        args = list(final)
        args[i] = v
        with pytest.raises(RuntimeError, match=pattern):
            OPS.initial_step_final(*args)


# ---------------------------------------------------------------------------------------------------
# The error norm without overflow
# ---------------------------------------------------------------------------------------------------

def _ref_ratio_scaled(y0, y1, ks, h, e, rtol, atol):
    """ref_ratio computed as max * sqrt(mean((r / max)^2)): exact where the plain sum of squares overflows."""
    err = h.double()[:, None] * sum(ej * k.double() for ej, k in zip(e, ks))
    tol = atol + rtol * torch.maximum(y0.double().abs(), y1.double().abs())
    r = err / tol
    m = r.abs().amax(dim=1)
    return m * (r / m[:, None]).square().mean(dim=1).sqrt()


@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("magnitude", [1e150, 1e200, 1e300])
def test_rk_error_control_norm_does_not_overflow(B, magnitude):
    # Elements of ~1e200 square to inf in the plain sum: the ratio must stay finite and exact (F12: a field
    # returning 1e300 made the norm inf, i.e. "non-finite", and the step was rejected forever).
    y0, y1, ks, h = _error_control_inputs(torch.float64, B, D=40)
    ks = [k * magnitude for k in ks]
    e = _C.tableau("dopri5")["e"]
    rtol = torch.tensor([1e-3], dtype=torch.float64)
    atol = torch.tensor([1e-4], dtype=torch.float64)
    ratio, accept, h_next = OPS.rk_error_control(y0, y1, ks, h, e, rtol, atol, [40], _control())
    expected = _ref_ratio_scaled(y0, y1, ks, h, e, 1e-3, 1e-4)
    assert torch.isfinite(ratio).all()
    torch.testing.assert_close(ratio, expected, rtol=1e-12, atol=0)
    assert not accept.any() and (h_next.abs() < h.abs()).all()  # rejected and shrunk, like any large error


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_rk_error_control_non_finite_elements_stay_non_finite(bad):
    # The overflow fallback never turns a genuinely non-finite element into a finite ratio.
    y0, y1, ks, h = _error_control_inputs(torch.float64, 2, D=40)
    ks = [k * 1e200 for k in ks]  # the plain sum overflows in both rows
    ks[2][1, 7] = bad
    rtol = torch.tensor([1e-3], dtype=torch.float64)
    atol = torch.tensor([1e-4], dtype=torch.float64)
    ratio, accept, _ = OPS.rk_error_control(y0, y1, ks, h, _C.tableau("dopri5")["e"], rtol, atol, [40], _control())
    assert math.isfinite(float(ratio[0])) and not math.isfinite(float(ratio[1]))
    if math.isnan(bad):
        assert math.isnan(float(ratio[1]))
    assert not bool(accept[1])


def test_initial_step_norm_does_not_overflow():
    # f0 ~ 1e300 / scale 1e-3: the squares overflow, d1 must not (F12: d1 = inf made h0 = 0).
    y0 = torch.ones(1, 8, dtype=torch.float64)
    f0 = torch.full((1, 8), 1e300, dtype=torch.float64)
    tol = torch.tensor([1e-3], dtype=torch.float64)
    h0, d1, _, _ = OPS.initial_step_probe(y0, f0, torch.zeros(1, dtype=torch.float64), 1.0, tol, tol, [8])
    scale = 1e-3 + 1e-3
    assert math.isfinite(float(d1))
    assert float(d1) == pytest.approx(1e300 / scale, rel=1e-14)
    assert float(h0) > 0


# ---------------------------------------------------------------------------------------------------
# F12: op-level hardening (each of these crashed, hung or gave a silent wrong answer before)
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad_index", [-10**9, -3, -2, -1, 4, 10**9])
def test_rk_commit_rejects_out_of_range_out_index(bad_index):
    # -1e9 crashed the process (SIGSEGV / munmap_chunk), -3 read t_out[-3..-1] and reported success.
    st, ins = _commit_state(torch.float64, 2)
    t_out = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    st["out_index"][1] = bad_index
    before = {k: v.clone() for k, v in st.items()}
    with pytest.raises(RuntimeError, match=rf"out_index\[1\] = {bad_index} is outside \[0, 3\]"):
        _run_commit_in_place(st, ins, t_out, 100)
    for k in st:  # nothing was written
        torch.testing.assert_close(st[k], before[k], rtol=0, atol=0)


def _run_commit_in_place(st, ins, t_out, max_num_steps):
    OPS.rk_commit(st["y0"], st["k0"], st["t0"], st["h"], st["status"], st["counters"], st["out_index"],
                  ins["y1"], ins["k_last"], ins["h_next"], ins["accept"], ins["ratio"], t_out, max_num_steps)


@pytest.mark.parametrize("bad_index", [-10**9, -2, 4])
def test_rk_dense_output_rejects_out_of_range_out_index(bad_index):
    # -2 wrote 32 bytes before `out`; -1e9 crashed.
    tab, y0, y1, ks = _dense_inputs(torch.float64, 2, D=4)
    t_out = torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64)
    out = torch.zeros(3, 2, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match=rf"out_index\[0\] = {bad_index} is outside \[0, 3\]"):
        OPS.rk_dense_output(out, y0, y1, ks, torch.full((2,), 0.4, dtype=torch.float64),
                            torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.bool), t_out,
                            torch.tensor([bad_index, 1]), tab["mid"])
    assert (out == 0).all()


def test_mixed_meta_and_real_arguments_are_rejected():
    # rk_stage(cpu y, [meta k]) dispatched to the Meta kernel and returned an uninitialised CPU tensor;
    # rk_commit with a meta t_out silently did nothing.
    y, ks, h, c = _good_stage_args()
    with pytest.raises(RuntimeError, match=r"each stage in ks must be on cpu"):
        OPS.rk_stage(y, [k.to("meta") for k in ks], h, c)
    with pytest.raises(RuntimeError, match=r"h must be on cpu"):
        OPS.rk_stage(y, ks, h.to("meta"), c)
    st, ins = _commit_state(torch.float64, 2)
    with pytest.raises(RuntimeError, match=r"t_out must be on cpu"):
        _run_commit_in_place(st, ins, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, device="meta"), 100)
    tab, y0, y1, ks = _dense_inputs(torch.float64, 2, D=4)
    with pytest.raises(RuntimeError, match=r"out must be on cpu"):
        OPS.rk_dense_output(torch.zeros(2, 2, 4, dtype=torch.float64, device="meta"), y0, y1, ks,
                            torch.full((2,), 0.4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64),
                            torch.ones(2, dtype=torch.bool), torch.tensor([0.0, 0.1], dtype=torch.float64),
                            torch.ones(2, dtype=torch.long), tab["mid"])


def test_meta_kernels_validate_like_the_real_ones():
    # 0-dim t0 / h / t_eval raised IndexError in the Meta kernels (or were accepted); now the same message.
    meta = lambda x: x.to("meta") if isinstance(x, torch.Tensor) else [v.to("meta") for v in x]  # noqa: E731
    t0 = torch.tensor(0.0, dtype=torch.float64)
    h = torch.ones(2, dtype=torch.float64)
    for device_of in (lambda x: x, meta):
        with pytest.raises(RuntimeError, match=r"t0 must be 1-D"):
            OPS.rk_stage_times(device_of(t0), device_of(h), [0.5], torch.float64)
        with pytest.raises(RuntimeError, match=r"h must be 1-D"):
            OPS.rk_dense_weights(device_of(t0), device_of(t0), device_of(h), [0.5, 0.5])
        with pytest.raises(RuntimeError, match=r"t_eval must be 1-D"):
            OPS.rk_dense_weights(device_of(h), device_of(h), device_of(t0), [0.5, 0.5])
        y, ks, hh, c = _good_stage_args()
        with pytest.raises(RuntimeError, match=r"coeffs has 3 entries but only 2 stages"):
            OPS.rk_stage(device_of(y), device_of(ks[:2]), device_of(hh), c)
        st, ins = _commit_state(torch.float64, 2)
        st, ins = ({k: device_of(v) for k, v in d.items()} for d in (st, ins))
        with pytest.raises(RuntimeError, match=r"k0 overlaps k_last"):
            OPS.rk_commit(st["y0"], st["k0"], st["t0"], st["h"], st["status"], st["counters"], st["out_index"],
                          ins["y1"], st["k0"], ins["h_next"], ins["accept"], ins["ratio"],
                          device_of(torch.tensor([0.0, 1.0], dtype=torch.float64)), 10)


@pytest.mark.parametrize("alias", ["k_last=y0", "k_last=k0", "h=t0", "k0=y0", "h_next=h", "t_out=t0",
                                   "y1=y0 view"])
def test_rk_commit_rejects_overlapping_arguments(alias):
    # k_last the same tensor as y0 (also h = t0, k0 = y0) gave other answers than with copies.
    st, ins = _commit_state(torch.float64, 2)
    t_out = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    args = dict(st, **ins)
    target, source = alias.split("=")
    if source == "y0 view":
        buf = torch.zeros(3, 6, dtype=torch.float64)
        args["y0"], args["y1"] = buf[:2], buf[1:]  # rows 1 of y0 and 0 of y1 share memory
        expected = r"y0 overlaps y1"
    else:
        args[target] = args[source]
        t_out_alias = target == "t_out"
        if t_out_alias:
            t_out = args["t0"]
        names = sorted([target, source], key=["y0", "k0", "t0", "h", "status", "counters", "out_index", "y1",
                                                 "k_last", "h_next", "accept", "ratio", "t_out"].index)
        expected = rf"{names[0]} overlaps {names[1]}"
    with pytest.raises(RuntimeError, match=expected):
        OPS.rk_commit(args["y0"], args["k0"], args["t0"], args["h"], args["status"], args["counters"],
                      args["out_index"], args["y1"], args["k_last"], args["h_next"], args["accept"], args["ratio"],
                      t_out, 100)


def test_rk_commit_accepts_disjoint_views_of_one_buffer():
    # The overlap check is exact: views of one buffer that do not share bytes are fine.
    st, ins = _commit_state(torch.float64, 2)
    buf = torch.empty(4, 6, dtype=torch.float64)
    y0, y1 = buf[:2], buf[2:]
    y0.copy_(st["y0"])
    y1.copy_(ins["y1"])
    st["y0"], ins["y1"] = y0, y1
    exp = ref_commit(dict(st), dict(ins), torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), 100)
    _run_commit_in_place(st, ins, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64), 100)
    _assert_same_state(st, exp)


def test_rk_dense_output_rejects_out_overlapping_an_input():
    # y0 a view of out: the op changed rows it then read.
    tab, y0, y1, ks = _dense_inputs(torch.float64, 1, D=4)
    out = torch.zeros(3, 1, 4, dtype=torch.float64)
    out[0].copy_(y0)
    args = (torch.full((1,), 0.4, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
            torch.ones(1, dtype=torch.bool), torch.tensor([0.0, 0.1, 0.3], dtype=torch.float64),
            torch.ones(1, dtype=torch.long), tab["mid"])
    with pytest.raises(RuntimeError, match=r"out overlaps y0"):
        OPS.rk_dense_output(out, out[0], y1, ks, *args)
    with pytest.raises(RuntimeError, match=r"out overlaps a stage in ks"):
        OPS.rk_dense_output(out, y0, y1, [ks[0], out[2]] + ks[2:], *args)


def test_rk_commit_zero_step_is_underflow_not_success():
    # F12: an accepted step of size 0 (t0 + h == t0) counted as progress: every output "passed", status
    # success, rows never written. It is a step-size underflow now, and passes no output.
    st, ins = _commit_state(torch.float64, 1)
    st["t0"][0], st["h"][0] = 1e18, 0.0
    ins["accept"][0], ins["ratio"][0], ins["h_next"][0] = True, 0.0, 0.0
    t_out = torch.tensor([1e18, 1e18 + 1e4], dtype=torch.float64)
    got = _run_commit(st, ins, t_out, 100)
    _assert_same_state(got, ref_commit(st, ins, t_out, 100))
    assert int(got["status"][0]) == UNDERFLOW and int(got["out_index"][0]) == 1
    # The same for a step that is not 0 but too small to move t (1e-6 at t = 1e18), even when the next one
    # would be large enough.
    st["h"][0], ins["h_next"][0] = 1e-6, 1e6
    got = _run_commit(st, ins, t_out, 100)
    assert int(got["status"][0]) == UNDERFLOW and int(got["out_index"][0]) == 1
    # ... and the dense output writes nothing for it.
    tab, y0, y1, ks = _dense_inputs(torch.float64, 1, D=4)
    out = torch.zeros(2, 1, 4, dtype=torch.float64)
    OPS.rk_dense_output(out, y0, y1, ks, torch.zeros(1, dtype=torch.float64), torch.full((1,), 1e18,
                        dtype=torch.float64), torch.ones(1, dtype=torch.bool), t_out, torch.ones(1, dtype=torch.long),
                        tab["mid"])
    assert (out == 0).all()


def test_rk_error_control_does_not_depend_on_the_thread_count():
    """One group of 1e5 elements is summed over fixed chunks in index order: the same ratio bits with 1 or 2
    threads (at::parallel_reduce's thread-dependent split made them differ)."""
    D = 100_003
    y0, y1, *ks = [_randn(1, D, dtype=torch.float64, seed=s) for s in range(9)]
    h = torch.tensor([0.1], dtype=torch.float64)
    tol = torch.tensor([1e-6], dtype=torch.float64)
    e = _C.tableau("dopri5")["e"]
    out = []
    for n in (1, 2):
        with _threads(n):
            out.append(OPS.rk_error_control(y0, y1, ks, h, e, tol, tol, [D], _C.ControllerParams().pack())[0])
    assert float(out[0]) == float(out[1])
