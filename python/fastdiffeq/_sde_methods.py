"""SDE methods: one step each, written against `SDEView` (so the adjoint SDE takes the same code).

A method is a `Method` record: its SDE type, the noise types and Lévy-area approximations it accepts, its
strong order, what it needs from the Brownian motion (W, W and U, or W and A) and its step. A step gets the
step's times (0-dim tensors), y, the solver's extra state and the increments over [t0, t1] and returns
(y1, extra1). Formulas: torchsde 0.2.6's methods (REFERENCE §3); srk's tableaus are Rößler (2010): SRI2 for
diagonal / scalar noise, SRA1 for additive noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ._sde_view import SDEView

LEVY_AREAS = ("none", "space-time", "davie", "foster")
_ALL_NOISE = ("diagonal", "additive", "scalar", "general")


@dataclass(frozen=True)
class Method:
    name: str
    sde_type: str
    noise_types: tuple[str, ...]
    levy_areas: tuple[str, ...]
    brownian: str  # "W" | "WU" (space-time integral U) | "WA" (Lévy area A)
    step: Callable
    strong_order: Callable[[str], float]
    adjoint_ok: bool = True  # False: needs g itself, which the adjoint SDE only offers as products
    init_extra: Callable | None = None


def _euler(sde: SDEView, t0, t1, dt, y0, extra0, w, u, a, options):
    f, g_prod = sde.f_and_g_prod(t0, y0, w)
    return y0 + f * dt + g_prod, ()


def _milstein(ito: bool):
    def step(sde: SDEView, t0, t1, dt, y0, extra0, w, u, a, options):
        v = w**2 - dt if ito else w**2
        if options.get("grad_free", False) and sde.noise_type != "additive":
            f, g = sde.f_and_g(t0, y0)
            g_ = g.squeeze(2) if g.dim() == 3 else g
            sqrt_dt = dt.sqrt()
            y_prime = y0 + (dt * f if ito else 0.0) + g_ * sqrt_dt
            g_prime = sde.g(t0, y_prime)
            g_prod = sde.prod(g, w)
            gdg_prod = sde.prod(g_prime - g, v) / (2 * sqrt_dt)
        else:
            f = sde.f(t0, y0)
            g_prod, gdg_prod = sde.g_prod_and_gdg_prod(t0, y0, w, 0.5 * v)
        return y0 + f * dt + g_prod + gdg_prod, ()
    return step


# Rößler (2010), SRI2 (diagonal / scalar noise, strong order 1.5).
_SRI2_C0 = (0.0, 1.0, 0.5, 0.0)
_SRI2_C1 = (0.0, 0.25, 1.0, 0.25)
_SRI2_A0 = ((), (1.0,), (0.25, 0.25), (0.0, 0.0, 0.0))
_SRI2_A1 = ((), (0.25,), (1.0, 0.0), (0.0, 0.0, 0.25))
_SRI2_B0 = ((), (0.0,), (1.0, 0.5), (0.0, 0.0, 0.0))
_SRI2_B1 = ((), (-0.5,), (1.0, 0.0), (2.0, -1.0, 0.5))
_SRI2_ALPHA = (1 / 6, 1 / 6, 2 / 3, 0.0)
_SRI2_BETA1 = (-1.0, 4 / 3, 2 / 3, 0.0)
_SRI2_BETA2 = (1.0, -4 / 3, 1 / 3, 0.0)
_SRI2_BETA3 = (2.0, -4 / 3, -2 / 3, 0.0)
_SRI2_BETA4 = (-2.0, 5 / 3, -2 / 3, 1.0)
# Rößler (2010), SRA1 (additive noise, strong order 1.5 for additive noise).
_SRA1_C0 = (0.0, 0.75)
_SRA1_C1 = (1.0, 0.0)
_SRA1_A0 = ((), (0.75,))
_SRA1_B0 = ((), (1.5,))
_SRA1_ALPHA = (1 / 3, 2 / 3)
_SRA1_BETA1 = (1.0, 0.0)
_SRA1_BETA2 = (-1.0, 1.0)


def _srk(sde: SDEView, t0, t1, dt, y0, extra0, w, u, a, options):
    if sde.noise_type == "additive":
        return _sra1(sde, t0, dt, y0, w, u)
    return _sri2(sde, t0, dt, y0, w, u)


def _sri2(sde: SDEView, t0, dt, y0, i_k, i_k0):
    # Each stage's f and g is evaluated once (at its own stage value) and reused by the later stages.
    rdt = 1 / dt
    sqrt_dt = dt.sqrt()
    i_kk = (i_k**2 - dt) * 0.5
    i_kkk = (i_k**3 - 3 * dt * i_k) / 6
    y1 = y0
    fs, gs = [], []
    for s in range(4):
        h0, h1 = y0, y0
        for j in range(s):
            h0 = h0 + _SRI2_A0[s][j] * fs[j] * dt + _SRI2_B0[s][j] * gs[j] * i_k0 * rdt
            h1 = h1 + _SRI2_A1[s][j] * fs[j] * dt + _SRI2_B1[s][j] * gs[j] * sqrt_dt
        f = sde.f(t0 + _SRI2_C0[s] * dt, h0)
        g = sde.g(t0 + _SRI2_C1[s] * dt, h1)
        g = g.squeeze(2) if g.dim() == 3 else g
        fs.append(f)
        gs.append(g)
        weight = (_SRI2_BETA1[s] * i_k + _SRI2_BETA2[s] * i_kk / sqrt_dt + _SRI2_BETA3[s] * i_k0 * rdt
                  + _SRI2_BETA4[s] * i_kkk * rdt)
        y1 = y1 + _SRI2_ALPHA[s] * f * dt + g * weight
    return y1, ()


def _sra1(sde: SDEView, t0, dt, y0, i_k, i_k0):
    rdt = 1 / dt
    y1 = y0
    fs = []
    for i in range(2):
        h0 = y0
        for j in range(i):
            g_prod = sde.g_prod(t0 + _SRA1_C1[j] * dt, y0, _SRA1_B0[i][j] * i_k0 * rdt)
            h0 = h0 + _SRA1_A0[i][j] * fs[j] * dt + g_prod
        f = sde.f(t0 + _SRA1_C0[i] * dt, h0)
        fs.append(f)
        g_prod = sde.g_prod(t0 + _SRA1_C1[i] * dt, y0, _SRA1_BETA1[i] * i_k + _SRA1_BETA2[i] * i_k0 * rdt)
        y1 = y1 + _SRA1_ALPHA[i] * f * dt + g_prod
    return y1, ()


def _midpoint(sde: SDEView, t0, t1, dt, y0, extra0, w, u, a, options):
    f, g_prod = sde.f_and_g_prod(t0, y0, w)
    half_dt = 0.5 * dt
    y_prime = y0 + half_dt * f + 0.5 * g_prod
    f_prime, g_prod_prime = sde.f_and_g_prod(t0 + half_dt, y_prime, w)
    return y0 + dt * f_prime + g_prod_prime, ()


def _heun(sde: SDEView, t0, t1, dt, y0, extra0, w, u, a, options):
    f, g_prod = sde.f_and_g_prod(t0, y0, w)
    y_prime = y0 + dt * f + g_prod
    f_prime, g_prod_prime = sde.f_and_g_prod(t1, y_prime, w)
    return y0 + (dt * (f + f_prime) + g_prod + g_prod_prime) * 0.5, ()


def _euler_heun(sde: SDEView, t0, t1, dt, y0, extra0, w, u, a, options):
    f, g_prod = sde.f_and_g_prod(t0, y0, w)
    g_prod_prime = sde.g_prod(t1, y0 + g_prod, w)
    return y0 + dt * f + (g_prod + g_prod_prime) * 0.5, ()


def _log_ode(sde: SDEView, t0, t1, dt, y0, extra0, w, u, a, options):
    f, g_prod = sde.f_and_g_prod(t0, y0, w)
    half_dt = 0.5 * dt
    t_prime = t0 + half_dt
    y_prime = y0 + half_dt * f + 0.5 * g_prod
    f_prime, g_prod_prime = sde.f_and_g_prod(t_prime, y_prime, w)
    return y0 + dt * f_prime + g_prod_prime + sde.dg_ga_jvp_column_sum(t_prime, y_prime, a), ()


def _reversible_heun_init(sde: SDEView, t0, y0):
    return tuple(sde.f_and_g(t0, y0)) + (y0,)


def _reversible_heun(sde: SDEView, t0, t1, dt, y0, extra0, w, u, a, options):
    """Kidger et al. (2021): z1 = 2y0 − z0 + f0 dt + g0 dW; y1 = y0 + ½(f0 + f1) dt + ½(g0 + g1) dW."""
    f0, g0, z0 = extra0
    z1 = 2 * y0 - z0 + f0 * dt + sde.prod(g0, w)
    f1, g1 = sde.f_and_g(t1, z1)
    y1 = y0 + (f0 + f1) * (0.5 * dt) + sde.prod(g0 + g1, 0.5 * w)
    return y1, (f1, g1, z1)


def _order(general: float = 0.5, additive: float | None = None, other: float | None = None):
    def order(noise_type: str) -> float:
        if noise_type == "additive" and additive is not None:
            return additive
        if noise_type in ("diagonal", "scalar", "additive") and other is not None:
            return other
        return general
    return order


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("euler", "ito", _ALL_NOISE, LEVY_AREAS, "W", _euler, _order(0.5, additive=1.0)),
    Method("milstein", "ito", ("additive", "diagonal", "scalar"), LEVY_AREAS, "W", _milstein(True),
           _order(1.0)),
    Method("srk", "ito", ("additive", "diagonal", "scalar"), ("space-time", "davie", "foster"), "WU", _srk,
           _order(1.5), adjoint_ok=False),
    Method("midpoint", "stratonovich", _ALL_NOISE, LEVY_AREAS, "W", _midpoint, _order(0.5, other=1.0)),
    Method("heun", "stratonovich", _ALL_NOISE, LEVY_AREAS, "W", _heun, _order(0.5, other=1.0)),
    Method("euler_heun", "stratonovich", _ALL_NOISE, LEVY_AREAS, "W", _euler_heun, _order(0.5, other=1.0)),
    Method("log_ode", "stratonovich", _ALL_NOISE, ("davie", "foster"), "WA", _log_ode, _order(0.5, other=1.0),
           adjoint_ok=False),
    Method("reversible_heun", "stratonovich", _ALL_NOISE, LEVY_AREAS, "W", _reversible_heun,
           _order(0.5, additive=1.0), init_extra=_reversible_heun_init),
)}
# Milstein for Stratonovich SDEs: the same step without the −dt of the Itô correction.
STRATONOVICH_MILSTEIN = Method("milstein", "stratonovich", ("additive", "diagonal", "scalar"), LEVY_AREAS, "W",
                               _milstein(False), _order(1.0))
METHOD_NAMES = tuple(METHODS) + ("adjoint_reversible_heun",)


def select(name: str, sde_type: str) -> Method:
    """The method record for `name` and the SDE type (milstein has an Itô and a Stratonovich form)."""
    if name == "milstein" and sde_type == "stratonovich":
        return STRATONOVICH_MILSTEIN
    if name not in METHODS:
        if name == "adjoint_reversible_heun":
            raise ValueError("method='adjoint_reversible_heun' is only an adjoint_method (of reversible_heun)")
        raise ValueError(f"method: unknown SDE method {name!r}; expected one of {sorted(METHOD_NAMES)}")
    return METHODS[name]


def check_method(method: Method, sde: SDEView, levy_area: str) -> None:
    """ValueError naming the method and what it does not support (SDE type, noise type, Lévy area)."""
    if sde.sde_type != method.sde_type:
        raise ValueError(f"method {method.name!r} is for {method.sde_type} SDEs, but the sde's sde_type is "
                         f"{sde.sde_type!r}")
    if sde.noise_type not in method.noise_types:
        raise ValueError(f"method {method.name!r} supports noise types {list(method.noise_types)}, not the sde's "
                         f"noise_type {sde.noise_type!r}")
    if levy_area not in method.levy_areas:
        raise ValueError(f"method {method.name!r} needs a Brownian motion with levy_area_approximation in "
                         f"{list(method.levy_areas)}; bm has {levy_area!r}")
    if sde.is_adjoint and not method.adjoint_ok:
        raise ValueError(f"method {method.name!r} cannot solve the adjoint SDE: it needs the diffusion g itself, "
                         f"and the adjoint SDE only offers diffusion-vector products; choose another adjoint_method")


def default_method(sde_type: str, noise_type: str) -> str:
    """torchsde's defaults: Itô general → euler, other Itô → srk, Stratonovich → midpoint."""
    if sde_type == "stratonovich":
        return "midpoint"
    return "euler" if noise_type == "general" else "srk"

