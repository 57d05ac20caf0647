"""Terminal events: odeint / odeint_adjoint event_fn (torchdiffeq's semantics), odeint_event's event-time
gradients (implicit function theorem), and per-sample events in solve_ivp. References: analytic event times
and derivatives of a falling body, a bouncing ball's analytic bounce times, central finite differences, and
torchdiffeq itself."""

import math

import pytest
import torch

import fastdiffeq

G = 9.81
TOL = dict(rtol=1e-10, atol=1e-10)


def falling(g):
    def f(t, y):
        return torch.stack([y[1], -g * torch.ones_like(y[1])])
    return f


def fall_time(h, v0, g=G):
    return (v0 + math.sqrt(v0 * v0 + 2 * g * h)) / g


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_odeint_event_fn_falling_body_time_and_state(interface):
    solver = getattr(fastdiffeq, interface)
    kw = dict(adjoint_params=()) if interface == "odeint_adjoint" else {}
    y0 = torch.tensor([10.0, 2.0], dtype=torch.float64)
    t_event, sol = solver(falling(G), y0, torch.tensor([0.0, 1.0], dtype=torch.float64),
                          event_fn=lambda t, y: y[0], **TOL, **kw)
    T = fall_time(10.0, 2.0)
    assert t_event.shape == () and sol.shape == (2, 2)
    assert abs(float(t_event) - T) < 1e-10
    assert torch.equal(sol[0], y0)
    assert abs(float(sol[1, 0])) < 1e-9 and abs(float(sol[1, 1]) - (2.0 - G * T)) < 1e-9


def test_reverse_time_event_and_either_sign_direction():
    # y' = 1 from y(0) = 0 backwards: y = t reaches -2 at t = -2 (the event value goes from + to 0).
    t_event, sol = fastdiffeq.odeint(lambda t, y: torch.ones_like(y), torch.zeros(1, dtype=torch.float64),
                                     torch.tensor([0.0, -1.0], dtype=torch.float64),
                                     event_fn=lambda t, y: y[0] + 2.0, **TOL)
    assert abs(float(t_event) + 2.0) < 1e-10
    # The same crossing seen from a negative event value (sign change from - to +).
    t2, _ = fastdiffeq.odeint(lambda t, y: torch.ones_like(y), torch.zeros(1, dtype=torch.float64),
                              torch.tensor([0.0, -1.0], dtype=torch.float64),
                              event_fn=lambda t, y: -(y[0] + 2.0), **TOL)
    assert float(t2) == float(t_event)


def test_vector_event_fires_on_the_first_component_and_zero_at_t0_returns_t0():
    f = lambda t, y: torch.ones_like(y)  # noqa: E731
    y0 = torch.zeros(1, dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    t_event, _ = fastdiffeq.odeint(f, y0, t, event_fn=lambda t, y: torch.stack([y[0] - 5, 3 - y[0], y[0] - 1e9]),
                                   **TOL)
    assert abs(float(t_event) - 3.0) < 1e-10
    t_zero, sol = fastdiffeq.odeint(f, y0, t, event_fn=lambda t, y: y[0], **TOL)
    assert float(t_zero) == 0.0 and torch.equal(sol[1], y0)


def test_event_times_match_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    f = lambda t, y: torch.stack([y[1], -torch.sin(y[0])])  # noqa: E731  (a pendulum)
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ev = lambda t, y: y[0] - 0.25  # noqa: E731
    ref_t, ref_sol = torchdiffeq.odeint(f, y0, t, event_fn=ev, rtol=1e-10, atol=1e-12)
    t_event, sol = fastdiffeq.odeint(f, y0, t, event_fn=ev, rtol=1e-10, atol=1e-12)
    assert abs(float(t_event) - float(ref_t)) < 1e-9
    torch.testing.assert_close(sol, ref_sol, atol=1e-9, rtol=0)


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_odeint_event_time_gradients_are_the_analytic_ones(interface):
    g = torch.tensor(G, dtype=torch.float64, requires_grad=True)
    y0 = torch.tensor([10.0, 2.0], dtype=torch.float64, requires_grad=True)
    t0 = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    kw = dict(adjoint_params=(g,)) if interface == "odeint_adjoint" else {}
    t_event, sol = fastdiffeq.odeint_event(falling(g), y0, t0, event_fn=lambda t, y: y[0],
                                           odeint_interface=getattr(fastdiffeq, interface), **TOL, **kw)
    t_event.backward()
    s = math.sqrt(2.0 ** 2 + 2 * G * 10.0)
    assert abs(t_event.item() - 0.5 - fall_time(10.0, 2.0)) < 1e-10
    torch.testing.assert_close(y0.grad, torch.tensor([1 / s, (1 + 2.0 / s) / G], dtype=torch.float64),
                               rtol=1e-8, atol=0)
    dT_dg = -fall_time(10.0, 2.0) / G + 10.0 / (G * s)
    assert abs(float(g.grad) - dT_dg) < 1e-8
    assert abs(float(t0.grad) - 1.0) < 1e-8
    # The velocity at impact, through the event time: dv/dh = -g dT/dh.
    y0.grad = None
    t_event, sol = fastdiffeq.odeint_event(falling(g), y0, t0, event_fn=lambda t, y: y[0],
                                           odeint_interface=getattr(fastdiffeq, interface), **TOL, **kw)
    sol[-1, 1].backward()
    assert abs(float(y0.grad[0]) + G / s) < 1e-8


class BouncingBall(torch.nn.Module):
    def __init__(self, g=G, restitution=0.8):
        super().__init__()
        self.g = torch.nn.Parameter(torch.tensor(g, dtype=torch.float64))
        self.restitution = restitution

    def forward(self, t, state):
        pos, vel = state
        return vel, -self.g * torch.ones_like(vel)


def bounce_times(ball, pos0, vel0, t0, n, interface=fastdiffeq.odeint):
    times = []
    state = (pos0, vel0)
    t = t0
    for _ in range(n):
        t, sol = fastdiffeq.odeint_event(ball, state, t, event_fn=lambda t, s: s[0], odeint_interface=interface,
                                         **TOL)
        pos, vel = sol[0][-1], sol[1][-1]
        state = (pos + 1e-9, -ball.restitution * vel)  # the event must not fire again at once
        times.append(t)
    return times


def test_bouncing_ball_times_are_analytic():
    ball = BouncingBall()
    times = bounce_times(ball, torch.tensor(5.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64),
                         torch.tensor(0.0, dtype=torch.float64), 3)
    t1 = math.sqrt(2 * 5.0 / G)
    v = G * t1
    expected = [t1]
    for _ in range(2):
        v *= 0.8
        expected.append(expected[-1] + 2 * v / G)
    for got, want in zip(times, expected):
        assert abs(float(got.detach()) - want) < 1e-7  # (the 1e-9 nudge per bounce)


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_bouncing_ball_event_time_gradients_match_finite_differences(interface):
    solver = getattr(fastdiffeq, interface)

    def last_time(pos0, vel0, g):
        ball = BouncingBall(g=g)
        return bounce_times(ball, pos0, vel0, torch.tensor(0.0, dtype=torch.float64), 2, solver)[-1], ball

    pos0 = torch.tensor(5.0, dtype=torch.float64, requires_grad=True)
    vel0 = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    t_last, ball = last_time(pos0, vel0, G)
    t_last.backward()
    grads = [float(pos0.grad), float(vel0.grad), float(ball.g.grad)]
    eps = 1e-5
    fd = []
    with torch.no_grad():
        for k in range(3):
            args = [5.0, 1.0, G]
            plus, minus = list(args), list(args)
            plus[k] += eps
            minus[k] -= eps
            tp = last_time(torch.tensor(plus[0], dtype=torch.float64), torch.tensor(plus[1], dtype=torch.float64),
                           plus[2])[0]
            tm = last_time(torch.tensor(minus[0], dtype=torch.float64), torch.tensor(minus[1], dtype=torch.float64),
                           minus[2])[0]
            fd.append((float(tp) - float(tm)) / (2 * eps))
    for got, want in zip(grads, fd):
        assert abs(got - want) < 1e-5 * max(1.0, abs(want))


def test_solve_ivp_per_sample_events_located_to_1e_10():
    B = 5
    h = torch.tensor([1.0, 5.0, 10.0, 20.0, 0.5], dtype=torch.float64)
    y0 = torch.stack([h, torch.zeros(B, dtype=torch.float64)], -1)
    t_eval = torch.linspace(0, 1.5, 7, dtype=torch.float64)

    def field(t, y):
        return torch.stack([y[:, 1], -G * torch.ones_like(y[:, 1])], -1)

    sol = fastdiffeq.solve_ivp(field, y0, t_eval, event_fn=lambda t, y: y[:, 0], **TOL)
    expected = torch.sqrt(2 * h / G)
    hit = expected < 1.5
    assert torch.equal(torch.isfinite(sol.t_events), hit)  # sample 3 lands after its last output time
    assert (sol.t_events[hit] - expected[hit]).abs().max() < 1e-10
    assert (sol.y_events[hit, 0]).abs().max() < 1e-9
    assert bool(torch.isnan(sol.y_events[~hit]).all())
    assert bool((sol.status == int(fastdiffeq.Status.SUCCESS)).all())
    # Outputs after a sample's event are NaN, before it finite.
    after = t_eval.unsqueeze(0) > sol.t_events.nan_to_num(nan=10.0).unsqueeze(1)
    assert bool(torch.isnan(sol.ys[..., 0][after]).all()) and bool(torch.isfinite(sol.ys[..., 0][~after]).all())
    # Alone, each sample stops at the same time.
    for b in (0, 2):
        alone = fastdiffeq.solve_ivp(field, y0[b:b + 1], t_eval, event_fn=lambda t, y: y[:, 0], **TOL)
        assert float(alone.t_events[0]) == float(sol.t_events[b])


def test_solve_ivp_event_time_gradient_per_sample():
    B = 3
    h = torch.tensor([2.0, 5.0, 8.0], dtype=torch.float64, requires_grad=True)
    g = torch.tensor(G, dtype=torch.float64, requires_grad=True)
    y0 = torch.stack([h, torch.zeros(B, dtype=torch.float64)], -1)

    def field(t, y):
        return torch.stack([y[:, 1], -g * torch.ones_like(y[:, 1])], -1)

    sol = fastdiffeq.solve_ivp(field, y0, torch.linspace(0, 3, 4, dtype=torch.float64),
                               event_fn=lambda t, y: y[:, 0], **TOL)
    sol.t_events.sum().backward()
    # T_b = sqrt(2 h_b / g): dT_b/dh_b = 1 / sqrt(2 g h_b), dT/dg = -T / (2 g)
    hd = h.detach()
    torch.testing.assert_close(h.grad, 1 / torch.sqrt(2 * G * hd), rtol=1e-8, atol=0)
    assert abs(float(g.grad) - float((-torch.sqrt(2 * hd / G) / (2 * G)).sum())) < 1e-8


def test_event_bad_input():
    f = lambda t, y: torch.ones_like(y)  # noqa: E731
    y0 = torch.zeros(1, dtype=torch.float64)
    with pytest.raises(ValueError, match="2 times"):
        fastdiffeq.odeint(f, y0, torch.linspace(0, 1, 3, dtype=torch.float64), event_fn=lambda t, y: y[0] - 5)
    with pytest.raises(TypeError, match="event_fn"):
        fastdiffeq.odeint(f, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), event_fn=3)
    with pytest.raises(TypeError, match="event_fn"):
        fastdiffeq.odeint(f, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), event_fn=lambda t, y: 1.5j)
    yb = torch.zeros(3, 1, dtype=torch.float64)
    t_eval = torch.linspace(0, 1, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="one value per sample"):
        fastdiffeq.solve_ivp(f, yb, t_eval, event_fn=lambda t, y: y.sum())
    with pytest.raises(ValueError, match="gradient='direct' only"):
        fastdiffeq.solve_ivp(f, yb, t_eval, event_fn=lambda t, y: y[:, 0] - 0.5, gradient="adjoint", params=())
    with pytest.raises(ValueError, match="t0"):
        fastdiffeq.odeint_event(f, y0, torch.zeros(2), event_fn=lambda t, y: y[0] - 1)
    # No sign change before the end of the span: a SolverError, not a hang.
    with pytest.raises(fastdiffeq.SolverError):
        fastdiffeq.odeint(lambda t, y: -y, torch.ones(1, dtype=torch.float64),
                          torch.tensor([0.0, 1.0], dtype=torch.float64), event_fn=lambda t, y: y[0] + 1.0,
                          options=dict(max_num_steps=200))
