"""The CNF's native (C++) augmented field (_C.NativeCNF) against the same field in Python: values, hand-written
vector-Jacobian products (second derivatives of every activation), every gradient mode, gradcheck, fallbacks."""

import copy

import pytest
import torch

import fastdiffeq
from fastdiffeq import _C
from fastdiffeq.nn import ACTIVATIONS, CNF, ConcatSquashMLP
from fastdiffeq.nn._cnf import _AugmentedField, _draw_noise

pytestmark = pytest.mark.usefixtures("single_thread")

GRADIENTS = ("adjoint", "direct", "checkpoint")


def make_flow(activation="softplus", trace="exact", kinetic=0.0, jacobian=0.0, dim=3, hidden=(8, 7), seed=0,
              **kw):
    torch.manual_seed(seed)
    return CNF(ConcatSquashMLP(dim, hidden, activation=activation), trace=trace, kinetic=kinetic,
               jacobian=jacobian, T=0.7, **kw).double()


def fields(flow, n, with_logp=True, seed=1):
    """The native description and a Python reference of the same augmented field (same noise)."""
    x = torch.zeros(n, flow.dynamics.dim, dtype=torch.float64)
    torch.manual_seed(seed)
    noise = _draw_noise("rademacher", x) if flow.trace == "hutchinson" and with_logp else None
    # Hutchinson's Frobenius estimate is ||J eps||^2 with forward-mode products, ||eps^T J||^2 with autograd's
    # vector-Jacobian products (both unbiased): the native field computes the former, like derivatives='forward'.
    flow.derivatives = "forward" if flow.trace == "hutchinson" else "autograd"
    reference = _AugmentedField(flow, x.shape[1:], with_logp, noise)
    flow.derivatives = "auto"
    native = _AugmentedField(flow, x.shape[1:], with_logp, noise)
    width = flow.dynamics.dim + ((1 + native.with_kinetic + native.with_jacobian) if with_logp else 0)
    y = torch.randn(n, width, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    handle = native.fastdiffeq_native_field(y)
    assert handle is not None
    return handle, reference, y


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
@pytest.mark.parametrize("rnode", [False, True])
def test_values_and_vjp_equal_autograd(activation, trace, rnode):
    flow = make_flow(activation, trace, kinetic=0.3 * rnode, jacobian=0.2 * rnode)
    handle, reference, y = fields(flow, n=6)
    s = torch.tensor(0.37, dtype=torch.float64)
    torch.testing.assert_close(handle(s, y), reference(s, y), rtol=1e-12, atol=1e-13)
    v = torch.randn_like(y)
    params = list(flow._params())
    yy = y.clone().requires_grad_(True)
    expected = torch.autograd.grad(reference(s, yy), [yy] + params, v)
    f, grad_y, grad_params = handle.vjp(s, y, v)
    torch.testing.assert_close(f, reference(s, y), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(grad_y, expected[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_params, torch.cat([g.reshape(-1) for g in expected[1:]]), rtol=1e-10,
                               atol=1e-12)


def test_without_log_density_and_one_layer():
    for hidden in ((), (5,)):
        flow = make_flow("tanh", hidden=hidden)
        handle, reference, y = fields(flow, n=4, with_logp=False)
        s = torch.tensor(0.8, dtype=torch.float64)
        torch.testing.assert_close(handle(s, y), reference(s, y), rtol=1e-12, atol=1e-13)
        v = torch.randn_like(y)
        yy = y.clone().requires_grad_(True)
        params = list(flow._params())
        expected = torch.autograd.grad(reference(s, yy), [yy] + params, v, allow_unused=True)
        _, grad_y, grad_params = handle.vjp(s, y, v)
        torch.testing.assert_close(grad_y, expected[0], rtol=1e-10, atol=1e-12)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                          for g, p in zip(expected[1:], params)])
        torch.testing.assert_close(grad_params, flat, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_gradcheck_through_the_autograd_function(trace):
    flow = make_flow("silu", trace, kinetic=0.1, jacobian=0.1, dim=2, hidden=(4,))
    handle, _, y = fields(flow, n=3)
    layers = list(flow.dynamics.layers)
    noise = None
    if trace == "hutchinson":
        torch.manual_seed(1)
        noise = _draw_noise("rademacher", torch.zeros(3, 2, dtype=torch.float64))

    def fn(y, sqrt_T, *p):
        k = len(layers)
        h = _C.NativeCNF(list(p[0:5 * k:5]), list(p[1:5 * k:5]), list(p[2:5 * k:5]), list(p[3:5 * k:5]),
                         list(p[4:5 * k:5]), sqrt_T, train_T=True, activation="silu", trace=trace, noise=noise,
                         kinetic=True, jacobian=True)
        return h(torch.tensor(0.4, dtype=torch.float64), y)

    inputs = [y.clone().requires_grad_(True), flow.sqrt_T.detach().clone().requires_grad_(True)]
    inputs += [p.detach().clone().requires_grad_(True) for m in layers for p in m.parameters()]
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("gradient", GRADIENTS)
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_cnf_native_equals_python_paths_in_every_gradient_mode(gradient, trace):
    x = fastdiffeq.datasets.toy_2d("8gaussians", 32, seed=0).double()
    base = make_flow("softplus", trace, kinetic=0.01, jacobian=0.02, dim=2, hidden=(16, 16), gradient=gradient,
                     rtol=1e-8, atol=1e-8)
    results = {}
    for derivatives in ("auto", "forward", "autograd"):
        flow = copy.deepcopy(base)
        flow.derivatives = derivatives
        torch.manual_seed(5)  # the same Hutchinson draw
        loss = -flow.log_prob(x).mean() + flow.regularization().mean()
        path = fastdiffeq.last_stats().field
        loss.backward()
        backward_path = fastdiffeq.last_backward_stats().field if gradient != "direct" else None
        results[derivatives] = (loss.detach(), [p.grad for p in flow.parameters()], path, backward_path,
                                flow.nfe_forward, flow.nfe_backward)
    native, python = results["auto"], results["forward"]
    assert native[2] == "native" and python[2] == "python"
    if gradient != "direct":
        assert native[3] == "native"
    assert native[4:] == python[4:]  # the same steps, counted the same way
    # (Hutchinson's Frobenius term differs under autograd: ||eps^T J||^2, see fields())
    for other in (python, results["autograd"]) if trace == "exact" else (python,):
        torch.testing.assert_close(native[0], other[0], rtol=1e-10, atol=1e-10)
        for a, b in zip(native[1], other[1]):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_float32_native_matches_python_to_float_rounding():
    x = fastdiffeq.datasets.toy_2d("8gaussians", 64, seed=0)
    torch.manual_seed(0)
    base = CNF(ConcatSquashMLP(2, (32, 32)), kinetic=0.01, jacobian=0.01)
    grads = {}
    for derivatives in ("auto", "forward"):
        flow = copy.deepcopy(base)
        flow.derivatives = derivatives
        loss = -flow.log_prob(x).mean()
        loss.backward()
        grads[derivatives] = (loss.item(), torch.cat([p.grad.reshape(-1) for p in flow.parameters()]))
    assert abs(grads["auto"][0] - grads["forward"][0]) < 1e-5
    torch.testing.assert_close(grads["auto"][1], grads["forward"][1], rtol=1e-3, atol=1e-4)


def test_sampling_and_inverse_run_native():
    flow = make_flow("tanh", dim=2, hidden=(8,))
    torch.manual_seed(3)
    samples, logp = flow.sample(16, with_log_prob=True)
    assert fastdiffeq.last_stats().field == "native"
    flow.derivatives = "autograd"
    torch.manual_seed(3)
    samples_ref, logp_ref = flow.sample(16, with_log_prob=True)
    torch.testing.assert_close(samples, samples_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logp, logp_ref, rtol=1e-10, atol=1e-10)


def test_frozen_parameter_takes_the_python_backward_with_the_same_gradients():
    x = fastdiffeq.datasets.toy_2d("8gaussians", 16, seed=0).double()
    base = make_flow("softplus", dim=2, hidden=(8,), rtol=1e-8, atol=1e-8)
    base.dynamics.layers[0].gate_bias.requires_grad_(False)
    grads = {}
    for derivatives in ("auto", "autograd"):
        flow = copy.deepcopy(base)
        flow.derivatives = derivatives
        (-flow.log_prob(x).mean()).backward()
        grads[derivatives] = [p.grad for p in flow.parameters() if p.requires_grad]
    assert fastdiffeq.last_backward_stats().field == "python"
    for a, b in zip(grads["auto"], grads["autograd"]):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_fallbacks_to_python():
    x = torch.randn(4, 2)
    flow = CNF(ConcatSquashMLP(2, (8,)))
    flow.dynamics.double()  # parameters of another dtype than the state
    assert _AugmentedField(flow, x.shape[1:], True, None).fastdiffeq_native_field(x) is None

    class Shifted(ConcatSquashMLP):
        def forward(self, t, z):
            return super().forward(t, z) + 1

    flow = CNF(Shifted(2, (8,)))
    assert _AugmentedField(flow, x.shape[1:], True, None).fastdiffeq_native_field(x) is None
    flow = CNF(ConcatSquashMLP(2, (8,)))
    flow.dynamics.layers[0].register_forward_hook(lambda *a: None)
    assert _AugmentedField(flow, x.shape[1:], True, None).fastdiffeq_native_field(x) is None
    for derivatives in ("forward", "autograd"):
        flow = CNF(ConcatSquashMLP(2, (8,)), derivatives=derivatives)
        assert _AugmentedField(flow, x.shape[1:], True, None).fastdiffeq_native_field(x) is None
    flow = CNF(ConcatSquashMLP(2, (8,)), backend="torchdiffeq")
    assert _AugmentedField(flow, x.shape[1:], True, None).fastdiffeq_native_field(x) is None


def test_double_backward_raises_a_clear_error():
    flow = make_flow("tanh", dim=2, hidden=(4,), gradient="direct")
    x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    lp = flow.log_prob(x).sum()
    with pytest.raises(RuntimeError, match="differentiated twice"):
        torch.autograd.grad(lp, x, create_graph=True)
    (g,) = torch.autograd.grad(flow.log_prob(x).sum(), x)  # first order is fine
    assert torch.isfinite(g).all()


def test_bad_descriptions_raise():
    flow = make_flow("tanh", dim=2, hidden=(4,))
    layers = list(flow.dynamics.layers)
    W = [m.weight for m in layers]
    b = [m.bias for m in layers]
    g = [m.gate_weight for m in layers]
    kw = dict(train_T=True, activation="tanh", trace="exact")
    with pytest.raises(ValueError, match="activation"):
        _C.NativeCNF(W, b, g, g, g, flow.sqrt_T, train_T=True, activation="gelu", trace="exact")
    with pytest.raises(ValueError, match="trace"):
        _C.NativeCNF(W, b, g, g, g, flow.sqrt_T, train_T=True, activation="tanh", trace="skilling")
    with pytest.raises(ValueError, match="bias, gate"):
        _C.NativeCNF(W, b[:1], g, g, g, flow.sqrt_T, **kw)
    with pytest.raises(ValueError, match="shape"):
        _C.NativeCNF(W, [b[1], b[0]], g, g, g, flow.sqrt_T, **kw)
    with pytest.raises(ValueError, match="0-dim"):
        _C.NativeCNF(W, b, g, g, g, flow.sqrt_T.reshape(1), **kw)
    with pytest.raises(TypeError, match="dtype"):
        _C.NativeCNF(W, b, g, g, g, flow.sqrt_T.float(), **kw)
    with pytest.raises(ValueError, match="noise"):
        _C.NativeCNF(W, b, g, g, g, flow.sqrt_T, train_T=True, activation="tanh", trace="hutchinson")
    h = _C.NativeCNF(W, b, g, g, g, flow.sqrt_T, **kw)
    s = torch.tensor(0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="columns per sample"):
        h(s, torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match="parameters are Double but the state is Float"):
        h(s, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="one time"):
        h(torch.zeros(2, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="cotangent"):
        h.vjp(s, torch.zeros(4, 3, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64))


def test_float32_softplus_and_sigmoid_of_the_native_field_are_within_two_ulp():
    # A 1 -> 1 -> 1 network with unit weights and open gates: the field's value is softplus(a), its derivative
    # sigmoid(a) (core::softplus_sigmoid_f32: one exp, a polynomial log1p), swept against float64 references.
    flow = CNF(ConcatSquashMLP(1, (1,), activation="softplus"), T=1.0, train_T=False)
    first, last = flow.dynamics.layers
    with torch.no_grad():
        for p in (first.gate_weight, last.gate_weight, first.time_weight, last.time_weight, first.bias, last.bias):
            p.zero_()
        first.gate_bias.fill_(50.0)  # sigmoid(50) rounds to 1 in float32
        last.gate_bias.fill_(50.0)
        first.weight.fill_(1.0)
        last.weight.fill_(1.0)
    a = torch.linspace(-87.0, 100.0, 200_001)
    handle = _AugmentedField(flow, torch.Size([1]), False, None).fastdiffeq_native_field(a.reshape(-1, 1))
    s = torch.tensor(0.0)
    f, grad, _ = handle.vjp(s, a.reshape(-1, 1), torch.ones(a.numel(), 1))
    eps = torch.finfo(torch.float32).eps
    for got, ref in ((f.reshape(-1), torch.nn.functional.softplus(a.double())),
                     (grad.reshape(-1), torch.sigmoid(a.double()))):
        ulps = ((got.double() - ref).abs() / ref.abs()).max().item() / eps
        assert ulps < 2.5, ulps
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 20.5]).reshape(-1, 1)
    out = handle(s, special).reshape(-1)
    assert out[0].isnan() and out[1] == float("inf") and 0 <= out[2].item() < 1e-37
    torch.testing.assert_close(out[3:], torch.nn.functional.softplus(special.reshape(-1)[3:]), rtol=2.5 * eps, atol=0)


def test_non_tensor_arguments_raise_a_clear_type_error():
    # Fuzz (NativeCNF/0/198, NativeCNF/0/85): s=None, noise=[1.0], sqrt_T=0.7 reached pybind11's "incompatible
    # function arguments" dump of the whole signature instead of an error naming the argument.
    flow = make_flow("tanh", dim=2, hidden=(4,))
    layers = list(flow.dynamics.layers)
    W = [m.weight for m in layers]
    b = [m.bias for m in layers]
    kw = dict(train_T=True, activation="tanh", trace="exact")
    with pytest.raises(TypeError, match="^fastdiffeq: sqrt_T must be a torch.Tensor, got float"):
        _C.NativeCNF(W, b, b, b, b, 0.7, **kw)
    with pytest.raises(TypeError, match="^fastdiffeq: noise must be a torch.Tensor or None, got list"):
        _C.NativeCNF(W, b, b, b, b, flow.sqrt_T, train_T=True, activation="tanh", trace="hutchinson", noise=[1.0])
    h = _C.NativeCNF(W, b, b, b, b, flow.sqrt_T, **kw)
    s, y = torch.tensor(0.5, dtype=torch.float64), torch.zeros(4, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="^fastdiffeq: s must be a torch.Tensor, got NoneType"):
        h(None, y)
    with pytest.raises(TypeError, match="^fastdiffeq: s must be a torch.Tensor, got float"):
        h.vjp(0.5, y, y)
    with pytest.raises(TypeError, match="^fastdiffeq: y must be a torch.Tensor, got list"):
        h(s, [0.0] * 12)
    with pytest.raises(TypeError, match="^fastdiffeq: v must be a torch.Tensor, got NoneType"):
        h.vjp(s, y, None)
    assert h(s, y).shape == y.shape  # (the tensors still pass)


def test_sparse_tensors_and_a_complex_time_raise_a_clear_error():
    # Fuzz (NativeCNF sparse / complex mutations): a sparse weight or vector, noise, state or cotangent reached ATen
    # ("memory format option is only supported by strided tensors", "copy_() between dense and sparse", "reshape is
    # not implemented for sparse tensors", and for vjp's sparse y the internal "parameter cotangent must be a
    # contiguous" message); a complex time "value cannot be converted to type double without overflow".
    flow = make_flow("tanh", dim=2, hidden=(3,))
    layers = list(flow.dynamics.layers)
    W = [m.weight.detach() for m in layers]
    b = [m.bias.detach() for m in layers]
    sq = flow.sqrt_T.detach()
    kw = dict(train_T=True, activation="tanh", trace="exact")
    with pytest.raises(TypeError, match="^fastdiffeq: a native CNF field's tensors must be dense"):
        _C.NativeCNF([W[0].to_sparse(), W[1]], b, b, b, b, sq, **kw)
    with pytest.raises(TypeError, match="^fastdiffeq: a native CNF field's tensors must be dense"):
        _C.NativeCNF(W, b, b, b, [b[0], b[1].to_sparse()], sq, **kw)
    with pytest.raises(TypeError, match="^fastdiffeq: a native CNF field's tensors must be dense"):
        _C.NativeCNF(W, b, b, b, b, sq.to_sparse(), **kw)
    noise = torch.randn(4, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="^fastdiffeq: a native CNF field's tensors must be dense"):
        _C.NativeCNF(W, b, b, b, b, sq, train_T=True, activation="tanh", trace="hutchinson", noise=noise.to_sparse())
    h = _C.NativeCNF(W, b, b, b, b, sq, **kw)
    s, y = torch.tensor(0.5, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    for call in (lambda: h(s, y.to_sparse()), lambda: h.vjp(s, y.to_sparse(), y), lambda: h(s.to_sparse(), y)):
        with pytest.raises(TypeError, match="^fastdiffeq: the CNF field's state and time must be dense"):
            call()
    with pytest.raises(ValueError, match="^fastdiffeq: the CNF field's cotangent must match the state .* dense"):
        h.vjp(s, y, y.to_sparse())
    with pytest.raises(TypeError, match="^fastdiffeq: the CNF field's time must be real"):
        h(torch.tensor(0.5 + 0.5j), y)
    torch.testing.assert_close(h(s, y), h.vjp(s, y, y)[0])  # (dense inputs still run)


@pytest.mark.parametrize("derivatives", ["auto", "autograd"])
def test_empty_batch_gives_empty_results(derivatives):
    flow = CNF(ConcatSquashMLP(2, (8,)), kinetic=0.1, derivatives=derivatives)
    lp = flow.log_prob(torch.zeros(0, 2))
    assert lp.shape == (0,) and flow.regularization().shape == (0,) and flow.nfe_forward == 0
    z, delta = flow(torch.zeros(0, 2))
    assert z.shape == (0, 2) and delta.shape == (0,)
    assert flow.inverse(torch.zeros(0, 2)).shape == (0, 2)
