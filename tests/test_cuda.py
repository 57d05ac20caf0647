"""CUDA kernels against the CPU kernels, and odeint on CUDA against odeint on CPU. Skipped without a GPU."""

import pytest
import torch

import fastdiffeq
from fastdiffeq import _C

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not (torch.cuda.is_available() and _C.built_with_cuda),
                       reason="needs a CUDA device and a CUDA build of fastdiffeq"),
]

ops = torch.ops.fastdiffeq
TAB = _C.tableau("dopri5") if hasattr(_C, "tableau") else None
CONTROL = _C.ControllerParams().pack() if hasattr(_C, "ControllerParams") else None


def _stages(B, D, dtype, n=7, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, D, generator=g, dtype=dtype).to(device) for _ in range(n)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,D", [(1, 1000), (3, 17), (64, 300), (1, 0)])
def test_ops_match_cpu_without_host_sync(dtype, B, D):
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    y, y1, *ks = _stages(B, D, dtype, 9)
    h = torch.linspace(0.1, 0.3, B, dtype=torch.float64) * torch.where(torch.arange(B) % 2 == 0, 1.0, -1.0)
    t0 = torch.linspace(0.0, 1.0, B, dtype=torch.float64)
    rtol = torch.tensor([1e-3, 1e-4], dtype=torch.float64)
    atol = torch.tensor([1e-4, 1e-5], dtype=torch.float64)
    segs = [D // 2, D]
    t_out = torch.tensor([0.0, 0.05, 0.5, 2.0], dtype=torch.float64)
    cu = lambda x: x.cuda() if isinstance(x, torch.Tensor) else [v.cuda() for v in x]  # noqa: E731
    cpu_args = dict(
        stage=(y, ks, h, TAB["a"][6]),
        times=(t0, h, TAB["c"], dtype),
        ctrl=(y, y1, ks, h, TAB["e"], rtol, atol, segs, CONTROL),
        weights=(h, t0, t_out, TAB["mid"]),
        dense=(y, y1, ks, h, t0, t_out, TAB["mid"]),
        probe=(y, ks[0], t0, 1.0, rtol, atol, segs),
    )
    expected = {
        "stage": ops.rk_stage(*cpu_args["stage"]),
        "times": ops.rk_stage_times(*cpu_args["times"]),
        "ctrl": ops.rk_error_control(*cpu_args["ctrl"]),
        "weights": ops.rk_dense_weights(*cpu_args["weights"]),
        "dense": ops.rk_dense_eval(*cpu_args["dense"]),
        "probe": ops.initial_step_probe(*cpu_args["probe"]),
    }
    h0, d1 = expected["probe"][0], expected["probe"][1]
    expected["final"] = ops.initial_step_final(y, ks[0], ks[1], h0, d1, 1.0, rtol, atol, segs, 4, CONTROL)
    # Every argument on the device first: the host-to-device copies themselves synchronise.
    dev = {name: cu(x) for name, x in dict(y=y, y1=y1, ks=ks, h=h, t0=t0, rtol=rtol, atol=atol, t_out=t_out, h0=h0,
                                           d1=d1).items()}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any device->host sync inside an op raises
    try:
        got = {
            "stage": ops.rk_stage(dev["y"], dev["ks"], dev["h"], TAB["a"][6]),
            "times": ops.rk_stage_times(dev["t0"], dev["h"], TAB["c"], dtype),
            "ctrl": ops.rk_error_control(dev["y"], dev["y1"], dev["ks"], dev["h"], TAB["e"], dev["rtol"],
                                         dev["atol"], segs, CONTROL),
            "weights": ops.rk_dense_weights(dev["h"], dev["t0"], dev["t_out"], TAB["mid"]),
            "dense": ops.rk_dense_eval(dev["y"], dev["y1"], dev["ks"], dev["h"], dev["t0"], dev["t_out"], TAB["mid"]),
            "probe": ops.initial_step_probe(dev["y"], dev["ks"][0], dev["t0"], 1.0, dev["rtol"], dev["atol"], segs),
            "final": ops.initial_step_final(dev["y"], dev["ks"][0], dev["ks"][1], dev["h0"], dev["d1"], 1.0,
                                            dev["rtol"], dev["atol"], segs, 4, CONTROL),
        }
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(got["stage"].cpu(), expected["stage"], **tol)
    torch.testing.assert_close(got["times"].cpu(), expected["times"], rtol=0, atol=0)
    ratio, accept, h_next = (x.cpu() for x in got["ctrl"])
    torch.testing.assert_close(ratio, expected["ctrl"][0], rtol=1e-6 if dtype == torch.float32 else 1e-10, atol=0)
    torch.testing.assert_close(h_next, expected["ctrl"][2], rtol=1e-6, atol=0)
    torch.testing.assert_close(got["weights"].cpu(), expected["weights"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got["dense"].cpu(), expected["dense"], **tol)
    for g, e in zip(got["probe"], expected["probe"]):  # h0, d1, y_probe, t_probe
        torch.testing.assert_close(g.cpu(), e, rtol=1e-12 if g.dtype == torch.float64 else 1e-6, atol=0)
    torch.testing.assert_close(got["final"].cpu(), expected["final"], rtol=1e-12 if dtype == torch.float64 else 1e-6,
                               atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_place_ops_match_cpu_and_guard_invalid_out_index(dtype):
    B, D = 3, 50
    y, y1, *ks = _stages(B, D, dtype, 9, seed=3)
    h = torch.tensor([0.4, -0.3, 0.2], dtype=torch.float64)
    t0 = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    t_out = torch.tensor([[0.0, 0.1, 0.3, 0.5], [1.0, 0.9, 0.8, 0.0], [0.0, 0.1, 0.15, 0.9]], dtype=torch.float64)
    accept = torch.tensor([True, True, True])
    # Sample 2 carries an out_index past T: the CPU kernels raise; CUDA writes nothing for it and marks it.
    out_index = torch.tensor([1, 1, 7], dtype=torch.long)
    out_cpu = torch.zeros(4, B, D, dtype=dtype)
    ok = torch.tensor([1, 1, 1], dtype=torch.long)
    ops.rk_dense_output(out_cpu, y, y1, ks, h, t0, accept, t_out, ok, TAB["mid"])
    out_cu = torch.zeros(4, B, D, dtype=dtype, device="cuda")
    ops.rk_dense_output(out_cu, y.cuda(), y1.cuda(), [k.cuda() for k in ks], h.cuda(), t0.cuda(), accept.cuda(),
                        t_out.cuda(), out_index.cuda(), TAB["mid"])
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out_cu[:, :2].cpu(), out_cpu[:, :2], **tol)
    assert (out_cu[:, 2] == 0).all()

    state = dict(y0=y.clone(), k0=ks[0].clone(), t0=t0.clone(), h=h.clone(),
                 status=torch.full((B,), fastdiffeq.Status.RUNNING, dtype=torch.int32),
                 counters=torch.zeros(B, len(_C.counter_indices), dtype=torch.long))
    cu_state = {k: v.cuda() for k, v in state.items()}
    idx_cu = out_index.cuda()
    ops.rk_commit(cu_state["y0"], cu_state["k0"], cu_state["t0"], cu_state["h"], cu_state["status"],
                  cu_state["counters"], idx_cu, y1.cuda(), ks[-1].cuda(), (h * 2).cuda(), accept.cuda(),
                  torch.zeros(B, dtype=torch.float64, device="cuda"), t_out.cuda(), 100)
    assert int(cu_state["status"][2]) == fastdiffeq.Status.INVALID_INDEX
    torch.testing.assert_close(cu_state["y0"][2].cpu(), y[2], rtol=0, atol=0)  # untouched
    assert int(idx_cu[2]) == 7 and float(cu_state["t0"][2]) == 0.0
    torch.testing.assert_close(cu_state["y0"][:2].cpu(), y1[:2], rtol=0, atol=0)  # the others moved on


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_odeint_on_cuda_matches_cpu(dtype):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).to(dtype)
    y0 = torch.randn(64, 2, dtype=dtype)
    t = torch.linspace(0, 3, 7, dtype=dtype)
    with torch.no_grad():
        ref = fastdiffeq.odeint(lambda s, y: net(y) * torch.cos(s), y0, t, rtol=1e-6, atol=1e-6)
        net_cu = net.cuda()
        got = fastdiffeq.odeint(lambda s, y: net_cu(y) * torch.cos(s), y0.cuda(), t.cuda(), rtol=1e-6, atol=1e-6)
    # CUDA contracts multiply-adds (FMA) and its pow differs by an ulp: a step decision near ratio 1 may flip,
    # so the two solves agree to the solve's tolerance, not to rounding.
    tol = 1e-4 if dtype == torch.float32 else 1e-5
    torch.testing.assert_close(got.cpu(), ref, rtol=tol, atol=tol)


def test_gradients_on_cuda_match_cpu():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)).double()
    y0 = torch.randn(8, 2, dtype=torch.float64)
    t = torch.linspace(0, 1, 4, dtype=torch.float64)

    def grads(device, **kw):
        m = net.to(device)
        for p in m.parameters():
            p.grad = None
        ys = fastdiffeq.odeint_adjoint(lambda s, y: m(y), y0.to(device), t.to(device), rtol=1e-9, atol=1e-11,
                                       adjoint_params=tuple(m.parameters()), **kw)
        ys.square().sum().backward()
        return [p.grad.cpu().clone() for p in m.parameters()]

    ref = grads("cpu")
    got = grads("cuda")
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
