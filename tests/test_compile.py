"""torch.compile: a compiled model that calls odeint / odeint_adjoint graph-breaks once at the call, cleanly
(no warnings), gives the eager results, and a vector field the user compiled stays compiled inside the solver.
Backends "eager" / "aot_eager": dynamo's behaviour at the call is the backend's business only after the break."""

from __future__ import annotations

import warnings

import pytest
import torch

import fastdiffeq

pytestmark = pytest.mark.usefixtures("single_thread")

dynamo = pytest.importorskip("torch._dynamo")


class Model(torch.nn.Module):
    """An encoder, a neural ODE and a decoder: the ODE call splits the compiled graph in two."""

    def __init__(self, adjoint: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = torch.nn.Linear(3, 2)
        self.field = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
        self.dec = torch.nn.Linear(2, 1)
        self.adjoint = adjoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.enc(x))
        t = torch.linspace(0.0, 1.0, 4)
        if self.adjoint:
            ys = fastdiffeq.odeint_adjoint(lambda t, y: self.field(y), h, t, rtol=1e-6, atol=1e-6,
                                           adjoint_params=tuple(self.field.parameters()))
        else:
            ys = fastdiffeq.odeint(lambda t, y: self.field(y), h, t, rtol=1e-6, atol=1e-6)
        return self.dec(ys[-1]).sin()


def _graph_breaks() -> int:
    return sum(dynamo.utils.counters["graph_break"].values())


@pytest.mark.parametrize("adjoint", [False, True], ids=["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compiled_model_calling_the_solver(adjoint, backend):
    model = Model(adjoint)
    x = torch.randn(5, 3)
    ref = model(x)
    ref.sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    dynamo.reset()
    dynamo.utils.counters.clear()
    compiled = torch.compile(model, backend=backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(x)
        out.sum().backward()
        out2 = compiled(x)  # cached: no recompilation, no new break
    assert [str(w.message)[:200] for w in caught] == []
    assert _graph_breaks() == 1, dict(dynamo.utils.counters["graph_break"])
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out2, ref)
    for p, g in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g)


def test_user_compiled_field_stays_compiled_inside_the_solver():
    runs = {"graphs": 0, "calls": 0}

    def counting_backend(gm, example_inputs):
        runs["graphs"] += 1

        def run(*args):
            runs["calls"] += 1
            return gm.forward(*args)

        return run

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    dynamo.reset()
    field = torch.compile(lambda t, y: net(y), backend=counting_backend)
    y0, t = torch.randn(8, 2), torch.linspace(0.0, 2.0, 5)
    with torch.no_grad():
        ref = fastdiffeq.odeint(lambda t, y: net(y), y0, t, rtol=1e-6, atol=1e-6)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ys = fastdiffeq.odeint(field, y0, t, rtol=1e-6, atol=1e-6)
            # ... and from inside a compiled caller (the solver runs eagerly; the field is still compiled)
            outer = torch.compile(lambda y: fastdiffeq.odeint(field, y * 1.0, t, rtol=1e-6, atol=1e-6), backend="eager")
            ys2 = outer(y0)
    assert [str(w.message)[:200] for w in caught] == []
    nfe = fastdiffeq.last_stats().nfe
    assert runs["calls"] >= 2 * nfe, (runs, nfe)  # every evaluation went through the compiled graph
    torch.testing.assert_close(ys, ref)
    torch.testing.assert_close(ys2, ref)
