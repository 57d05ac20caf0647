"""Every Runge-Kutta method fastdiffeq offers: order conditions from each tableau's data (_C.tableau),
convergence slopes on fixed steps, parity with torchdiffeq 0.2.5 (values and NFE) for the fixed-grid methods
(euler, midpoint, heun2, heun3, rk4) and the adaptive ones added with them (fehlberg2, adaptive_heun,
dopri8), gradients (gradcheck of 'direct' and 'checkpoint', odeint_adjoint against torchdiffeq's), and the
errors of unsupported combinations.
"""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch

import fastdiffeq
from fastdiffeq import _C

torchdiffeq = pytest.importorskip("torchdiffeq")

pytestmark = pytest.mark.usefixtures("single_thread")

DT = torch.float64
FIXED_METHODS = [m for m in _C.methods if _C.tableau(m)["stepping"] == "fixed"]
ADAPTIVE_METHODS = [m for m in _C.methods if _C.tableau(m)["stepping"] == "adaptive"]
NEW_ADAPTIVE = ["fehlberg2", "adaptive_heun", "dopri8"]


# --------------------------------------------------------------------------------------------------------
# Order conditions, from the data
# --------------------------------------------------------------------------------------------------------

@lru_cache(None)
def _trees(n):
    """Rooted trees with n vertices, each a sorted tuple of its subtrees."""
    if n == 1:
        return ((),)
    return tuple(sorted(_forests(n - 1)))


@lru_cache(None)
def _forests(n):
    """Multisets of rooted trees with n vertices in all (sorted tuples of trees)."""
    if n == 0:
        return frozenset({()})
    out = set()
    for k in range(1, n + 1):
        for t in _trees(k):
            for f in _forests(n - k):
                out.add(tuple(sorted(f + (t,))))
    return frozenset(out)


def _order_of(tree):
    return 1 + sum(_order_of(s) for s in tree)


def _gamma(tree):
    return _order_of(tree) * math.prod(_gamma(s) for s in tree)


def _tableau(name):
    d = _C.tableau(name)
    S = d["stages"]
    A = torch.zeros(S, S, dtype=DT)
    for i, row in enumerate(d["a"]):
        A[i, :len(row)] = torch.tensor(row, dtype=DT)
    return d, A, torch.tensor(d["c"], dtype=DT), torch.tensor(d["b"], dtype=DT)


def _max_defect(A, weights, order):
    """max over the rooted trees of `order` vertices of |weights . Phi(tree) - 1/gamma(tree)|."""
    @lru_cache(None)
    def phi(tree):  # the stage vector of a tree: prod over subtrees of A phi(subtree)
        v = torch.ones(A.shape[0], dtype=DT)
        for s in tree:
            v = v * (A @ phi(s))
        return v

    return max(abs(float(weights @ phi(t)) - 1.0 / _gamma(t)) for t in _trees(order))


def test_tree_counts():
    # 1, 1, 2, 4, 9, 20, 48, 115 rooted trees of orders 1..8 (OEIS A000081).
    assert [len(_trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]


@pytest.mark.parametrize("name", _C.methods)
def test_order_conditions(name):
    d, A, c, b = _tableau(name)
    p = d["order"]
    assert d["stepping"] in ("adaptive", "fixed")
    assert 1 <= d["stages"] <= 14
    torch.testing.assert_close(A.sum(1), c, rtol=0, atol=1e-14)  # c_i = sum_j a_ij
    assert torch.all(torch.triu(A) == 0), "explicit methods only"
    tol = 1e-10 if name == "dopri8" else 1e-13  # dopri8's coefficients are rational approximations
    for q in range(1, p + 1):
        assert _max_defect(A, b, q) < tol, f"{name}: an order-{q} condition fails"
    assert _max_defect(A, b, p + 1) > 1e-6, f"{name}: order is higher than {p}"
    if d["stepping"] == "adaptive":
        e = torch.tensor(d["e"], dtype=DT)
        assert abs(float(e.sum())) < 1e-14  # the embedded solution is consistent
        # The embedded solution b - e has order >= 1 and is not the propagated one.
        assert _max_defect(A, b - e, 1) < 1e-14 and float(e.abs().max()) > 0
        assert abs(sum(d["mid"]) - 0.5) < 1e-14  # y_mid is a consistent half step
        if d["fsal"]:
            torch.testing.assert_close(A[-1, :-1], b[:-1], rtol=0, atol=0)
            assert float(b[-1]) == 0.0 and float(c[-1]) == 1.0


def test_method_lists_come_from_the_tableaus():
    assert set(FIXED_METHODS) == {"euler", "midpoint", "heun2", "heun3", "rk4"}
    assert {"dopri5", "tsit5", "bosh3", "fehlberg2", "adaptive_heun", "dopri8"} == set(ADAPTIVE_METHODS)
    assert fastdiffeq.METHODS == tuple(_C.methods) + ("explicit_adams", "implicit_adams", "fixed_adams",
                                                      "scipy_solver")


# --------------------------------------------------------------------------------------------------------
# Convergence slopes on fixed steps
# --------------------------------------------------------------------------------------------------------

def pendulum(t, y):
    return torch.stack([y[1], -torch.sin(y[0]) + 0.3 * torch.cos(t)])


def _reference(t_end):
    from scipy.integrate import solve_ivp
    sol = solve_ivp(lambda t, y: [y[1], -math.sin(y[0]) + 0.3 * math.cos(t)], (0.0, t_end), [1.0, 0.0],
                    method="DOP853", rtol=1e-13, atol=1e-14)
    return torch.tensor(sol.y[:, -1], dtype=DT)


EXPECTED_ORDER = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4, "dopri5": 5, "tsit5": 5,
                  "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2, "dopri8": 8}


@pytest.mark.parametrize("name", _C.methods)
def test_convergence_slope(name):
    p = EXPECTED_ORDER[name]
    t_end = 2.0
    # Step counts where the error is well above round-off and in the asymptotic range.
    ns = [2, 4, 8] if p >= 7 else [16, 32, 64]
    ref = _reference(t_end)
    t = torch.tensor([0.0, t_end], dtype=DT)
    errs = []
    for n in ns:
        h = t_end / n
        if name in FIXED_METHODS:
            kw = dict(options=dict(step_size=h))
        else:  # every step accepted with the same h
            kw = dict(rtol=1e10, atol=1e10, options=dict(first_step=h, min_step=h, max_step=h,
                                                         step_t=torch.linspace(h, t_end, n, dtype=DT)))
        y = fastdiffeq.odeint(pendulum, torch.tensor([1.0, 0.0], dtype=DT), t, method=name, **kw)
        errs.append(float((y[-1] - ref).abs().max()))
    slopes = [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]
    assert abs(slopes[-1] - p) < 0.35, f"{name}: slopes {slopes}, errors {errs}"


# --------------------------------------------------------------------------------------------------------
# Fixed-grid parity with torchdiffeq
# --------------------------------------------------------------------------------------------------------

class Counter(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f
        self.times = []

    def forward(self, t, y):
        self.times.append(float(t))
        return self.f(t, y)


A_LIN = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=DT)


def forced(t, y):
    return y @ A_LIN.T + torch.sin(3 * t)


def oscillator(t, state):
    p, q = state
    return q[:, 0] * torch.cos(t), -p[:, None]


OSC_Y0 = (torch.tensor([1.0, -0.5], dtype=DT), torch.tensor([[0.25], [2.0]], dtype=DT))


def grid_thirds(func, y0, t):
    # A user grid: 7 points per output interval, through every output time.
    return torch.cat([torch.linspace(float(a), float(b), 8, dtype=t.dtype)[:-1] for a, b in zip(t[:-1], t[1:])]
                     + [t[-1:]])


FIXED_CASES = {
    "step_size": dict(options=dict(step_size=0.07)),
    "step_size_cubic": dict(options=dict(step_size=0.07, interp="cubic")),
    "step_size_perturb": dict(options=dict(step_size=0.1, perturb=True)),
    "default_grid": dict(options=None),
    "grid_constructor": dict(options=dict(grid_constructor=grid_thirds)),
    "step_size_coarser_than_outputs": dict(options=dict(step_size=0.75)),
}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("case", list(FIXED_CASES))
@pytest.mark.parametrize("name", FIXED_METHODS)
def test_fixed_grid_parity(name, case, reverse):
    t = torch.linspace(0.0, 2.0, 7, dtype=DT)
    if reverse:
        t = t.flip(0)
    y0 = torch.tensor([1.0, 0.5], dtype=DT)
    f_t, f_f = Counter(forced), Counter(forced)
    with torch.no_grad():
        y_t = torchdiffeq.odeint(f_t, y0, t, method=name, **FIXED_CASES[case])
        y_f = fastdiffeq.odeint(f_f, y0, t, method=name, **FIXED_CASES[case])
    torch.testing.assert_close(y_f, y_t, rtol=0, atol=1e-12)
    assert len(f_f.times) == len(f_t.times) == fastdiffeq.last_stats().nfe
    torch.testing.assert_close(torch.tensor(f_f.times), torch.tensor(f_t.times), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", FIXED_METHODS)
def test_fixed_grid_parity_tuple_and_float32(name):
    t = torch.linspace(0.0, 3.0, 4, dtype=DT)
    kw = dict(method=name, options=dict(step_size=0.1, interp="cubic"))
    with torch.no_grad():
        y_t = torchdiffeq.odeint(oscillator, OSC_Y0, t, **kw)
        y_f = fastdiffeq.odeint(oscillator, OSC_Y0, t, **kw)
    for a, b in zip(y_f, y_t):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    y0 = torch.tensor([1.0, 0.5])

    def forced32(tt, y):
        return y @ A_LIN.float().T + torch.sin(3 * tt)

    with torch.no_grad():
        a = fastdiffeq.odeint(forced32, y0, t.float(), method=name, options=dict(step_size=0.1))
        b = torchdiffeq.odeint(forced32, y0, t.float(), method=name, options=dict(step_size=0.1))
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_grid_constructor_sees_the_callers_t_in_both_directions():
    # As torchdiffeq (whose own test_grid_constructor checks it): a decreasing t reaches the constructor as is,
    # and the backward pass of odeint_adjoint builds each interval's grid from t[i] down to t[i-1].
    seen = []

    def grid(func, y0, t):
        seen.append(t.tolist())
        return torch.linspace(float(t[0]), float(t[-1]), 11, dtype=t.dtype)

    y0 = torch.tensor(1.0, dtype=DT, requires_grad=True)
    fastdiffeq.odeint_adjoint(lambda t, y: y, y0, torch.tensor([0.0, 1.0], dtype=DT), method="euler",
                              options=dict(grid_constructor=grid), adjoint_params=()).sum().backward()
    assert seen == [[0.0, 1.0], [1.0, 0.0]]
    torch.testing.assert_close(y0.grad, torch.tensor(1 + 1.1 ** 10, dtype=DT))  # ys[0] is y0 itself


def test_single_output_time_costs_nothing():
    f = Counter(forced)
    y = fastdiffeq.odeint(f, torch.ones(2, dtype=DT), torch.tensor([0.5], dtype=DT), method="rk4",
                          options=dict(step_size=0.1))
    assert y.shape == (1, 2) and f.times == [] and fastdiffeq.last_stats().nfe == 0


# --------------------------------------------------------------------------------------------------------
# Adaptive parity: the problems of test_parity.py with the new methods
# --------------------------------------------------------------------------------------------------------

from test_parity import CASES, Recorder  # noqa: E402

PARITY_NAMES = ["linear10", "vdp", "time_dependent", "reverse_vdp", "reverse_time_dependent", "tuple", "step_t",
                "jump_t", "reverse_jump_t", "norm_max", "norm_tuple", "mlp_f64", "mlp_f32", "min_max_step",
                "controller_options"]


@pytest.mark.parametrize("case_name", PARITY_NAMES)
@pytest.mark.parametrize("name", NEW_ADAPTIVE)
def test_adaptive_parity(name, case_name):
    case = CASES[case_name]
    kwargs = dict(case.kwargs, method=name)
    if name != "dopri8":  # low-order methods: looser tolerances keep the step counts (and the test) small
        scale = 1e4 if name == "adaptive_heun" else 1e3
        kwargs["rtol"] = [r * scale for r in kwargs["rtol"]] if isinstance(kwargs.get("rtol"), list) else \
            kwargs.get("rtol", 1e-7) * scale
        kwargs["atol"] = [a * scale for a in kwargs["atol"]] if isinstance(kwargs.get("atol"), list) else \
            kwargs.get("atol", 1e-9) * scale
    rec_t, rec_f = Recorder(case.func), Recorder(case.func)
    with torch.no_grad():
        y_t = torchdiffeq.odeint(rec_t, case.y0, case.t, **kwargs)
        y_f = fastdiffeq.odeint(rec_f, case.y0, case.t, **kwargs)
    stats = fastdiffeq.last_stats()
    assert stats.nfe == len(rec_f.times) == len(rec_t.times)
    assert (stats.n_accepted, stats.n_rejected) == (rec_t.accepted, rec_t.rejected)
    per_step = _C.tableau(name)["stages"] - 1
    assert stats.nfe == 2 + per_step * stats.n_steps + case.n_jumps
    # dopri8 takes the same steps, but their sizes agree less tightly: its first steps are far below the
    # tolerance, so their error estimate h sum_j e_j k_j (14 terms of size ~1 cancelling to ~1e-14) is
    # round-off, and its summation order (a BLAS matmul there, a fused loop here) moves the next h by ~1e-5
    # relative (up to ~1e-3 on the time-dependent problem), which the controller carries along; step counts agree.
    C, time_tol = (3.0, 1e-2) if name == "dopri8" else (1.0, 1e-8)
    if case.dtype == torch.float32:  # float32 states: round-off in the state and the error estimate (test_parity.py)
        C, time_tol = 3.0, 1e-2
    for i, (a, b) in enumerate(zip(y_t if isinstance(y_t, tuple) else (y_t,),
                                   y_f if isinstance(y_f, tuple) else (y_f,))):
        rtol = kwargs.get("rtol", 1e-7)
        atol = kwargs.get("atol", 1e-9)
        rtol, atol = (rtol[i] if isinstance(rtol, list) else rtol), (atol[i] if isinstance(atol, list) else atol)
        excess = float(((b - a).abs() / (atol + rtol * a.abs())).max())
        assert excess <= C, f"{name}/{case_name}[{i}]: values differ by {excess:.3g} x the tolerance scale"
    # Same steps: the same evaluation times, up to the round-off in the error ratio.
    torch.testing.assert_close(torch.tensor(rec_f.times, dtype=DT), torch.tensor(rec_t.times, dtype=DT),
                               rtol=time_tol, atol=time_tol)


# --------------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------------

def _functional(method, mode, options, rtol=1e-7, atol=1e-9):
    t = torch.tensor([0.0, 0.37, 1.0], dtype=DT)

    def run(y0, A, b):
        def field(tt, y):
            return torch.tanh(y @ A.T) + b * torch.cos(tt)

        kw = dict(rtol=rtol, atol=atol, method=method, options=options, gradient=mode)
        if mode == "checkpoint":
            kw["gradient_params"] = (A, b)
        return fastdiffeq.odeint(field, y0, t, **kw)

    return run


def _inputs():
    y0 = torch.tensor([[0.5, -0.3], [1.1, 0.2]], dtype=DT, requires_grad=True)
    A = torch.tensor([[-0.3, 1.0], [-1.2, 0.1]], dtype=DT, requires_grad=True)
    b = torch.tensor([0.2, -0.1], dtype=DT, requires_grad=True)
    return y0, A, b


@pytest.mark.parametrize("mode", ["direct", "checkpoint"])
@pytest.mark.parametrize("name, options", [
    ("rk4", dict(step_size=0.1)),
    ("heun3", dict(step_size=0.15, interp="cubic")),
    ("euler", None),
])
def test_gradcheck_fixed_grid(name, options, mode):
    run = _functional(name, mode, options)
    assert torch.autograd.gradcheck(run, _inputs(), eps=1e-5, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("mode", ["direct", "checkpoint"])
@pytest.mark.parametrize("name", ["fehlberg2", "dopri8"])
def test_gradcheck_adaptive_new_methods(name, mode):
    h = 0.05  # every step accepted with the same h: the discrete map is smooth in the inputs
    run = _functional(name, mode, dict(first_step=h, min_step=h, max_step=h))
    assert torch.autograd.gradcheck(run, _inputs(), eps=1e-5, atol=1e-9, rtol=1e-7)


class MLPField(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.l1 = torch.nn.Linear(2, 8).double()
        self.l2 = torch.nn.Linear(8, 2).double()
        with torch.no_grad():
            for q in self.parameters():
                q.copy_(torch.randn(q.shape, generator=g, dtype=DT) * 0.5)

    def forward(self, t, y):
        return self.l2(torch.tanh(self.l1(y))) * (1 + 0.3 * torch.sin(t))


def _adjoint_grads(lib, method, options, t, rtol=1e-9, atol=1e-11):
    field = MLPField()
    y0 = torch.tensor([[0.5, -0.3], [1.1, 0.2]], dtype=DT, requires_grad=True)
    kw = dict(method=method, options=options, rtol=rtol, atol=atol)
    ys = lib.odeint_adjoint(field, y0, t, **kw)
    (ys * torch.linspace(0.5, 1.5, ys.numel(), dtype=DT).view_as(ys)).sum().backward()
    return [ys.detach(), y0.grad] + [q.grad for q in field.parameters()]


@pytest.mark.parametrize("name, options", [
    ("rk4", dict(step_size=0.05)),
    ("midpoint", dict(step_size=0.1, interp="cubic")),
    ("euler", None),
])
def test_fixed_grid_adjoint_matches_torchdiffeq(name, options):
    t = torch.tensor([0.0, 0.4, 1.0], dtype=DT)
    ours = _adjoint_grads(fastdiffeq, name, options, t)
    theirs = _adjoint_grads(torchdiffeq, name, options, t)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["fehlberg2", "dopri8"])
def test_adaptive_adjoint_matches_torchdiffeq(name):
    t = torch.tensor([0.0, 0.4, 1.0], dtype=DT)
    # Continuous adjoints (torchdiffeq: one solve per output interval): equal within the tolerance.
    rtol, atol, tol = (1e-7, 1e-9, 1e-5) if name == "fehlberg2" else (1e-9, 1e-11, 1e-6)
    ours = _adjoint_grads(fastdiffeq, name, None, t, rtol, atol)
    theirs = _adjoint_grads(torchdiffeq, name, None, t, rtol, atol)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_fixed_grid_checkpoint_matches_direct_with_tuple_state():
    field = torch.nn.Linear(3, 3).double()

    def f(t, state):
        x, v = state
        return v, -field(x) * torch.cos(t)

    t = torch.linspace(0.0, 1.0, 4, dtype=DT)
    grads = []
    for mode in ("direct", "checkpoint"):
        x0 = torch.tensor([0.1, 0.2, 0.3], dtype=DT, requires_grad=True)
        v0 = torch.tensor([1.0, -1.0, 0.5], dtype=DT, requires_grad=True)
        xs, vs = fastdiffeq.odeint(f, (x0, v0), t, method="rk4", options=dict(step_size=0.1, interp="cubic"),
                                   gradient=mode, gradient_params=tuple(field.parameters()))
        (xs.sum() + vs.square().sum()).backward()
        grads.append([x0.grad, v0.grad] + [q.grad.clone() for q in field.parameters()])
        field.zero_grad()
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------------

def _call(**kw):
    return fastdiffeq.odeint(forced, torch.ones(2, dtype=DT), torch.linspace(0, 1, 3, dtype=DT), **kw)


@pytest.mark.parametrize("kw, exc, pattern", [
    (dict(method="rk4", options=dict(step_size=0.1, grid_constructor=grid_thirds)), ValueError, "mutually exclusive"),
    (dict(method="rk4", options=dict(interp="quadratic")), ValueError, r"options\['interp'\]"),
    (dict(method="rk4", options=dict(step_size=-0.1)), ValueError, r"options\['step_size'\]"),
    (dict(method="rk4", options=dict(perturb=1)), TypeError, r"options\['perturb'\]"),
    (dict(method="rk4", options=dict(first_step=0.1)), ValueError, r"unknown key.*first_step.*fixed-grid"),
    (dict(method="rk4", options=dict(grid_constructor=lambda f, y, t: t[:2])), ValueError, "time grid"),
    (dict(method="rk4", options=dict(grid_constructor=lambda f, y, t: [0.0, 1.0])), TypeError, "grid_constructor"),
    (dict(method="euler", progress=True), ValueError, "progress"),
    (dict(method="dopri5", options=dict(step_size=0.1)), ValueError, "step_size"),
])
def test_fixed_grid_bad_options(kw, exc, pattern):
    with pytest.raises(exc, match=pattern):
        _call(**kw)


def test_unsupported_combinations_raise():
    two = torch.tensor([0.0, 1.0], dtype=DT)
    with pytest.raises(ValueError, match=r"needs options\['step_size'\]"):
        fastdiffeq.odeint(forced, torch.ones(2, dtype=DT), two, method="rk4", event_fn=lambda t, y: y[0])
    with pytest.raises(ValueError, match="fixed-grid method 'rk4' in odeint_adjoint"):
        fastdiffeq.odeint_adjoint(MLPField(), torch.ones(2, dtype=DT), two, method="rk4",
                                  options=dict(step_size=0.1), event_fn=lambda t, y: y[0])
    with pytest.raises(ValueError, match="one value"):
        fastdiffeq.odeint(forced, torch.ones(2, dtype=DT), two, method="rk4", options=dict(step_size=0.1),
                          event_fn=lambda t, y: y)
    field = MLPField()
    y0 = torch.ones(2, dtype=DT)
    with pytest.raises(ValueError, match="adjoint_method='rk4'"):
        fastdiffeq.odeint_adjoint(field, y0, torch.linspace(0, 1, 3, dtype=DT), adjoint_method="rk4",
                                  adjoint_options=dict(step_size=0.1))
    with pytest.raises(ValueError, match="method='euler' with adjoint_method='dopri5'"):
        fastdiffeq.odeint_adjoint(field, y0, torch.linspace(0, 1, 3, dtype=DT), method="euler",
                                  adjoint_method="dopri5")
    with pytest.raises(ValueError, match="fixed-grid"):
        fastdiffeq.solve_ivp(lambda t, y: -y, torch.ones(3, 2, dtype=DT), torch.linspace(0, 1, 3, dtype=DT),
                             method="rk4")


# --------------------------------------------------------------------------------------------------------
# torchdiffeq's step callbacks
# --------------------------------------------------------------------------------------------------------

class WithCallbacks(torch.nn.Module):
    """A field that records torchdiffeq's step callbacks: (name, t0, dt, y0) per call."""

    def __init__(self, f, names=("callback_step", "callback_accept_step", "callback_reject_step")):
        super().__init__()
        self.f = f
        self.calls = []
        for name in names:
            setattr(self, name, self._recorder(name))

    def _recorder(self, name):
        def record(t0, y0, dt):
            ys = y0 if isinstance(y0, tuple) else (y0,)
            self.calls.append((name, float(t0), float(dt), tuple(y.detach().clone() for y in ys)))
        return record

    def forward(self, t, y):
        return self.f(t, y)


def _same_calls(ours, theirs, tol, ytol=None):
    """Same callbacks in the same order, with the same t0 and dt (to tol) and y0 (to ytol: states drift by
    round-off between the two implementations)."""
    assert [c[0] for c in ours] == [c[0] for c in theirs]
    ytol = tol if ytol is None else ytol
    for a, b in zip(ours, theirs):
        assert a[1] == pytest.approx(b[1], rel=tol, abs=tol) and a[2] == pytest.approx(b[2], rel=tol, abs=tol)
        for u, v in zip(a[3], b[3]):
            torch.testing.assert_close(u, v, rtol=ytol, atol=ytol)


@pytest.mark.parametrize("case", [
    dict(func=forced, y0=torch.tensor([1.0, 0.5], dtype=DT), t=torch.linspace(0, 2, 5, dtype=DT)),
    dict(func=forced, y0=torch.tensor([1.0, 0.5], dtype=DT), t=torch.linspace(2, 0, 5, dtype=DT), method="fehlberg2",
         rtol=1e-5, atol=1e-7),
    dict(func=oscillator, y0=OSC_Y0, t=torch.linspace(0, 3, 4, dtype=DT), method="bosh3", rtol=1e-4, atol=1e-6),
    dict(func=forced, y0=torch.tensor([1.0, 0.5], dtype=DT), t=torch.linspace(0, 2, 5, dtype=DT),
         options=dict(step_t=torch.tensor([0.3, 1.1], dtype=DT))),
    dict(func=forced, y0=torch.tensor([1.0, 0.5], dtype=DT), t=torch.linspace(0, 2, 5, dtype=DT), method="rk4",
         options=dict(step_size=0.3)),
    dict(func=oscillator, y0=OSC_Y0, t=torch.linspace(3, 0, 4, dtype=DT), method="midpoint",
         options=dict(step_size=0.4, interp="cubic")),
])
@pytest.mark.filterwarnings("ignore:Solver .* does not support callbacks")
def test_callbacks_called_as_torchdiffeq_calls_them(case):
    case = dict(case)
    f = case.pop("func")
    ours, theirs = WithCallbacks(f), WithCallbacks(f)
    with torch.no_grad():
        fastdiffeq.odeint(ours, **case)
        torchdiffeq.odeint(theirs, **case)
    assert ours.calls and any(c[0] == "callback_step" for c in ours.calls)
    _same_calls(ours.calls, theirs.calls, 1e-9, 1e-7)


def test_callbacks_in_every_gradient_mode_and_the_adjoint_forward():
    y0 = torch.tensor([1.0, 0.5], dtype=DT)
    t = torch.linspace(0, 1, 3, dtype=DT)
    reference = WithCallbacks(forced)
    with torch.no_grad():
        fastdiffeq.odeint(reference, y0, t)
    for mode in ("direct", "checkpoint"):
        f = WithCallbacks(forced)
        y = y0.clone().requires_grad_(True)
        fastdiffeq.odeint(f, y, t, gradient=mode, gradient_params=()).sum().backward()
        _same_calls(f.calls, reference.calls, 1e-12)  # the checkpoint replay calls none
    f = WithCallbacks(forced)
    y = y0.clone().requires_grad_(True)
    fastdiffeq.odeint_adjoint(f, y, t, adjoint_params=()).sum().backward()
    _same_calls(f.calls, reference.calls, 1e-12)  # the forward solve's; the backward solve calls none


def test_callbacks_a_method_does_not_call_warn_as_in_torchdiffeq():
    f = WithCallbacks(forced)
    with pytest.warns(UserWarning, match="Solver 'rk4' does not support callbacks"):
        fastdiffeq.odeint(f, torch.ones(2, dtype=DT), torch.linspace(0, 1, 3, dtype=DT), method="rk4",
                          options=dict(step_size=0.5))
    assert [c[0] for c in f.calls] == ["callback_step"] * 2
    f = WithCallbacks(forced)
    with pytest.warns(UserWarning, match="Solver 'scipy_solver' does not support callbacks"):
        fastdiffeq.odeint(f, torch.ones(2, dtype=DT), torch.linspace(0, 1, 3, dtype=DT), method="scipy_solver")
    assert f.calls == []


def test_unsupported_callbacks_raise():
    f = WithCallbacks(forced)
    with pytest.raises(ValueError, match="event_fn"):
        fastdiffeq.odeint(f, torch.ones(2, dtype=DT), torch.linspace(0, 1, 2, dtype=DT), event_fn=lambda t, y: y[0])


@pytest.mark.filterwarnings("ignore:Functional iteration did not converge")
@pytest.mark.parametrize("name", ["rk4", "midpoint", "implicit_adams"])
def test_adjoint_step_callbacks_with_fixed_grid_methods(name):
    # torchdiffeq's backward pass calls callback_step_adjoint once per step of each interval's backward solve
    # (its test: 10 steps of 0.1 on [0, 1]); t0 in the caller's time, dt > 0, the augmented state as a tuple.
    counts = {}
    for lib in (fastdiffeq, torchdiffeq):
        field = MLPField()
        calls = []
        field.callback_step_adjoint = lambda t0, y, dt, calls=calls: calls.append((float(t0), float(dt), y))
        y0 = torch.tensor([1.0, 0.5], dtype=DT, requires_grad=True)
        ys = lib.odeint_adjoint(field, y0, torch.tensor([0.0, 0.5, 1.0], dtype=DT), method=name,
                                options=dict(step_size=0.1))
        ys.sum().backward()
        counts[lib.__name__] = [(t0, dt) for t0, dt, _ in calls]
        if lib is fastdiffeq:
            y, a, *grads = calls[0][2]
            assert y.shape == a.shape == (2,) and [g.shape for g in grads] == [q.shape for q in field.parameters()]
    assert len(counts["fastdiffeq"]) == 10
    for (t_f, dt_f), (t_t, dt_t) in zip(counts["fastdiffeq"], counts["torchdiffeq"]):
        assert t_f == pytest.approx(t_t, abs=1e-12) and dt_f == pytest.approx(dt_t, abs=1e-12) and dt_f > 0
    assert len(counts["fastdiffeq"]) == len(counts["torchdiffeq"])


@pytest.mark.parametrize("trajectory", ["resolve", "interpolated"])
def test_adjoint_step_callbacks_with_adaptive_methods(trajectory):
    # The adaptive adjoint is one reverse-time solve: the callbacks come at its own steps (not torchdiffeq's
    # per-interval ones), step before each attempt, then accept or reject; t0 walks back from t[-1] to t[0].
    field = MLPField()
    calls = []
    for name in ("callback_step_adjoint", "callback_accept_step_adjoint", "callback_reject_step_adjoint"):
        setattr(field, name, lambda t0, y, dt, name=name: calls.append((name, float(t0), float(dt), y)))
    y0 = torch.tensor([1.0, 0.5], dtype=DT, requires_grad=True)
    ys = fastdiffeq.odeint_adjoint(field, y0, torch.tensor([0.0, 0.5, 1.0], dtype=DT), rtol=1e-6, atol=1e-8,
                                   adjoint_options=dict(trajectory=trajectory))
    assert not calls  # the forward solve does not call them
    ys.sum().backward()
    steps = [c for c in calls if c[0] == "callback_step_adjoint"]
    decided = [c for c in calls if c[0] != "callback_step_adjoint"]
    assert steps and len(decided) == len(steps) == fastdiffeq.last_backward_stats().n_accepted + \
        fastdiffeq.last_backward_stats().n_rejected
    assert all(dt > 0 for _, _, dt, _ in calls) and steps[0][1] == 1.0 and steps[-1][1] > 0.0
    assert [c[1] for c in steps] == sorted((c[1] for c in steps), reverse=True)
    parts = steps[0][3]
    n_y = 1 if trajectory == "resolve" else 0
    assert len(parts) == n_y + 1 + len(list(field.parameters()))
    torch.testing.assert_close(parts[n_y], torch.ones(2, dtype=DT))  # dL/dy(t[-1]) for loss = ys.sum()


# --------------------------------------------------------------------------------------------------------
# method='scipy_solver'
# --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [
    dict(options=None),
    dict(options=dict(solver="RK45")),
    dict(options=dict(solver="DOP853", max_step=0.1), rtol=1e-9, atol=1e-11),
    dict(options=dict(solver="Radau"), reverse=True),
])
def test_scipy_solver_matches_torchdiffeq(kw):
    kw = dict(kw)
    t = torch.linspace(0.0, 2.0, 5, dtype=DT)
    if kw.pop("reverse", False):
        t = t.flip(0)
    f_t, f_f = Counter(forced), Counter(forced)
    y0 = torch.tensor([1.0, 0.5], dtype=DT)
    y_t = torchdiffeq.odeint(f_t, y0, t, method="scipy_solver", **kw)
    y_f = fastdiffeq.odeint(f_f, y0, t, method="scipy_solver", **kw)
    torch.testing.assert_close(y_f, y_t, rtol=1e-12, atol=1e-12)
    assert len(f_f.times) == len(f_t.times) == fastdiffeq.last_stats().nfe


def test_scipy_solver_tuple_state_and_errors():
    t = torch.linspace(0.0, 3.0, 4, dtype=DT)
    ys_t = torchdiffeq.odeint(oscillator, OSC_Y0, t, method="scipy_solver", options=dict(solver="RK45"))
    ys_f = fastdiffeq.odeint(oscillator, OSC_Y0, t, method="scipy_solver", options=dict(solver="RK45"))
    for a, b in zip(ys_f, ys_t):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # As torchdiffeq's: no gradient flows through scipy (the output does not require grad).
    assert not fastdiffeq.odeint(forced, torch.ones(2, dtype=DT, requires_grad=True), t,
                                 method="scipy_solver").requires_grad
    with pytest.raises(ValueError, match="scipy_solver"):
        fastdiffeq.odeint_adjoint(MLPField(), torch.ones(2, dtype=DT), t, method="scipy_solver")
    with pytest.raises(ValueError, match="unknown key"):
        fastdiffeq.odeint(forced, torch.ones(2, dtype=DT), t, method="scipy_solver", options=dict(step_size=0.1))


@pytest.mark.parametrize("name", NEW_ADAPTIVE)
def test_solve_ivp_per_sample_with_the_new_adaptive_methods(name):
    """Each sample of solve_ivp solves as odeint does alone; checkpoint gradients equal direct ones, the adjoint's
    agree within the tolerance."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()

    def f(t, y):
        return net(y)

    y0 = torch.randn(3, 2, dtype=DT)
    t = torch.linspace(0, 1, 4, dtype=DT)
    kw = dict(method=name, rtol=1e-6, atol=1e-8)
    ref = torch.stack([fastdiffeq.odeint(f, y0[i], t, **kw) for i in range(3)], 0)
    grads = {}
    for mode in ("direct", "checkpoint", "adjoint"):
        y = y0.clone().requires_grad_(True)
        extra = dict(params=tuple(net.parameters())) if mode != "direct" else {}
        sol = fastdiffeq.solve_ivp(f, y, t, gradient=mode, **kw, **extra)
        torch.testing.assert_close(sol.ys, ref, rtol=0, atol=1e-12)
        sol.ys.sum().backward()
        grads[mode] = y.grad
    torch.testing.assert_close(grads["checkpoint"], grads["direct"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads["adjoint"], grads["direct"], rtol=1e-3, atol=1e-4)


def test_adjoint_user_norm_sees_the_state_shapes():
    # torchdiffeq's norm_tests: the adjoint norm gets (t, *y, *a, *param_grads), each with its tensor's shape.
    shapes = []

    def norm(parts):
        shapes.append(tuple(tuple(q.shape) for q in parts))
        return max(q.abs().max() for q in parts)

    w = torch.rand((), dtype=DT, requires_grad=True)
    v = torch.rand(3, dtype=DT, requires_grad=True)
    for y0 in (torch.tensor(1.0, dtype=DT), torch.ones(2, 2, dtype=DT)):
        shapes.clear()
        fastdiffeq.odeint_adjoint(lambda t, y: -w * y * v.sum(), y0.requires_grad_(True), torch.tensor([0.0, 1.0], dtype=DT),
                                  adjoint_params=(w, v), adjoint_options=dict(norm=norm)).sum().backward()
        assert shapes and set(shapes) == {((), tuple(y0.shape), tuple(y0.shape), (), (3,))}


# --------------------------------------------------------------------------------------------------------
# Adams methods (multistep, fastdiffeq._adams)
# --------------------------------------------------------------------------------------------------------

ADAMS = ["explicit_adams", "implicit_adams", "fixed_adams"]


def test_adams_coefficients_are_exact_for_polynomials():
    # Bashforth (k steps, nodes 0, -1, ..., -(k-1)) integrates u^q over [0, 1] exactly for q < k; Moulton (nodes
    # 1, 0, ..., -(k-2)) for q < k. Also equal to torchdiffeq's tables (independently written constants).
    from fastdiffeq._adams import BASHFORTH, MOULTON
    from torchdiffeq._impl import fixed_adams

    for k in range(1, 13):
        b = BASHFORTH[k].tolist()
        m = MOULTON[k].tolist()
        nodes = [1] + [-j for j in range(k - 1)]
        for q in range(k):
            exact = 1.0 / (q + 1)
            for weights, xs in ((b, [-j for j in range(k)]), (m, nodes)):
                terms = [w * float(x) ** q for w, x in zip(weights, xs)]
                scale = sum(abs(v) for v in terms)  # the rounding of the double weights, magnified by x^q
                assert abs(math.fsum(terms) - exact) <= 1e-14 * scale, (k, q)
        assert torch.equal(BASHFORTH[k], fixed_adams._BASHFORTH_DIVISOR[k])
        if k >= 2:  # torchdiffeq's order-1 Moulton entry is 1/11 (its divisor table), never used by its solver
            assert torch.equal(MOULTON[k], fixed_adams._MOULTON_DIVISOR[k])


ADAMS_CASES = dict(FIXED_CASES, max_order_6=dict(options=dict(step_size=0.05, max_order=6)),
                   max_iters_1=dict(options=dict(step_size=0.2, max_iters=1)),
                   rk4_only=dict(options=dict(step_size=0.05, max_order=3)))


@pytest.mark.filterwarnings("ignore:Functional iteration did not converge")
@pytest.mark.filterwarnings("ignore:max_order is below")
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("case", list(ADAMS_CASES))
@pytest.mark.parametrize("name", ADAMS)
def test_adams_parity(name, case, reverse):
    t = torch.linspace(0.0, 2.0, 7, dtype=DT)
    if reverse:
        t = t.flip(0)
    y0 = torch.tensor([1.0, 0.5], dtype=DT)
    f_t, f_f = Counter(forced), Counter(forced)
    kw = dict(method=name, rtol=1e-6, atol=1e-8, **ADAMS_CASES[case])
    with torch.no_grad():
        y_t = torchdiffeq.odeint(f_t, y0, t, **kw)
        y_f = fastdiffeq.odeint(f_f, y0, t, **kw)
    torch.testing.assert_close(y_f, y_t, rtol=0, atol=1e-12)
    assert len(f_f.times) == len(f_t.times) == fastdiffeq.last_stats().nfe
    torch.testing.assert_close(torch.tensor(f_f.times), torch.tensor(f_t.times), rtol=0, atol=1e-15)


@pytest.mark.filterwarnings("ignore:Functional iteration did not converge")  # in both libraries
@pytest.mark.parametrize("name", ADAMS)
def test_adams_tuple_state_and_callbacks(name):
    t = torch.linspace(0.0, 3.0, 4, dtype=DT)
    kw = dict(method=name, options=dict(step_size=0.1, interp="cubic"))
    ours, theirs = WithCallbacks(oscillator, names=("callback_step",)), WithCallbacks(oscillator,
                                                                                      names=("callback_step",))
    with torch.no_grad():
        y_f = fastdiffeq.odeint(ours, OSC_Y0, t, **kw)
        y_t = torchdiffeq.odeint(theirs, OSC_Y0, t, **kw)
    for a, b in zip(y_f, y_t):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert len(ours.calls) == 30
    _same_calls(ours.calls, theirs.calls, 1e-12)


@pytest.mark.parametrize("name, max_order, order", [("explicit_adams", 5, 4), ("implicit_adams", 4, 4),
                                                    ("implicit_adams", 3, 4)])
@pytest.mark.filterwarnings("ignore:max_order is below")
@pytest.mark.filterwarnings("ignore:Functional iteration did not converge")
def test_adams_convergence_slope(name, max_order, order):
    # Explicit, max_order 5: Adams–Bashforth of order 4; implicit, max_order 4: AB3 predictor + AM4 corrector;
    # max_order < 4: torchdiffeq's rk4 fallback. Reference: dopri8 at 1e-13.
    def pendulum_(t, y):
        return torch.stack([y[1], -torch.sin(y[0])])

    y0 = torch.tensor([1.0, 0.0], dtype=DT)
    span = torch.tensor([0.0, 4.0], dtype=DT)
    ref = fastdiffeq.odeint(pendulum_, y0, span, method="dopri8", rtol=1e-13, atol=1e-13)[-1]
    hs = [0.1, 0.05, 0.025, 0.0125]
    errors = [(fastdiffeq.odeint(pendulum_, y0, span, method=name, rtol=1e-12, atol=1e-14,
                                 options=dict(step_size=h, max_order=max_order))[-1] - ref).abs().max().item()
              for h in hs]
    slope = float(torch.tensor([math.log(e) for e in errors]).diff().div(math.log(0.5)).mean())
    assert abs(slope - order) <= 0.3, (slope, errors)


@pytest.mark.parametrize("name", ADAMS)
def test_adams_gradients_match_torchdiffeq(name):
    t = torch.linspace(0.0, 1.5, 4, dtype=DT)
    y0 = torch.tensor([[0.3, -0.2]], dtype=DT)
    opts = dict(step_size=0.05)
    for ours, theirs in ((fastdiffeq.odeint, torchdiffeq.odeint), (fastdiffeq.odeint_adjoint,
                                                                   torchdiffeq.odeint_adjoint)):
        grads = []
        for solve in (ours, theirs):
            field = MLPField()
            y = y0.clone().requires_grad_()
            out = solve(field, y, t, method=name, options=opts, rtol=1e-7, atol=1e-9)
            grads.append(torch.autograd.grad(out.pow(2).sum(), [y] + list(field.parameters())))
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    y = y0.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda y_: fastdiffeq.odeint(lambda tt, z: torch.tanh(z) * torch.cos(tt), y_, t, method=name,
                                     options=dict(step_size=0.1)), (y,))


def test_adams_unsupported_and_bad_options():
    y0 = torch.tensor([1.0, 0.5], dtype=DT)
    t = torch.linspace(0.0, 1.0, 3, dtype=DT)
    with pytest.raises(ValueError, match="gradient='checkpoint' is not supported with the Adams method"):
        fastdiffeq.odeint(forced, y0.requires_grad_(), t, method="implicit_adams", gradient="checkpoint",
                          gradient_params=())
    for options, exc, pattern in [(dict(max_order=13), ValueError, "max_order"), (dict(max_order=0), ValueError,
                                  "max_order"), (dict(max_iters=0), ValueError, "max_iters"),
                                  (dict(max_order=4.0), TypeError, "max_order"),
                                  (dict(max_iters=True), TypeError, "max_iters")]:
        with pytest.raises(exc, match=pattern):
            fastdiffeq.odeint(forced, y0.detach(), t, method="explicit_adams", options=options)
    with pytest.raises(ValueError, match="unknown key"):
        fastdiffeq.odeint(forced, y0.detach(), t, method="rk4", options=dict(max_order=4))
    with pytest.raises(ValueError, match="multistep"):
        fastdiffeq.odeint(forced, y0.detach().requires_grad_(), t, method="fixed_adams", gradient="reversible",
                          gradient_params=())


# --------------------------------------------------------------------------------------------------------
# Events with the fixed-grid methods (fastdiffeq._fixed_events: torchdiffeq's integrate_until_event)
# --------------------------------------------------------------------------------------------------------

def _swing(t, y):
    return torch.stack([y[1], -torch.sin(y[0])]) * (1 + 0.1 * torch.cos(t))


@pytest.mark.filterwarnings("ignore:Functional iteration did not converge")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("interp", ["linear", "cubic"])
@pytest.mark.parametrize("name", FIXED_METHODS + ADAMS)
def test_fixed_grid_events_match_torchdiffeq(name, interp, reverse, dtype):
    y0 = torch.tensor([1.0, 0.0], dtype=dtype, requires_grad=True)
    t = torch.tensor([0.0, -10.0 if reverse else 10.0], dtype=dtype)
    options = dict(step_size=0.01, interp=interp, perturb=name == "rk4")

    def event(tt, y):
        return y[0] - 0.2

    out = []
    for lib in (torchdiffeq, fastdiffeq):
        event_t, ys = lib.odeint(_swing, y0, t, method=name, options=options, event_fn=event)
        grad = torch.autograd.grad(ys[-1].sum(), y0)[0]
        out.append((event_t.detach(), ys.detach(), grad))
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, b in zip(out[1], out[0]):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    assert out[1][0].dtype == dtype and (out[1][0] < 0) == reverse


def test_fixed_grid_event_on_a_zero_dim_state_and_the_adjoint_event_time():
    # A 0-dim state: torchdiffeq's float64 Adams coefficients promote its weighted sums to float64 (our loop
    # runs on the user's shape, so it does too); odeint_adjoint's event time is backward-able (zero gradient).
    y0 = torch.tensor(1.0)
    target = torch.tensor(8.0)
    kw = dict(method="explicit_adams", options=dict(step_size=0.01, interp="cubic"),
              event_fn=lambda tt, y: y - target)
    a = torchdiffeq.odeint(lambda tt, y: 2 * y / tt + tt**2, y0, torch.tensor([1.0, 3.0]), **kw)
    b = fastdiffeq.odeint(lambda tt, y: 2 * y / tt + tt**2, y0, torch.tensor([1.0, 3.0]), **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    field = MLPField()
    event_t, ys = fastdiffeq.odeint_adjoint(field, torch.tensor([1.0, 0.5], dtype=DT, requires_grad=True),
                                            torch.tensor([0.0, 5.0], dtype=DT), event_fn=lambda tt, y: y[0] - 0.2)
    assert event_t.requires_grad
    event_t.backward(retain_graph=True)
    assert all(q.grad is None or float(q.grad.abs().max()) == 0.0 for q in field.parameters())
    ys[-1].sum().backward()
