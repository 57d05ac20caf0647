"""fastdiffeq.nn.MLP's native (C++) path against the same module run in Python: values, gradients, fallbacks."""

import pytest
import torch

import fastdiffeq
from fastdiffeq.nn import ACTIVATIONS, MLP

pytestmark = pytest.mark.usefixtures("single_thread")

T = torch.linspace(0.0, 2.0, 5, dtype=torch.float64)
KW = dict(rtol=1e-7, atol=1e-7)


def make(activation="tanh", dim=3, hidden=(16, 16), seed=0):
    torch.manual_seed(seed)
    return MLP(dim, hidden, activation=activation).double()


def python_path(m):
    return lambda t, y: m(y)  # the same module, called from Python


def grads(m, fn):
    m.zero_grad()
    y0 = torch.randn(8, m.in_features, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y0.requires_grad_(True)
    ys = fn(y0)
    (ys.square().sum() + ys[-1].sin().sum()).backward()
    return ys.detach(), y0.grad, [p.grad.clone() for p in m.parameters() if p.grad is not None]


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_native_values_and_vjp_equal_autograd(activation):
    m = make(activation)
    y = torch.randn(6, 3, dtype=torch.float64)
    handle = m.fastdiffeq_native_field(y)
    assert handle is not None
    torch.testing.assert_close(handle(torch.tensor(0.0), y), m(y), rtol=0, atol=1e-15)
    v = torch.randn_like(y)
    yy = y.clone().requires_grad_(True)
    ref = torch.autograd.grad(m(yy), [yy, *m.parameters()], v)
    f, gy, gp = handle.vjp(y, v)
    torch.testing.assert_close(gy, ref[0], rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(gp, torch.cat([r.reshape(-1) for r in ref[1:]]), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("activation", ["tanh", "softplus", "relu"])
def test_odeint_native_equals_python_path_and_reports_it(activation):
    m = make(activation)
    y0 = torch.randn(8, 3, dtype=torch.float64)
    with torch.no_grad():
        native = fastdiffeq.odeint(m, y0, T, **KW)
        assert fastdiffeq.last_stats().field == "native"
        n_native = fastdiffeq.last_stats().nfe
        python = fastdiffeq.odeint(python_path(m), y0, T, **KW)
        assert fastdiffeq.last_stats().field == "python"
    torch.testing.assert_close(native, python, rtol=0, atol=1e-13)
    assert fastdiffeq.last_stats().nfe == n_native


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "adjoint"])
def test_gradients_equal_the_python_path(gradient):
    m = make("softplus")

    def solve(func, params):
        if gradient == "adjoint":
            return lambda y0: fastdiffeq.odeint_adjoint(func, y0, T, adjoint_params=params, **KW)
        return lambda y0: fastdiffeq.odeint(func, y0, T, gradient=gradient, gradient_params=params, **KW)

    params = list(m.parameters())
    ys_n, gy_n, gp_n = grads(m, solve(m, params))
    if gradient != "direct":
        assert fastdiffeq.last_backward_stats().field == "native"
    ys_p, gy_p, gp_p = grads(m, solve(python_path(m), params))
    torch.testing.assert_close(ys_n, ys_p, rtol=0, atol=1e-12)
    tol = dict(rtol=1e-9, atol=1e-11) if gradient != "adjoint" else dict(rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gy_n, gy_p, **tol)
    for a, b in zip(gp_n, gp_p):
        torch.testing.assert_close(a, b, **tol)


def test_native_direct_gradcheck():
    m = make("tanh", dim=2, hidden=(4,))
    y0 = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    w = m.layers[0].weight
    fixed = dict(first_step=0.05, min_step=0.05, max_step=0.05)  # steps do not move under the perturbation
    assert torch.autograd.gradcheck(
        lambda y, w_: fastdiffeq.odeint(m, y, T, options=fixed, **KW), (y0, w), atol=1e-7, rtol=1e-6)
    assert fastdiffeq.last_stats().field == "native"


def test_solve_ivp_native_equals_python_path():
    m = make("tanh")
    y0 = torch.randn(8, 3, dtype=torch.float64)
    t_eval = torch.linspace(0, 1.5, 4, dtype=torch.float64)
    for gradient in ("direct", "checkpoint", "adjoint"):
        out = []
        for func in (m, python_path(m)):
            m.zero_grad()
            sol = fastdiffeq.solve_ivp(func, y0, t_eval, gradient=gradient, params=list(m.parameters()), **KW)
            path = fastdiffeq.last_stats().field
            sol.ys.square().sum().backward()
            out.append((sol.ys.detach(), [p.grad.clone() for p in m.parameters()], path))
        assert out[0][2] == "native" and out[1][2] == "python"
        torch.testing.assert_close(out[0][0], out[1][0], rtol=0, atol=1e-12)
        for a, b in zip(out[0][1], out[1][1]):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_frozen_parameters_and_custom_lists_fall_back_to_python_with_correct_gradients():
    m = make("tanh")
    m.layers[0].weight.requires_grad_(False)
    _, _, g_frozen = grads(m, lambda y0: fastdiffeq.odeint_adjoint(m, y0, T, **KW))
    assert fastdiffeq.last_backward_stats().field == "python"
    m2 = make("tanh")
    m2.layers[0].weight.requires_grad_(False)
    _, _, g_ref = grads(m2, lambda y0: fastdiffeq.odeint_adjoint(python_path(m2), y0, T,
                                                                adjoint_params=[p for p in m2.parameters()
                                                                                if p.requires_grad], **KW))
    assert len(g_frozen) == len(g_ref) == 5
    for a, b in zip(g_frozen, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_modules_that_cannot_run_natively_run_in_python():
    y64 = torch.randn(4, 3, dtype=torch.float64)
    assert MLP(3).fastdiffeq_native_field(y64) is None              # float32 parameters, float64 state
    assert MLP(3, out_features=2).double().fastdiffeq_native_field(y64) is None  # not a field of the state
    assert make().fastdiffeq_native_field(torch.randn(4, 5, dtype=torch.float64)) is None

    class Scaled(MLP):
        def forward(self, *args):
            return 2 * super().forward(*args)

    torch.manual_seed(0)
    scaled = Scaled(3, (8,)).double()
    assert scaled.fastdiffeq_native_field(y64) is None
    with torch.no_grad():
        ys = fastdiffeq.odeint(scaled, y64, T, **KW)
        assert fastdiffeq.last_stats().field == "python"
        torch.testing.assert_close(ys, fastdiffeq.odeint(lambda t, y: scaled(y), y64, T, **KW), rtol=0, atol=0)
    hooked = make()
    calls = []
    hooked.register_forward_hook(lambda mod, inp, out: calls.append(1))
    with torch.no_grad():
        fastdiffeq.odeint(hooked, y64, T, **KW)
    assert fastdiffeq.last_stats().field == "python" and calls
    # The module's own errors, as from Python: float32 parameters with a float64 state.
    with pytest.raises(RuntimeError):
        fastdiffeq.odeint(MLP(3), y64, T)


def test_mlp_module_and_bad_arguments():
    m = MLP(2, (8, 8), activation="silu")
    x = torch.randn(5, 2)
    torch.testing.assert_close(m(x), m(torch.tensor(0.3), x))
    assert [layer.out_features for layer in m.layers] == [8, 8, 2]
    with pytest.raises(ValueError, match="activation"):
        MLP(2, activation="swish")
    with pytest.raises(ValueError, match="in_features"):
        MLP(0)
    with pytest.raises(TypeError, match="arguments"):
        m(x, x, x)
    with pytest.raises(ValueError, match="activation"):
        fastdiffeq._C.NativeMLP([m.layers[0].weight], [m.layers[0].bias], "gelu")
    with pytest.raises(ValueError, match="bias"):
        fastdiffeq._C.NativeMLP([m.layers[0].weight], [m.layers[2].bias], "tanh")
    with pytest.raises(ValueError, match="one column"):  # (a zero-width layer once divided by zero: SIGFPE)
        fastdiffeq._C.NativeMLP([torch.zeros(2, 0)], [torch.zeros(2)], "tanh")
    with pytest.raises(ValueError, match="inputs"):
        fastdiffeq._C.NativeMLP([m.layers[0].weight, m.layers[0].weight], [m.layers[0].bias, m.layers[0].bias],
                                "tanh")


@pytest.mark.parametrize("method", ["rk4", "dopri8", "fehlberg2"])
def test_every_method_runs_the_native_field(method):
    m = make("tanh")
    y0 = torch.randn(8, 3, dtype=torch.float64)
    options = dict(step_size=0.1) if method == "rk4" else None
    for gradient in ("direct", "checkpoint"):
        out = []
        for func in (m, python_path(m)):
            m.zero_grad()
            ys = fastdiffeq.odeint(func, y0, T, method=method, options=options, gradient=gradient,
                                   gradient_params=list(m.parameters()), **KW)
            path = fastdiffeq.last_stats().field
            ys.square().sum().backward()
            out.append((ys.detach(), [p.grad.clone() for p in m.parameters()], path))
        assert out[0][2] == "native" and out[1][2] == "python"
        torch.testing.assert_close(out[0][0], out[1][0], rtol=0, atol=1e-12)
        for a, b in zip(out[0][1], out[1][1]):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_native_mlp_checks_the_state_and_cotangent():
    # Found by the fuzzer: y on another device and a cotangent of another dtype failed inside ATen.
    W, b = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    W2, b2 = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    mlp = fastdiffeq._C.NativeMLP([W, W2], [b, b2], "tanh")
    t, y = torch.zeros((), dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="the state is on meta"):
        mlp(t, y.to("meta"))
    with pytest.raises(TypeError, match="the cotangent is Float"):
        mlp.vjp(y, y.float())
    with pytest.raises(RuntimeError, match="shape"):
        mlp.vjp(y, y[:2])


# --- the fast path's kernels (float32 bias + activation fused, workspaces, hand-written derivatives) -------------


def _float_sample():
    """Every 97th float32 bit pattern of [0, inf), both signs, and the special values."""
    bits = torch.arange(0, 0x7F800000, 97, dtype=torch.int64).to(torch.int32)
    pos = bits.view(torch.float32)
    special = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-38, 2e-4, 0.6249999, 0.625, 0.6250001, 9.0, 9.01, 10.0,
                            3e38, float("inf"), -float("inf"), float("nan")])
    return torch.cat([pos, -pos, special])


def test_fused_tanh_is_within_a_few_ulp_of_the_exact_value():
    x = _float_sample()
    got = fastdiffeq._C._native_mlp_activation("tanh", x)
    exact = torch.tanh(x.double())
    finite = ~x.isnan()
    ulp = (torch.nextafter(exact.float().abs(), torch.tensor(float("inf"))) - exact.float().abs()).double()
    err_ulp = (got.double() - exact).abs()[finite] / ulp[finite]
    assert err_ulp.max().item() <= 2.0, f"max error {err_ulp.max().item():.2f} ulp at x = {x[finite][err_ulp.argmax()]}"
    # torch's own tanh within the same bound (relative), incl. near 0 and where tanh rounds to +-1
    torch.testing.assert_close(got, torch.tanh(x), rtol=3e-7, atol=0, equal_nan=True)
    assert torch.equal(got.signbit(), x.signbit())  # odd, tanh(-0) = -0, tanh(-x) < 0 (NaN's sign kept)
    assert got[x.isnan()].isnan().all()
    tiny = x.abs() < 1e-4  # tanh(x) rounds to x there
    assert torch.equal(got[tiny], x[tiny])
    assert torch.equal(got[x.abs() >= 10], torch.sign(x[x.abs() >= 10]))


def test_fused_tanh_against_a_wrong_reference_fails():
    # the ulp check above can fail: a 1e-6 relative perturbation is ~8 ulp
    x = torch.linspace(-5, 5, 1001)
    got = fastdiffeq._C._native_mlp_activation("tanh", x)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, torch.tanh(x) * (1 + 1e-6), rtol=3e-7, atol=0)


def test_fused_relu_equals_torch_incl_nan_and_other_activations_are_torchs():
    x = _float_sample()
    torch.testing.assert_close(fastdiffeq._C._native_mlp_activation("relu", x), torch.relu(x), rtol=0, atol=0,
                               equal_nan=True)
    import torch.nn.functional as F
    refs = dict(softplus=F.softplus, elu=F.elu, sigmoid=torch.sigmoid, silu=F.silu)
    for name, fn in refs.items():
        for dtype in (torch.float32, torch.float64):
            y = torch.linspace(-30, 30, 301, dtype=dtype)
            torch.testing.assert_close(fastdiffeq._C._native_mlp_activation(name, y), fn(y), rtol=0, atol=0)
    x64 = x.double()  # tanh in float64 is torch's
    torch.testing.assert_close(fastdiffeq._C._native_mlp_activation("tanh", x64), torch.tanh(x64), rtol=0, atol=0,
                               equal_nan=True)


@pytest.mark.parametrize("hidden", [(), (16,), (16, 8)])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_native_float32_values_and_vjp_equal_autograd(activation, hidden):
    torch.manual_seed(0)
    m = MLP(3, hidden, activation=activation)
    y = 3 * torch.randn(37, 3)
    handle = m.fastdiffeq_native_field(y)
    with torch.no_grad():
        ref_f = m(y)
    torch.testing.assert_close(handle(torch.tensor(0.0), y), ref_f, rtol=2e-6, atol=2e-6)
    v = torch.randn_like(y)
    yy = y.clone().requires_grad_(True)
    ref = torch.autograd.grad(m(yy), [yy, *m.parameters()], v)
    v_before = v.clone()
    f, gy, gp = handle.vjp(y, v)
    assert torch.equal(v, v_before)  # the caller's cotangent is read, never written
    torch.testing.assert_close(f, ref_f, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(gy, ref[0], rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(gp, torch.cat([r.reshape(-1) for r in ref[1:]]), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("gradient", ["none", "direct", "checkpoint", "adjoint"])
@pytest.mark.parametrize("activation", ["tanh", "relu", "silu"])
def test_float32_solves_equal_the_python_path(activation, gradient):
    # Solves keep every stage a field evaluation returned: a workspace leaking into a result would show here.
    torch.manual_seed(0)
    m = MLP(2, (32, 32), activation=activation)
    params = list(m.parameters())
    t = torch.linspace(0.0, 1.0, 4)
    kw = dict(rtol=1e-5, atol=1e-5)

    def run(func):
        m.zero_grad()
        y0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)).requires_grad_(gradient != "none")
        if gradient == "none":
            with torch.no_grad():
                return fastdiffeq.odeint(func, y0, t, **kw), []
        if gradient == "adjoint":
            ys = fastdiffeq.odeint_adjoint(func, y0, t, adjoint_params=params, **kw)
        else:
            ys = fastdiffeq.odeint(func, y0, t, gradient=gradient, gradient_params=params, **kw)
        ys.square().sum().backward()
        return ys.detach(), [y0.grad] + [p.grad.clone() for p in params]

    ys_n, g_n = run(m)
    assert fastdiffeq.last_stats().field == "native"
    ys_p, g_p = run(python_path(m))
    torch.testing.assert_close(ys_n, ys_p, rtol=1e-4, atol=1e-5)
    # relu's derivative jumps at 0: a float32 rounding difference in a pre-activation near 0 (the native narrow
    # first/last-layer loops round unlike BLAS) flips one unit's gate at one stage, which moves a few weight-gradient
    # elements by ~1e-4 of the gradients' O(1) scale.
    atol = 5e-4 if activation == "relu" else 1e-4
    for a, b in zip(g_n, g_p):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=atol)
