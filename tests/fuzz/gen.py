"""Seeded call generation. ``make_call(target, seed, i)`` is a pure function of its arguments: it draws
a valid baseline call, applies 0-3 mutations (the fuzz), and returns a :class:`Call` that renders to a
standalone Python program (see helpers.py) plus the oracle facts the runner checks.

Targets: ``op:<name>`` for every op in torch.ops.fastdiffeq (arguments generated from the op's schema
with the name-hint table ``HINTS``), ``rk_solve``, ``rk_checkpoint_backward``, ``odeint``,
``odeint_adjoint`` (one argument-building function each: ``solve_call``, ``backward_call``, ``api_call``).

Adding a target: write ``def my_call(g) -> Call`` (baseline args as specs, ``g.mutate_*`` on some of them,
must_raise reasons and checks) and register it in ``ENTRY_POINTS``.
"""

from __future__ import annotations

import math
import os
import random
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

# ---------------------------------------------------------------------------------------------------
# Argument specs: data that renders to Python source
# ---------------------------------------------------------------------------------------------------


@dataclass
class Ten:
    """A tensor built by helpers.mk (same keyword names)."""

    shape: Tuple[int, ...]
    dtype: str = "float64"
    fill: str = "randn"
    seed: int = 0
    values: Optional[list] = None
    value: Any = 0.0
    lo: float = 0.0
    hi: float = 1.0
    specials: Tuple[Tuple[int, Any], ...] = ()
    layout: str = "contig"
    device: str = "cpu"
    guard: bool = False
    requires_grad: bool = False

    def expr(self, meta: bool = False) -> str:
        kw = [f"{list(self.shape)!r}", repr(self.dtype)]
        if self.fill == "randn":
            kw.append(f"seed={self.seed}")
        elif self.fill == "values":
            kw.append(f"fill='values', values={lit(self.values)}")
        elif self.fill == "full":
            kw.append(f"fill='full', value={lit(self.value)}")
        elif self.fill == "grid":
            kw.append(f"fill='grid', lo={lit(self.lo)}, hi={lit(self.hi)}")
        if self.specials:
            kw.append(f"specials={lit(list(self.specials))}")
        if self.layout != "contig":
            kw.append(f"layout={self.layout!r}")
        if meta or self.device != "cpu":
            kw.append("device='meta'")
        elif self.guard:
            kw.append("guard=True")
        if self.requires_grad:
            kw.append("requires_grad=True")
        return f"mk({', '.join(kw)})"

    def numbers(self) -> Optional[list]:
        """The values, when they are explicit (index and grid checks)."""
        if self.fill == "values":
            vals = list(self.values)
        elif self.fill == "full":
            vals = [self.value] * math.prod(self.shape)
        elif self.fill == "grid":
            n = math.prod(self.shape)
            vals = [self.lo + (self.hi - self.lo) * k / (n - 1) for k in range(n)] if n > 1 else [self.lo] * n
        else:
            return None
        n = math.prod(self.shape)
        vals = (vals * (n // max(len(vals), 1) + 1))[:n] if vals else []
        for idx, v in self.specials:
            if n:
                vals[int(idx) % n] = v
        return vals


@dataclass
class Alias:
    """The same memory as the tensor variable `src`: itself, or an overlapping view of it."""

    src: str
    view: str = ""  # Python suffix applied to src, e.g. "[0]" or ".reshape(-1)[1:7].view(2, 3)"

    def expr(self, copies: bool = False) -> str:
        return f"{self.src}{self.view}" + (".clone()" if copies else "")


@dataclass
class Code:
    text: str


@dataclass
class Rel:
    """Times relative to the call's final time grid: t_first + frac * (t_last - t_first) + offset each;
    resolved (by ``resolve_times``) after all mutations, so step_t/jump_t follow a mutated grid."""

    points: List[Tuple[float, float]]


REL_CHOICES = [[(0.5, 0.0)], [(0.25, 0.0)], [(0.0, 0.0)], [(1.0, 0.0)], [(1.5, 0.0)], [(-0.5, 0.0)],
               [(0.5, 0.0), (0.5, 0.0)], [(0.0, math.nan)], [(0.0, math.inf)], [(1.0, 0.0), (0.0, 0.0)],
               [(0.5, 0.0), (0.5, 1e-300)]]


def resolve_times(spec: Any, grid: Any) -> Any:
    vals = grid.numbers() if isinstance(grid, Ten) else None
    vals = vals or [0.0, 1.0]
    first, last = vals[0], vals[-1] if len(vals) > 1 else vals[0] + 1.0
    if isinstance(spec, Rel):
        return [first + f * (last - first) + off for f, off in spec.points]
    if isinstance(spec, dict):
        return {k: resolve_times(v, grid) for k, v in spec.items()}
    if isinstance(spec, Ten) and spec.fill == "values" and spec.values and isinstance(spec.values[0], Rel):
        return replace(spec, values=resolve_times(spec.values[0], grid))
    return spec


def lit(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (list, tuple)):
        inner = ", ".join(lit(x) for x in v)
        return f"[{inner}]" if isinstance(v, list) else f"({inner}{',' if len(v) == 1 else ''})"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {lit(x)}" for k, x in v.items()) + "}"
    if isinstance(v, Code):
        return v.text
    return repr(v)


def walk(spec: Any, path: str):
    """(path, spec) for every Ten/Alias inside a spec (lists, tuples and dicts are containers)."""
    if isinstance(spec, (Ten, Alias)):
        yield path, spec
    elif isinstance(spec, (list, tuple)):
        for j, s in enumerate(spec):
            yield from walk(s, f"{path}_{j}")
    elif isinstance(spec, dict):
        for k, s in spec.items():
            yield from walk(s, f"{path}_{k}")


# ---------------------------------------------------------------------------------------------------
# A call
# ---------------------------------------------------------------------------------------------------


@dataclass
class Call:
    target: str
    callee: str                               # e.g. "OPS.rk_stage" or "api_call"
    args: Dict[str, Any]                      # name -> spec, in call order
    positional: int = 0                       # the first n args are passed positionally
    env: Dict[str, Any] = field(default_factory=dict)   # specs built before the call, not passed
    setup: List[str] = field(default_factory=list)      # lines after the tensors, before the call
    mutable: List[str] = field(default_factory=list)    # variables the call may write (observed after it)
    must_raise: List[str] = field(default_factory=list)  # contract violations in the inputs
    checks: List[Tuple[str, str]] = field(default_factory=list)  # (failure class, expr true on success)
    muts: List[str] = field(default_factory=list)       # the mutations applied (for people)
    meta_parity: bool = False                  # re-run with every tensor on meta: must also succeed
    swap: Optional[Tuple[str, str]] = None     # metamorphic variant: replace text a by b, same result
    level: str = "op"                          # op | C | api (what counts as a clear error)
    observe: str = "RESULT"                    # what is compared between runs (with the mutable args)
    key: Tuple = ()

    def render(self, copies: bool = False, meta: bool = False) -> Tuple[List[str], str]:
        """(setup lines, call expression). copies: aliases become clones; meta: all tensors on meta."""
        tensors, aliases = [], []

        def ex(spec: Any, path: str) -> str:
            if isinstance(spec, Ten):
                tensors.append(f"{path} = {spec.expr(meta)}")
                return path
            if isinstance(spec, Alias):
                aliases.append(f"{path} = {spec.expr(copies)}")
                return path
            if isinstance(spec, list) and any(isinstance(s, (Ten, Alias, list)) for s in spec):
                return "[" + ", ".join(ex(s, f"{path}_{j}") for j, s in enumerate(spec)) + "]"
            if isinstance(spec, tuple) and any(isinstance(s, (Ten, Alias)) for s in spec):
                parts = [ex(s, f"{path}_{j}") for j, s in enumerate(spec)]
                return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
            if isinstance(spec, dict):
                return "{" + ", ".join(f"{k!r}: {ex(s, f'{path}_{k}')}" for k, s in spec.items()) + "}"
            return lit(spec)

        for name, spec in self.env.items():
            e = ex(spec, name)
            if e != name:
                tensors.append(f"{name} = {e}")
        exprs = []
        for name, spec in self.args.items():
            e = ex(spec, name)
            items = list(spec.values() if isinstance(spec, dict) else spec) if isinstance(spec, (list, tuple, dict)) \
                else None
            if items and any(isinstance(x, (Ten, Alias, Code)) for x in items):
                # a container of tensors or code: a variable the checks can refer to
                aliases.append(f"{name} = {e}")
                e = name
            exprs.append((name, e))
        parts = [e for _, e in exprs[:self.positional]] + [f"{n}={e}" for n, e in exprs[self.positional:]]
        lines = tensors + list(self.setup) + aliases
        expr = f"{self.callee}({', '.join(parts)})"
        return lines, expr

    def has_alias(self) -> bool:
        return any(isinstance(s, Alias) for n, v in self.args.items() for _, s in walk(v, n))

    def parts(self, variant: str = "") -> Tuple[str, str]:
        """(setup source, call statement) of a variant: "" (the call), "copies" (aliases replaced by
        clones), "meta" (every tensor on meta), "swap" (the metamorphic twin, e.g. F.identity -> F.grow)."""
        lines, expr = self.render(copies=variant == "copies", meta=variant == "meta")
        setup, stmt = "\n".join(lines), f"RESULT = {expr}"
        if variant == "swap" and self.swap:
            setup, stmt = setup.replace(*self.swap), stmt.replace(*self.swap)
        return setup, stmt

    def program(self, variant: str = "") -> str:
        """The standalone reproduction (what the worker logs before running the call)."""
        setup, stmt = self.parts(variant)
        head = [f"# fastdiffeq fuzz {'/'.join(map(str, self.key))} {variant or 'call'}"]
        if self.muts:
            head.append("# mutations: " + "; ".join(self.muts))
        if self.must_raise:
            head.append("# must raise: " + "; ".join(self.must_raise))
        return "\n".join(head + ["import sys; sys.path.insert(0, 'tests')", "from fuzz.helpers import *", setup,
                                 stmt])


# ---------------------------------------------------------------------------------------------------
# The generator: a seeded RNG plus the mutation menus
# ---------------------------------------------------------------------------------------------------

SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e300, -1e300, 1e-300, 5e-324, 2.0, 1.0]
SPECIAL_INTS = [0, -1, 1, -2**63, 2**63 - 1, 2**31, 2**32 + 1, -10**9]
BAD_INDICES = [-1, -2, -3, -10**9, 2**62, 2**63 - 1, -2**63]
DTYPES = ["float16", "float32", "float64", "int32", "int64", "bool", "bfloat16"]


class Gen:
    def __init__(self, *key: Any) -> None:
        self.r = random.Random(":".join(map(str, key)))

    def p(self, prob: float) -> bool:
        return self.r.random() < prob

    def choice(self, seq):
        return seq[self.r.randrange(len(seq))]

    def randint(self, a: int, b: int) -> int:
        return self.r.randint(a, b)

    def seed(self) -> int:
        return self.r.randrange(10**6)

    def uniform(self, a: float, b: float, digits: int = 3) -> float:
        return round(self.r.uniform(a, b), digits)

    # -- tensors ---------------------------------------------------------------------------------

    def mutate_tensor(self, t: Ten, kind: str = "", bound: int = 0) -> Tuple[Ten, str]:
        """One random change to a tensor spec; kind-specific values for indices, grids and steps."""
        menu = ["dtype", "shape", "layout", "meta", "special", "special"]
        if kind == "index":
            menu += ["bad_index"] * 4
        if kind == "grid":
            menu += ["grid"] * 4
        if kind in ("step", "time", "ratio", "tol", "abs_step"):
            menu += ["scalar_values"] * 2
        m = self.choice(menu)
        if m == "dtype":
            d = self.choice([x for x in DTYPES if x != t.dtype])
            return replace(t, dtype=d), f"dtype {d}"
        if m == "shape":
            s = list(t.shape)
            how = self.choice(["0-dim", "drop", "add", "grow", "shrink", "empty"])
            if how == "0-dim" or not s:
                s = []
            elif how == "drop":
                s = s[1:]
            elif how == "add":
                s = s + [2]
            elif how == "grow":
                k = self.randint(0, len(s) - 1)
                s[k] += self.choice([1, 2, 5])
            elif how == "shrink":
                k = self.randint(0, len(s) - 1)
                s[k] = max(s[k] - 1, 0)
            else:
                s[self.randint(0, len(s) - 1)] = 0
            return replace(t, shape=tuple(s)), f"shape {tuple(s)}"
        if m == "layout":
            lay = self.choice(["t", "stride2", "expand", "offset"])
            return replace(t, layout=lay, guard=False), f"layout {lay}"
        if m == "meta":
            return replace(t, device="meta"), "on meta"
        if m == "bad_index":
            v = self.choice(BAD_INDICES + [bound, bound + 1])
            n = max(math.prod(t.shape), 1)
            return replace(t, fill="values", values=[v] * n, specials=()), f"index {v}"
        if m == "grid":
            return self.mutate_grid(t)
        if m == "scalar_values":
            v = self.choice(SPECIAL_FLOATS)
            return replace(t, fill="full", value=v, specials=()), f"all {lit(v)}"
        v = self.choice(SPECIAL_FLOATS if t.dtype.startswith(("float", "bfloat")) else SPECIAL_INTS)
        k = self.randint(0, 97)
        return replace(t, specials=tuple(t.specials) + ((k, v),)), f"element {k} = {lit(v)}"

    def mutate_grid(self, t: Ten) -> Tuple[Ten, str]:
        vals = t.numbers() or [0.0, 1.0]
        n = len(vals)
        how = self.choice(["reverse_pair", "repeat", "nan", "extreme", "extreme", "tiny_span", "inf", "far", "far"])
        if how == "reverse_pair" and n >= 3:
            vals[1], vals[2] = vals[2], vals[1]
        elif how == "repeat" and n >= 2:
            vals[-1] = vals[-2]
        elif how == "nan" and n:
            vals[self.randint(0, n - 1)] = math.nan
        elif how == "inf" and n:
            vals[-1] = self.choice([math.inf, -math.inf])
        elif how == "far":  # far from 0: t + h == t for small h
            lo, span = self.choice([1e18, -1e18, 1e16]), self.choice([1e4, 1.0, -1e4])
            vals = [lo + span * k / max(n - 1, 1) for k in range(n)]
        elif how == "tiny_span":
            base = self.choice([0.0, 1.0])
            vals = [base + k * 1e-300 for k in range(n)] if base == 0.0 else [base] * n
        else:
            lo = self.choice([1e18, -1e300, 1e300, 1e-300, -1e18])
            span = self.choice([1e4, 1e300, abs(lo), 1.0])
            vals = [lo + span * k / max(n - 1, 1) for k in range(n)]
        return replace(t, fill="values", values=vals, specials=()), f"grid {how} {lit(vals[:4])}"

    # -- lists and scalars ---------------------------------------------------------------------------

    def mutate_floats(self, xs: list) -> Tuple[list, str]:
        how = self.choice(["empty", "shorter", "longer", "special", "special"])
        xs = list(xs)
        if how == "empty":
            xs = []
        elif how == "shorter":
            xs = xs[:-1]
        elif how == "longer":
            xs = xs + [0.5] * self.choice([1, 8])
        elif xs:
            xs[self.randint(0, len(xs) - 1)] = self.choice(SPECIAL_FLOATS)
        return xs, f"list {how} {lit(xs[:8])}"

    def mutate_segments(self, ends: list, D: int) -> Tuple[list, str]:
        how = self.choice(["empty", "decreasing", "negative", "past_end", "huge", "zero_first", "dup", "short"])
        xs = list(ends)
        if how == "empty":
            xs = []
        elif how == "decreasing":
            xs = [D + 2, max(D - 1, 0), D] if D else [3, 1, 0]
        elif how == "negative":
            xs = [-self.choice([1, 5, 10**9])] + xs
        elif how == "past_end":
            xs = xs[:-1] + [D + self.choice([1, 7])]
        elif how == "huge":
            xs = xs[:-1] + [self.choice([2**62, 2**63 - 1])]
        elif how == "zero_first":
            xs = [0] + xs
        elif how == "dup":
            xs = xs + xs[-1:]
        else:
            xs = xs[:-1]
        return xs, f"segment_ends {how} {xs}"

    def mutate_float(self, name: str) -> Tuple[float, str]:
        extra = {"safety": [2.0, 1.5, 1.0], "max_step": [1e-300, 0.0], "min_step": [1e300, 0.5],
                 "first_step": [1e-300, 1e300, -0.1], "ifactor": [1.0, 0.5], "dfactor": [1.0, 1.5],
                 "exponent": [0.0, 50.0]}.get(name, [])
        v = self.choice(SPECIAL_FLOATS + extra * 2)
        return v, f"{name}={lit(v)}"

    def mutate_int(self, name: str) -> Tuple[int, str]:
        v = self.choice(SPECIAL_INTS)
        return v, f"{name}={v}"


# ---------------------------------------------------------------------------------------------------
# Ops: arguments from the schema, semantics from the argument names
# ---------------------------------------------------------------------------------------------------

# Argument name -> kind (how a valid value looks). Unknown names fall back on their type and are
# reported as "unhinted" so the table can be extended when an op gains an argument.
HINTS: Dict[str, Any] = {
    "y": "state", "y0": "state", "y1": "state", "k0": "state", "k_last": "state", "ks": "stages",
    "out": "dense_out", "h": "step", "h_next": "step", "t0": "time", "ratio": "ratio", "accept": "mask",
    "status": "status", "counters": "counters", "out_index": "index", "t_out": "grid", "t_eval": "eval_times",
    "rtol": "rtol", "atol": "atol", "segment_ends": "segments", "coeffs": "coeffs", "err_coeffs": "err",
    "mid_coeffs": "mid", "c": "nodes", "dtype": "dtype",
    # Hairer's initial step (initial_step_probe / initial_step_final)
    "f0": "state", "f1": "state", "h0": "abs_step", "d1": "ratio", "direction": "direction", "order": 4,
    # controller: loose doubles today, one float[] `control` after F9
    "safety": 0.9, "ifactor": 10.0, "dfactor": 0.2, "exponent": 0.2, "min_step": 0.0, "max_step": math.inf,
    "control": [0.9, 10.0, 0.2, 0.2, 0.0, math.inf], "max_num_steps": 100,
}


@dataclass
class Dims:
    B: int
    D: int
    T: int
    R: int
    S: int
    nseg: int
    dtype: str
    direction: float
    tab: dict


def _adaptive_methods() -> List[str]:
    """The methods the adaptive loops and ops take (the fixed-grid ones have their own entry point)."""
    from fastdiffeq import _C

    return [m for m in _C.methods if _C.tableau(m)["stepping"] == "adaptive"]


def _draw_dims(g: Gen) -> Dims:
    from fastdiffeq import _C

    tab = _C.tableau(g.choice(_adaptive_methods()))
    empty = g.p(0.1)
    B = 0 if empty and g.p(0.5) else g.choice([1, 1, 2, 3])
    D = 0 if empty and B else g.choice([1, 2, 3, 5, 8])
    T = g.choice([1, 2, 3, 5])
    nseg = g.randint(1, max(min(3, D), 1))
    return Dims(B=B, D=D, T=T, R=g.choice([0, 1, 2, 4]), S=tab["stages"], nseg=nseg,
                dtype=g.choice(["float64", "float32"]), direction=g.choice([1.0, 1.0, -1.0]), tab=tab)


def _segments(g: Gen, D: int, nseg: int) -> list:
    cuts = sorted(g.randint(0, D) for _ in range(nseg - 1))
    return cuts + [D]


def _baseline(g: Gen, kind: Any, d: Dims) -> Any:
    f64 = "float64"
    B, D, T = d.B, d.D, d.T
    if not isinstance(kind, str):
        return list(kind) if isinstance(kind, list) else kind
    if kind == "state":
        return Ten((B, D), d.dtype, seed=g.seed())
    if kind == "stages":
        return [Ten((B, D), d.dtype, seed=g.seed()) for _ in range(d.S)]
    if kind == "dense_out":
        return Ten((T, B, D), d.dtype, fill="full", value=0.0)
    if kind == "step":
        return Ten((B,), f64, fill="values", values=[d.direction * g.uniform(0.05, 0.5) for _ in range(B)])
    if kind == "time":
        return Ten((B,), f64, fill="values", values=[d.direction * g.uniform(0.0, 0.5) for _ in range(B)])
    if kind == "abs_step":
        return Ten((B,), f64, fill="values", values=[g.uniform(1e-3, 0.5) for _ in range(B)])
    if kind == "direction":
        return d.direction
    if kind == "ratio":
        return Ten((B,), f64, fill="values", values=[g.uniform(0.0, 2.0) for _ in range(B)])
    if kind == "mask":
        return Ten((B,), "bool", fill="values", values=[g.choice([True, False]) for _ in range(B)])
    if kind == "status":
        return Ten((B,), "int32", fill="full", value=0)
    if kind == "counters":
        return Ten((B, 4), "int64", fill="full", value=0)
    if kind == "index":
        return Ten((B,), "int64", fill="values", values=[g.randint(0, T) for _ in range(B)])
    if kind == "grid":
        if g.p(0.2) and B:
            return Ten((B, T), f64, fill="values", values=[d.direction * k / max(T - 1, 1) for k in range(T)] * B)
        return Ten((T,), f64, fill="grid", lo=0.0, hi=d.direction * 1.0 if T > 1 else 0.0)
    if kind == "eval_times":
        return Ten((d.R,), f64, fill="values", values=[g.uniform(0.0, 1.0) for _ in range(d.R)])
    if kind in ("rtol", "atol"):
        return Ten((d.nseg,), f64, fill="full", value=1e-3 if kind == "rtol" else 1e-6)
    if kind == "segments":
        return _segments(g, D, d.nseg)
    if kind in ("mid", "err", "nodes"):
        return list(d.tab[{"mid": "mid", "err": "e", "nodes": "c"}[kind]])
    if kind == "coeffs":
        return list(d.tab["b"][:g.randint(1, d.S)])
    if kind == "dtype":
        return Code(f"torch.{d.dtype}")
    raise KeyError(kind)


def _fallback_kind(type_str: str) -> Any:
    return {"Tensor": "state", "List[Tensor]": "stages", "List[float]": "coeffs", "List[int]": [1],
            "float": 1.0, "int": 1, "bool": True, "str": ""}.get(type_str.replace("Optional[", "").rstrip("]"), None)


def op_schemas() -> Dict[str, Any]:
    """Every op registered under the fastdiffeq namespace -> its default overload's schema."""
    names = sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fastdiffeq::"))
    return {n: getattr(torch.ops.fastdiffeq, n).default._schema for n in names}


def op_call(g: Gen, name: str, schema: Any) -> Call:
    d = _draw_dims(g)
    schema_str = str(schema)
    kinds, mutable, args, muts = {}, [], {}, []
    for a in schema.arguments:
        type_str = "ScalarType" if re.search(rf"ScalarType\??\s+{a.name}\b", schema_str) else str(a.type)
        kind = HINTS.get(a.name, "dtype" if type_str == "ScalarType" else None)
        if kind is None:
            kind = _fallback_kind(type_str)
            muts.append(f"unhinted argument {a.name}: {type_str}")
        kinds[a.name] = kind
        args[a.name] = _baseline(g, kind, d)
        if a.alias_info is not None and a.alias_info.is_write:
            mutable.append(a.name)
            if isinstance(args[a.name], Ten) and g.p(0.5):
                args[a.name] = replace(args[a.name], guard=True)
    call = Call(target=f"op:{name}", callee=f"OPS.{name}", args=args, mutable=mutable, muts=muts, level="op")

    n_mut = g.choice([0, 1, 1, 1, 2, 2, 3])
    names = list(args)
    # aliases last, so that no later mutation removes the tensor an alias points to
    for what in sorted((g.choice(["arg"] * 6 + ["alias"] * 3 + ["all_meta"]) for _ in range(n_mut)),
                       key=lambda w: w == "alias"):
        if what == "all_meta":
            for n in names:
                args[n] = _map_ten(args[n], lambda t: replace(t, device="meta"))
            muts.append("every tensor on meta")
        elif what == "alias":
            muts.append(_alias(g, args, mutable))
        else:
            n = g.choice(names)
            args[n], m = _mutate_arg(g, args[n], kinds[n], d)
            muts.append(f"{n}: {m}")
    call.must_raise = op_must_raise(call, kinds, d)
    call.meta_parity = not _devices(call) - {"cpu"}
    return call


def _map_ten(spec: Any, fn: Callable) -> Any:
    if isinstance(spec, Ten):
        return fn(spec)
    if isinstance(spec, list):
        return [_map_ten(s, fn) for s in spec]
    return spec


def _mutate_arg(g: Gen, spec: Any, kind: Any, d: Dims) -> Tuple[Any, str]:
    if isinstance(spec, Ten):
        return g.mutate_tensor(spec, kind if isinstance(kind, str) else "", d.T)
    if isinstance(spec, list) and spec and isinstance(spec[0], (Ten, Alias)) or kind == "stages":
        how = g.choice(["empty", "one", "many", "element", "element"])
        if how == "empty":
            return [], "[]"
        if how == "one":
            return spec[:1], "one stage"
        if how == "many":
            return spec + [Ten((d.B, d.D), d.dtype, seed=g.seed()) for _ in range(g.choice([2, 9]))], "extra stages"
        if not spec:
            return spec, "(empty list left as is)"
        j = g.randint(0, len(spec) - 1)
        if isinstance(spec[j], Ten):
            new, m = g.mutate_tensor(spec[j])
            return spec[:j] + [new] + spec[j + 1:], f"[{j}] {m}"
        return spec, "(alias left as is)"
    if kind == "segments":
        return g.mutate_segments(spec, d.D)
    if isinstance(spec, list):
        return g.mutate_floats(spec)
    if isinstance(spec, Code):  # ScalarType
        dt = g.choice(["int32", "bool", "float16", "complex64", "int64", "bfloat16"])
        return Code(f"torch.{dt}"), f"dtype torch.{dt}"
    if isinstance(spec, bool):
        return (not spec), f"{not spec}"
    if isinstance(spec, int):
        return g.mutate_int("int")
    if isinstance(spec, float):
        return g.mutate_float("float")
    return spec, "(unchanged)"


def _tensor_paths(args: Dict[str, Any]) -> List[Tuple[str, Any]]:
    return [(p, s) for n, v in args.items() for p, s in walk(v, n)]


def _alias(g: Gen, args: Dict[str, Any], mutable: List[str]) -> str:
    """Make one tensor argument share memory with another (preferably a mutable one)."""
    paths = _tensor_paths(args)
    sources = [(p, s) for p, s in paths if isinstance(s, Ten) and s.device == "cpu"]
    if len(paths) < 2 or not sources:
        return "alias (no candidates)"
    mut_sources = [(p, s) for p, s in sources if p in mutable]
    src_p, src = g.choice(mut_sources if mut_sources and g.p(0.8) else sources)
    used = {s.src for _, s in paths if isinstance(s, Alias)}  # no chains: an alias source stays a tensor
    targets = [(p, s) for p, s in paths if p != src_p and isinstance(s, Ten) and p not in used]
    if not targets:
        return "alias (no candidates)"
    dst_p, dst = g.choice(targets)
    n_src, n_dst = math.prod(src.shape), math.prod(dst.shape)
    if tuple(src.shape) == tuple(dst.shape) and (src.dtype == dst.dtype or g.p(0.3)) and src.layout == "contig":
        view = ""
    elif src.dtype == dst.dtype and src.layout == "contig" and n_src >= n_dst > 0:
        off = g.randint(0, n_src - n_dst)
        view = f".reshape(-1)[{off}:{off + n_dst}].view({lit(list(dst.shape))})"
    elif len(src.shape) > len(dst.shape) and tuple(src.shape[1:]) == tuple(dst.shape) and src.shape[0]:
        view = f"[{g.randint(0, src.shape[0] - 1)}]"
    else:
        view = ""
    _set_path(args, dst_p, Alias(src_p, view))
    return f"{dst_p} aliases {src_p}{view}"


def _set_path(args: Dict[str, Any], path: str, value: Any) -> None:
    for name in sorted(args, key=len, reverse=True):
        if path == name:
            args[name] = value
            return
        if path.startswith(name + "_") and isinstance(args[name], list):
            idx = int(path[len(name) + 1:])
            args[name] = list(args[name])
            args[name][idx] = value
            return
    raise KeyError(path)


def _devices(call: Call) -> set:
    devs = set()
    for _, s in _tensor_paths({**call.env, **call.args}):
        if isinstance(s, Ten):
            devs.add(s.device)
    return devs


def op_must_raise(call: Call, kinds: Dict[str, Any], d: Dims) -> List[str]:
    """Inputs the op's contract says must be rejected (issue 14): mixed devices, out-of-range indices
    for ops that write through them, mutable arguments sharing memory with each other or themselves."""
    reasons = []
    devs = _devices(call)
    if {"cpu", "meta"} <= devs:
        reasons.append("mixed cpu and meta tensors")
    if not call.mutable:
        return reasons
    paths = dict(_tensor_paths(call.args))
    for name, kind in kinds.items():
        spec = call.args[name]
        if kind == "index" and isinstance(spec, Ten) and spec.device == "cpu":
            vals = spec.numbers()
            if vals and any(v < 0 or v > d.T for v in vals):
                reasons.append(f"index out of range: {name} outside [0, {d.T}]")
    for p, s in paths.items():
        if isinstance(s, Alias) and p in call.mutable and s.src in call.mutable:
            reasons.append(f"two mutable arguments share memory: {p} and {s.src}")
        if isinstance(s, Ten) and p in call.mutable and s.layout == "expand" and s.shape and s.shape[0] > 1 \
                and math.prod(s.shape[1:]) > 0:
            reasons.append(f"a mutable argument overlaps itself (stride 0): {p}")
    return reasons


# ---------------------------------------------------------------------------------------------------
# The C++ entry points and the Python API: one argument builder each
# ---------------------------------------------------------------------------------------------------

FIELDS = ["decay"] * 4 + ["const", "grow", "identity", "square", "nan_late", "huge", "inf", "wrong_shape",
                          "wrong_dtype", "not_tensor", "meta_out", "noncontig", "raises"]
NORMS = ["N.max_abs", "N.zero", "N.nan", "N.negative", "N.huge", "N.elementwise", "N.string", "N.empty", "N.meta"]


def _grid(g: Gen, T: int, rows: int = 0) -> Ten:
    t0 = g.choice([0.0, 0.0, 1.0, -2.0])
    span = g.choice([1.0, 1.0, 0.5, 3.0]) * g.choice([1.0, 1.0, -1.0])
    vals = [t0 + span * k / max(T - 1, 1) for k in range(T)]
    return Ten((rows, T) if rows else (T,), "float64", fill="values", values=vals * (rows or 1))


def _is_monotone(vals: list, T: int) -> bool:
    for r in range(0, len(vals), max(T, 1)):
        row = vals[r:r + T]
        if not all(math.isfinite(v) for v in row):
            return False
        pairs = list(zip(row, row[1:]))
        if pairs and not (all(b > a for a, b in pairs) or all(b < a for a, b in pairs)):
            return False
    return True


def _control_must_raise(c: Dict[str, Any]) -> List[str]:
    bad = []
    # The core's range rules (core::check_controller): safety in (0, 1], 0 < dfactor < 1 < ifactor.
    ok = {"safety": lambda v: 0 < v <= 1, "ifactor": lambda v: v > 1, "dfactor": lambda v: 0 < v < 1,
          "min_step": lambda v: v >= 0, "max_step": lambda v: v > 0, "max_num_steps": lambda v: v > 0}
    for k, test in ok.items():
        v = c.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and (v != v or not test(v)):
            bad.append(f"{k}={lit(v)}")
    mn, mx = c.get("min_step"), c.get("max_step")
    if isinstance(mn, float) and isinstance(mx, float) and mn == mn and mx == mx and mn > mx:
        bad.append("min_step > max_step")
    return bad


def solve_call(g: Gen) -> Call:
    """_C.rk_solve(func, y0, t_out, options, *, norm, user_shape, joint, mode), through helpers.rk_solve (the
    options' fields flat: method, rtol, atol, segment_ends, safety, ifactor, dfactor, min_step, max_step,
    first_step, max_num_steps, step_t, jump_t, check_every)."""
    from fastdiffeq import _C

    B = g.choice([1, 1, 1, 2, 3])
    D = g.choice([1, 2, 3, 4, 6]) if not g.p(0.05) else 0
    T = g.choice([1, 2, 3, 5])
    joint = B == 1 and not g.p(0.2)
    user_shape = [B, D] if not joint else g.choice([[D], [1, D]] + ([[2, D // 2]] if D % 2 == 0 and D else [])
                                                 + ([[]] if D == 1 else []))
    nseg = g.randint(1, max(min(3, D), 1))
    method = g.choice(_adaptive_methods())
    seg = _segments(g, D, nseg)
    a = {
        "func": Code(f"F.{g.choice(FIELDS)}"),
        "y0": Ten((B, D), g.choice(["float64", "float32"]), seed=g.seed()),
        "t_out": _grid(g, T, rows=B if B > 1 and g.p(0.3) else 0),
        "method": method, "rtol": [1e-6] * nseg, "atol": [1e-8] * nseg, "segment_ends": seg,
        "safety": 0.9, "ifactor": 10.0, "dfactor": 0.2, "min_step": 0.0, "max_step": math.inf, "first_step": 0.0,
        "max_num_steps": g.choice([2**31 - 1, 1000]), "step_t": [], "jump_t": [], "norm": None,
        "user_shape": user_shape, "joint": joint, "check_every": 1,
        "mode": g.choice(["masked", "graph", "record"]) if B == 1 else "masked",
    }
    call = Call(target="rk_solve", callee="rk_solve", args=a, positional=3, level="C")
    for _ in range(g.choice([0, 1, 1, 1, 2, 2, 3])):
        name = g.choice(list(a))
        v = a[name]
        if name in ("y0", "t_out"):
            a[name], m = g.mutate_tensor(v, "grid" if name == "t_out" else "")
        elif name == "func":
            a[name] = Code(f"F.{g.choice(FIELDS)}")
            m = a[name].text
        elif name == "method":
            a[name] = g.choice(["rk4", "", "DOPRI5", "euler"])
            m = a[name]
        elif name in ("rtol", "atol"):
            a[name], m = g.mutate_floats(v)
        elif name == "segment_ends":
            a[name], m = g.mutate_segments(v, D)
        elif name in ("step_t", "jump_t"):
            a[name] = Rel(g.choice(REL_CHOICES))
            m = f"t_first + (t_last - t_first) * frac + offset for (frac, offset) in {a[name].points}"
        elif name == "norm":
            a[name] = Code(g.choice(NORMS))
            m = a[name].text
        elif name == "user_shape":
            a[name] = g.choice([[], [D + 1], [-1], [0], [2**62], [B * D, 0], [-B * D]])
            m = lit(a[name])
        elif name == "joint":
            a[name] = not v
            m = str(a[name])
        elif name == "mode":
            a[name] = g.choice(["graph", "record", "bogus"])
            m = a[name]
        elif name == "check_every":
            a[name] = g.choice([0, -1, 2**62, 65, 64])
            m = str(a[name])
        elif isinstance(v, float):
            a[name], m = g.mutate_float(name)
        else:
            a[name], m = g.mutate_int(name)
            if abs(a[name]) >= 2**63:
                a[name] = 2**63 - 1
        call.muts.append(f"{name}: {m}")

    a["step_t"], a["jump_t"] = resolve_times(a["step_t"], a["t_out"]), resolve_times(a["jump_t"], a["t_out"])
    # Contract: what must be rejected, whatever the loop does.
    y0, t_out = a["y0"], a["t_out"]
    must = []
    if {y0.device, t_out.device} != {"cpu"}:
        must.append("meta tensors")
    if y0.dtype not in ("float32", "float64") or len(y0.shape) != 2:
        must.append("y0 must be a float32/float64 [B, D] tensor")
    if t_out.dtype != "float64" or len(t_out.shape) not in (1, 2):
        must.append("t_out must be float64 [T] or [B, T]")
    tv = t_out.numbers()
    if t_out.device == "cpu" and tv is not None and t_out.shape and not _is_monotone(tv, t_out.shape[-1]):
        must.append("t_out not finite and strictly monotone")
    segs = a["segment_ends"] or ([y0.shape[1]] if len(y0.shape) == 2 else [])
    if len(a["rtol"]) != len(segs) or len(a["atol"]) != len(segs):
        must.append("one rtol/atol per segment")
    # rtol finite >= 0; atol >= 0 and may be +inf (that segment leaves the error control: the seminorm).
    if any(not (x >= 0) or math.isinf(x) for x in a["rtol"]) or any(not (x >= 0) for x in a["atol"]):
        must.append("tolerances >= 0 (rtol finite)")
    if segs and (any(b < x for x, b in zip(segs, segs[1:])) or segs[0] < 0
                 or len(y0.shape) == 2 and segs[-1] != y0.shape[1]):
        must.append("segment_ends non-decreasing and ending at D")
    must += _control_must_raise(a)
    ce = a["check_every"]
    if isinstance(ce, int) and not 1 <= ce <= 64:
        must.append("check_every in [1, 64] (solver::kMaxCheckEvery)")
    call.must_raise = must
    call.observe = "defined_part(RESULT)"  # outputs of failed samples are undefined (rk_solve.h)
    call.checks = [  # ys is [T, B, D] always (rk_solve.h), its values are defined for the samples that succeeded
        ("wrong-output-shape", "not bool((RESULT['status'] == SUCCESS).all()) or "
                               "tuple(RESULT['ys'].shape) == (t_out.shape[-1], *y0.shape)"),
        ("failed-solve-output-shape", "bool((RESULT['status'] == SUCCESS).all()) or "
                                      "tuple(RESULT['ys'].shape) == (t_out.shape[-1], *y0.shape)"),
        ("returned-while-running", "not bool((RESULT['status'] == RUNNING).any())"),
        ("success-with-nonfinite-or-short", "solved_ok(RESULT, y0, t_out)"),
    ]
    if a["func"].text == "F.identity":
        call.swap = ("F.identity", "F.grow")
    return call


def backward_call(g: Gen) -> Call:
    """_C.rk_checkpoint_backward(func, tape, grad_ys, params, user_shape, joint) after a recording solve."""
    from fastdiffeq import _C

    D = g.choice([1, 2, 3, 5])
    T = g.choice([1, 2, 3, 4])
    method = g.choice(_adaptive_methods())
    grid = _grid(g, T)
    tv = grid.numbers()
    kw = dict(method=method, rtol=[1e-6], atol=[1e-8], segment_ends=[D], safety=0.9, ifactor=10.0, dfactor=0.2,
              min_step=0.0, max_step=math.inf, first_step=0.0, max_num_steps=10000, step_t=[], jump_t=[],
              norm=None, user_shape=[D], joint=True, check_every=1)
    if T > 1 and g.p(0.3):
        kw[g.choice(["step_t", "jump_t"])] = [0.5 * (tv[0] + tv[1])]
    env = {"y0": Ten((1, D), "float64", seed=g.seed()), "t_out": grid}
    setup = [f"field = Lin({g.uniform(0.2, 2.0)})", f"kw = {lit(kw)}",
             "tape = rk_solve(field, y0, t_out, mode='record', **kw)['tape']"]
    a = {"func": Code("field"), "tape": Code("tape"), "grad_ys": Ten((T, 1, D), "float64", seed=g.seed()),
         "params": [Code("field.theta")], "user_shape": [D], "joint": True}
    call = Call(target="rk_checkpoint_backward", callee="_C.rk_checkpoint_backward", args=a, positional=6,
                env=env, setup=setup, level="C")
    valid = True
    for _ in range(g.choice([0, 0, 1, 1, 2])):
        valid = False
        name = g.choice(list(a))
        if name == "grad_ys":
            if g.p(0.5):
                shape = g.choice([(T + 2, 1, D), (max(T - 1, 0), 1, D), (T, D), (), (T, 1, D + 1), (T, 2, D), (0, 1, D)])
                a[name] = replace(a[name], shape=shape)
                m = f"shape {shape}"
            else:
                a[name], m = g.mutate_tensor(a[name])
        elif name == "params":
            a[name] = g.choice([[], [Code("field.theta.detach()")], [Code("field.theta")] * 2, [Code("y0")],
                                [Ten((), "int64", fill="full", value=1)], [Ten((2,), "float64", device="meta")]])
            m = lit(a[name]) if not isinstance(a[name][0] if a[name] else None, Ten) else "odd tensor"
        elif name == "func":
            a[name] = Code(g.choice(["F.decay", "F.wrong_shape", "F.raises", "F.identity", "Lin(0.5)"]))
            m = a[name].text
        elif name == "tape":
            a[name] = Code(g.choice(["None", "rk_solve(field, y0[:, :0], t_out, mode='record', "
                                             "**dict(kw, segment_ends=[0], user_shape=[0]))['tape']"]))
            m = a[name].text
        elif name == "user_shape":
            a[name] = g.choice([[D + 1], [], [-1], [2**62], [1, D]])
            m = lit(a[name])
        else:
            a[name] = not a[name]
            m = str(a[name])
        call.muts.append(f"{name}: {m}")
    gy = a["grad_ys"]
    if gy.device != "cpu":
        call.must_raise.append("meta grad_ys")
    if tuple(gy.shape) not in ((T, 1, D),):
        call.must_raise.append(f"grad_ys shape: must be [{T}, 1, {D}], got {list(gy.shape)}")
    call.checks = [
        ("wrong-gradient-shape", f"tuple(RESULT[0].shape) == (1, {D})"),
        ("wrong-gradient-shape", "len(RESULT[1]) == len(params) and all(r.shape == p.shape for r, p in "
                                 "zip(RESULT[1], params))" if a["params"] else "len(RESULT[1]) == 0"),
    ]
    if valid:
        call.checks.append(("checkpoint-gradient-differs-from-direct",
                            "close(RESULT[0], grad_direct(field, y0, t_out, grad_ys, **kw), 1e-6, 1e-9)"))
    return call


def adjoint_call(g: Gen) -> Call:
    """_C.rk_adjoint(func, params, t_out, ys, tape, grad_ys, options, *, seminorm, trajectory, norm, user_shape,
    joint) after a forward solve (recording the dense trajectory), through helpers.rk_adjoint."""
    from fastdiffeq import _C

    D = g.choice([1, 2, 3, 5])
    T = g.choice([1, 2, 3, 4])
    method = g.choice(_adaptive_methods())
    trajectory = g.choice(["resolve", "interpolated"])
    grid = _grid(g, T)
    kw = dict(method=method, rtol=[1e-6], atol=[1e-8], segment_ends=[D], max_num_steps=10000)
    env = {"y0": Ten((1, D), "float64", seed=g.seed()), "t_out": grid}
    setup = [f"field = Lin({g.uniform(0.2, 2.0)})", f"kw = {lit(kw)}",
             "fwd = rk_solve(field, y0, t_out, mode='record', record_dense=True, user_shape=[" + str(D) + "], "
             "**kw)"]
    a: Dict[str, Any] = {
        "func": Code("field"), "params": [Code("field.theta")], "t_out": Code("t_out"),
        "ys": Code("fwd['ys']") if trajectory == "resolve" else None,
        "tape": Code("fwd['tape']") if trajectory == "interpolated" else None,
        "grad_ys": Ten((T, 1, D), "float64", seed=g.seed()),
        "seminorm": g.p(0.5), "trajectory": trajectory, "norm": None, "user_shape": [D], "joint": True, **kw,
    }
    call = Call(target="rk_adjoint", callee="rk_adjoint", args=a, positional=6, env=env, setup=setup, level="C")
    valid = True
    for _ in range(g.choice([0, 0, 1, 1, 2])):
        valid = False
        name = g.choice(["grad_ys", "params", "func", "ys", "tape", "trajectory", "rtol", "segment_ends",
                         "user_shape", "norm", "seminorm"])
        if name == "grad_ys":
            if g.p(0.5):
                shape = g.choice([(T + 2, 1, D), (max(T - 1, 0), 1, D), (T, D), (), (T, 1, D + 1), (T, 2, D)])
                a[name] = replace(a[name], shape=shape)
                m = f"shape {shape}"
            else:
                a[name], m = g.mutate_tensor(a[name])
        elif name == "params":
            a[name] = g.choice([[], [Code("field.theta.detach()")], [Code("field.theta")] * 2, [Code("y0")],
                                [Ten((2,), "float64", device="meta")]])
            m = "params variant"
        elif name == "func":
            a[name] = Code(g.choice(["F.decay", "F.wrong_shape", "F.raises", "F.nan_late", "Lin(0.5)"]))
            m = a[name].text
        elif name in ("ys", "tape"):
            a[name] = Code(g.choice(["None", "fwd['ys'][:1]", "fwd['ys'].float()", "fwd['tape']"]))
            m = a[name].text
        elif name == "trajectory":
            a[name] = g.choice(["bogus", "interpolated", "resolve"])
            m = a[name]
        elif name == "rtol":
            a[name] = g.choice([[1e-6, 1e-6], [], [-1.0], [math.nan]])
            m = lit(a[name])
        elif name == "segment_ends":
            a[name] = g.choice([[D + 1], [0, D], [-1], []])
            m = lit(a[name])
        elif name == "user_shape":
            a[name] = g.choice([[D + 1], [], [-1], [1, D]])
            m = lit(a[name])
        elif name == "norm":
            a[name] = Code(g.choice(NORMS))
            m = a[name].text
        else:
            a[name] = not a[name]
            m = str(a[name])
        call.muts.append(f"{name}: {m}")
    gy = a["grad_ys"]
    if gy.device != "cpu":
        call.must_raise.append("meta grad_ys")
    if tuple(gy.shape) != (T, 1, D):
        call.must_raise.append(f"grad_ys shape: must be [{T}, 1, {D}], got {list(gy.shape)}")
    if a["trajectory"] not in ("resolve", "interpolated"):
        call.must_raise.append("trajectory must be 'resolve' or 'interpolated'")
    if isinstance(a["rtol"], list) and len(a["rtol"]) != 1:
        call.must_raise.append("one adjoint rtol")
    n_params = len(a["params"])
    # Gradients come back only from a backward solve that succeeded (else the status says why).
    call.checks = [("wrong-gradient-shape", f"RESULT['status'] != SUCCESS or (tuple(RESULT['grad_y0'].shape) == "
                                            f"(1, {D}) and len(RESULT['grad_params']) == {n_params})")]
    if valid:
        # The adjoint is the continuous problem's gradient, accurate to the tolerances (rtol 1e-6, atol 1e-8).
        call.checks.append(("adjoint-gradient-differs-from-exact",
                            "RESULT['status'] == SUCCESS and all(close(a.reshape(b.shape), b, 1e-4, 1e-5) for a, b "
                            "in zip((RESULT['grad_y0'], RESULT['grad_params'][0]), "
                            "lin_exact_grads(field, y0, t_out, grad_ys)))"))
    return call


def finite_call(g: Gen) -> Call:
    """_C.all_finite(x): whether every element is finite (the solvers' check of y0 and f(t0, y0))."""
    shape = g.choice([(3,), (2, 4), (), (0,), (1, 257)])
    x = Ten(shape, g.choice(["float64", "float32"]), seed=g.seed())
    if g.p(0.5):
        x, m = g.mutate_tensor(x)
    elif g.p(0.4):
        x, m = replace(x, device="meta"), "meta"
    else:
        m = "none"
    call = Call(target="all_finite", callee="_C.all_finite", args={"x": x}, positional=1, level="C", muts=[m])
    if x.device != "cpu":
        call.must_raise.append("meta tensor")
    call.checks = [("wrong-answer", "RESULT == bool(torch.isfinite(x).all())")]
    return call


API_OPTION_VALUES: Dict[str, list] = {
    "first_step": [0.01, 1e-300, 1e300, 0.0, -0.1, math.nan],
    "min_step": [0.0, 1e-3, 1e300, -1.0, math.nan],
    "max_step": [0.1, 1e-300, 0.0, math.inf, 1e300, math.nan],
    "safety": [0.9, 2.0, 1.0, 0.0, math.nan, 1e300],
    "ifactor": [10.0, 1.0, 0.5, 1e300, math.inf],
    "dfactor": [0.2, 1.0, 1e-300, 0.0, 1.5],
    "max_num_steps": [1000, 1, 0, -1, 2**31, 2**63, 2**64, 2.5, True, "10"],
    "dtype": [Code("torch.float64"), Code("torch.float32"), "float64"],
    "norm": [Code(n) for n in NORMS],
    "bogus_option": [1.0],
}


def api_call(g: Gen, fn: str) -> Call:
    """fastdiffeq.odeint / odeint_adjoint through helpers.api_call (optionally with a backward pass)."""
    adjoint = fn == "odeint_adjoint"
    dtype = g.choice(["float64", "float32"])
    n_parts = g.choice([0, 0, 0, 1, 2])  # 0: a tensor y0, else a tuple
    shapes = [g.choice([(2,), (3,), (), (2, 2), (1, 3), (0, 2)]) for _ in range(max(n_parts, 1))]
    backward = g.p(0.4)
    parts = [Ten(s, dtype, seed=g.seed(), requires_grad=backward) for s in shapes]
    T = g.choice([1, 2, 3, 5])
    func = g.choice(FIELDS) if not adjoint or g.p(0.5) else "lin"
    a: Dict[str, Any] = {
        "fn": Code(f"fde.{fn}"),
        "func": Code(f"F.{func}" if func != "lin" else f"Lin(0.5, torch.{dtype})"),
        "y0": parts[0] if n_parts == 0 else tuple(parts),
        "t": _grid(g, T),
        "backward": backward,
        "rtol": g.choice([1e-6, 1e-7, 1e-3]), "atol": g.choice([1e-8, 1e-9]),
    }
    if g.p(0.3):
        a["method"] = g.choice(["dopri5", "tsit5", "bosh3"])
    if adjoint and func != "lin":
        a["adjoint_params"] = ()
    if not adjoint and g.p(0.3):
        a["gradient"] = "checkpoint"
        a["gradient_params"] = ()
    options: Dict[str, Any] = {}
    for _ in range(g.choice([0, 0, 1, 1, 2, 3])):
        name = g.choice(["y0", "t", "t", "rtol", "atol", "method", "options", "options", "options", "func",
                         "gradient", "adjoint", "event_fn", "far_grid_point"])
        if name == "y0":
            if n_parts and g.p(0.5):
                j = g.randint(0, n_parts - 1)
                new, m = g.mutate_tensor(parts[j])
                parts[j] = new
                a["y0"] = tuple(parts) if g.p(0.8) else list(parts)
                m = f"y0[{j}] {m}"
            elif n_parts == 0:
                a["y0"], m = g.mutate_tensor(a["y0"])
            else:
                a["y0"], m = (), "empty tuple"
        elif name == "t":
            if g.p(0.7):
                a["t"], m = g.mutate_tensor(a["t"], "grid")
            else:
                a["t"] = replace(a["t"], requires_grad=True)
                m = "t requires grad"
        elif name in ("rtol", "atol"):
            a[name] = g.choice([Code("10**400"), -1.0, math.nan, 0.0, 1e300, 1e-300, [1e-6] * (n_parts + 1), "1e-3", True,
                                Ten((2,), "float64", fill="full", value=1e-6)])
            m = lit(a[name]) if not isinstance(a[name], Ten) else "a [2] tensor"
        elif name == "method":
            a["method"] = g.choice(["rk4", "DOPRI5", 5, "euler", None])
            m = lit(a["method"])
        elif name == "options":
            k = g.choice(list(API_OPTION_VALUES) + ["step_t", "jump_t"] * 2)
            if k in ("step_t", "jump_t"):
                v = Rel(g.choice(REL_CHOICES))
                if g.p(0.2):  # as a tensor
                    v = Ten((len(v.points),), "float64", fill="values", values=[v])
            else:
                v = g.choice(API_OPTION_VALUES[k])
            options[k] = v
            m = f"options[{k!r}] = {lit(v) if not isinstance(v, (Ten, Rel)) else 'times relative to t'}"
        elif name == "func":
            a["func"] = Code(f"F.{g.choice(FIELDS)}")
            m = a["func"].text
        elif name == "gradient" and not adjoint:
            a["gradient"] = g.choice(["direct", "checkpoint", "adjoint", "bogus"])
            m = a["gradient"]
        elif name == "adjoint" and adjoint:
            k, v = g.choice([("adjoint_rtol", -1.0), ("adjoint_rtol", [1e-6]), ("adjoint_atol", math.nan),
                             ("adjoint_method", "rk4"), ("adjoint_options", {"norm": "seminorm"}),
                             ("adjoint_options", {"safety": 2.0}), ("adjoint_options", {"max_step": 1e-300}),
                             ("adjoint_params", [Code("torch.zeros(2)")]), ("adjoint_params", [1.0])])
            a[k] = v
            m = f"{k}={lit(v)}"
        elif name == "far_grid_point":  # t far from 0 with a step_t/jump_t point inside: t + h == t
            lo = g.choice([1e18, -1e18, 1e16])
            a["t"] = Ten((2,), "float64", fill="values", values=[lo, lo + 1e4])
            k = g.choice(["step_t", "jump_t"])
            options[k] = Rel([(0.5, 0.0)])
            m = f"t = [{lo:g}, {lo:g} + 1e4], options[{k!r}] at the midpoint"
        elif name == "event_fn":
            a["event_fn"] = Code("lambda t, y: 0.0")
            m = "event_fn"
        else:
            continue
        call_m = f"{name}: {m}"
        a.setdefault("_muts", []).append(call_m)
    muts = a.pop("_muts", [])
    if options or g.p(0.2):
        a["options"] = resolve_times(options, a["t"])
    call = Call(target=fn, callee="api_call", args=a, positional=4, level="api", muts=muts)

    must = []
    ys = list(a["y0"]) if isinstance(a["y0"], (tuple, list)) else [a["y0"]]
    ten = [s for s in ys + [a["t"]] if isinstance(s, Ten)]
    if any(s.device == "meta" for s in ten):
        must.append("meta tensors")
    for s in ys:
        if isinstance(s, Ten) and s.dtype in ("float32", "float64") and math.prod(s.shape) and s.specials and any(
                not math.isfinite(v) for _, v in s.specials):
            must.append("y0 not finite")
    t = a["t"]
    if t.device == "cpu" and t.dtype.startswith("float") and len(t.shape) == 1 and t.numbers() is not None \
            and not _is_monotone(t.numbers(), t.shape[0]):
        must.append("t not finite and strictly monotone")
    for k in ("rtol", "atol"):
        v = a[k]
        if isinstance(v, float) and (v != v or v < 0 or math.isinf(v)):
            must.append(f"{k}={lit(v)}")
    must += [f"options: {m}" for m in _control_must_raise(
        {k: v for k, v in options.items() if k != "max_num_steps" or isinstance(v, int)})]
    if "bogus_option" in options:
        must.append("unknown option")
    call.must_raise = must
    out = "RESULT['ys']"
    call.checks = [
        ("wrong-output-shape", f"odeint_shape_ok({out}, y0, t)"),
        ("returned-nonfinite", f"all_finite({out}) or not all_finite(y0, t)"),
    ]
    if a["func"].text == "F.identity":
        call.swap = ("F.identity", "F.grow")
    return call


# ---------------------------------------------------------------------------------------------------
# Per-sample entry points (solve_ivp's loops), solve_ivp and odeint_event
# ---------------------------------------------------------------------------------------------------

# Library bugs the generators know how to reach (found by the long campaign, not fixed yet). The mutations
# that reach them are drawn only with FDE_FUZZ_KNOWN_BUGS=1 (python -m tests.fuzz --known-bugs), so that the CI
# campaign stays green until they are fixed; then drop the entry (the mutations are drawn again by default).
KNOWN_BUGS: Dict[str, str] = {
}
WITH_KNOWN_BUGS = os.environ.get("FDE_FUZZ_KNOWN_BUGS", "") not in ("", "0")


def _known(bug: str) -> bool:
    """Whether the mutations reaching the known library bug `bug` may be drawn."""
    assert bug in KNOWN_BUGS, bug
    return WITH_KNOWN_BUGS




def _events_bad(target: str, backward: bool = False) -> List[str]:
    out = []
    for e in EVENTS_BAD:
        out.append(e)
    return out

# Event functions (helpers.E): valid ones per sample / per call, and the wrong ones.
EVENTS_BAD = ["E.number", "E.string", "E.none", "E.extra", "E.empty", "E.column", "E.nan", "E.inf", "E.meta",
              "E.boolean", "E.integer", "E.complex", "E.float32", "E.vector", "E.raises", "E.never", "E.at_start",
              "E.sin", "3", "'event'"]
# Fields whose rows depend on their own sample only (F.nan_late looks at every sample's t).
ROWWISE = {"F.decay", "F.const", "F.grow", "F.identity", "F.square", "F.huge", "F.inf", "F.noncontig"}
PROGRESS = ["lambda fraction, t: None", "lambda fraction, t: 1 / 0", "3", "'bar'", "print"]
CTRL_DEFAULTS = dict(safety=0.9, ifactor=10.0, dfactor=0.2, min_step=0.0, max_step=math.inf)


def _rows_grid(g: Gen, B: int, T: int, per_row: bool, mixed: bool = False) -> Tuple[Ten, float]:
    """Output times [T] (shared) or [B, T] (each row its own start and span; mixed: rows may run backwards),
    and a time inside row 0's span (for events)."""
    t0 = g.choice([0.0, 0.0, 1.0, -2.0])
    span = g.choice([1.0, 1.0, 0.5, 3.0]) * g.choice([1.0, 1.0, -1.0])
    if not per_row:
        return Ten((T,), "float64", fill="values", values=[t0 + span * k / max(T - 1, 1) for k in range(T)]), \
            t0 + 0.5 * span
    vals: list = []
    for b in range(B):
        off = g.uniform(-0.5, 0.5) if b else 0.0
        sc = g.choice([1.0, 0.5, 2.0]) * (g.choice([1.0, -1.0]) if mixed and b else 1.0)
        vals += [t0 + off + sc * span * k / max(T - 1, 1) for k in range(T)]
    return Ten((B, T), "float64", fill="values", values=vals), t0 + 0.5 * span


def _user_shape_must_raise(us: Any, numel: int) -> List[str]:
    if not isinstance(us, list) or any(not isinstance(n, int) for n in us):
        return []
    if any(n < 0 for n in us) or math.prod(us) != numel:
        return [f"user_shape {us} does not hold {numel} elements"]
    return []


def _progress_must_raise(a: Dict[str, Any]) -> List[str]:
    p, iv = a.get("progress"), a.get("progress_interval", 0.1)
    if p is None:
        return []
    if isinstance(p, Code) and p.text in ("3", "'bar'"):
        return ["progress is not callable"]
    if isinstance(iv, float) and not iv >= 0:
        return [f"progress_interval={lit(iv)}"]
    return []


def _mutate_progress(g: Gen, a: Dict[str, Any]) -> str:
    if g.p(0.6):
        a["progress"] = Code(g.choice(PROGRESS))
        if g.p(0.5):
            a["progress_interval"] = g.choice([0.0, -1.0, math.nan, math.inf, 1e-300])
        return f"progress={a['progress'].text}, interval {lit(a.get('progress_interval', 0.1))}"
    a["progress_interval"] = g.choice([0.0, -1.0, math.nan])
    return f"progress_interval={lit(a['progress_interval'])} (no progress)"


def _solve_settings_must_raise(a: Dict[str, Any], D: Optional[int]) -> List[str]:
    """The options rules check_solve_args enforces (tolerances per segment, segments, controller, first_step,
    max_num_steps, check_every), for a state of D columns (None: unknown)."""
    must = []
    segs = a["segment_ends"] or ([D] if D is not None else [])
    if len(a["rtol"]) != len(segs) or len(a["atol"]) != len(segs):
        must.append("one rtol/atol per segment")
    if any(not (x >= 0) or math.isinf(x) for x in a["rtol"]) or any(not (x >= 0) for x in a["atol"]):
        must.append("tolerances >= 0 (rtol finite)")
    if segs and (any(b < x for x, b in zip(segs, segs[1:])) or segs[0] < 0 or D is not None and segs[-1] != D):
        must.append("segment_ends non-decreasing and ending at D")
    must += _control_must_raise(a)
    fs = a["first_step"]
    if isinstance(fs, float) and not (math.isfinite(fs) and fs >= 0):
        must.append(f"first_step={lit(fs)}")
    ce = a["check_every"]
    if isinstance(ce, int) and not 1 <= ce <= 64:
        must.append("check_every in [1, 64]")
    if a["step_t"] or a["jump_t"]:
        must.append("step_t/jump_t in a per-sample solve")
    return must


def _mutate_setting(g: Gen, a: Dict[str, Any], name: str, D: int) -> str:
    """One of the flat RkOptions fields (method, tolerances, segments, controller, loop settings)."""
    v = a[name]
    if name == "method":
        a[name] = g.choice(["rk4", "", "DOPRI5", "euler"])
        return a[name]
    if name in ("rtol", "atol"):
        a[name], m = g.mutate_floats(v)
        return m
    if name == "segment_ends":
        a[name], m = g.mutate_segments(v, D)
        return m
    if name in ("step_t", "jump_t"):
        a[name] = Rel(g.choice(REL_CHOICES))
        return f"times {a[name].points}"
    if name == "check_every":
        a[name] = g.choice([0, -1, 2**62, 65, 64])
        return str(a[name])
    if isinstance(v, float):
        a[name], m = g.mutate_float(name)
        return m
    a[name], m = g.mutate_int(name)
    if abs(a[name]) >= 2**63:
        a[name] = 2**63 - 1
    return m


SETTINGS = ["method", "rtol", "atol", "segment_ends", "safety", "ifactor", "dfactor", "min_step", "max_step",
            "first_step", "max_num_steps", "step_t", "jump_t", "check_every"]


def _base_settings(g: Gen, D: int, rtol: float = 1e-6, atol: float = 1e-8) -> Dict[str, Any]:
    from fastdiffeq import _C

    return dict(method=g.choice(_adaptive_methods()), rtol=[rtol], atol=[atol], segment_ends=[D], **CTRL_DEFAULTS,
                first_step=0.0, max_num_steps=g.choice([100000, 10000]), step_t=[], jump_t=[], check_every=1)


def solve_per_sample_call(g: Gen) -> Call:
    """_C.rk_solve_per_sample(func, y0, t_out, options, *, norm, user_shape, mode, event_fn, joint, progress,
    progress_interval), through helpers.rk_solve_per_sample (the options' fields flat)."""
    B = g.choice([1, 1, 2, 3, 4])
    D = g.choice([1, 2, 3, 5]) if not g.p(0.05) else 0
    T = g.choice([1, 2, 3, 5])
    joint = B == 1 and g.p(0.25)
    t_out, t_mid = _rows_grid(g, B, T, per_row=B > 1 and g.p(0.4))
    mode = g.choice(["graph", "record"])
    event = None
    if mode == "graph" and g.p(0.4):
        event = Code(g.choice([f"E.time({lit(t_mid)})", "E.level(0.5)", "E.level(0.0)", "E.sin"]))
    nseg = g.randint(1, max(min(3, D), 1))
    settings = _base_settings(g, D)
    settings.update(rtol=[1e-6] * nseg, atol=[1e-8] * nseg, segment_ends=_segments(g, D, nseg))
    if mode == "record" and g.p(0.3):
        settings["record_dense"] = True  # the tape keeps every accepted step's dense output
    a: Dict[str, Any] = {
        "func": Code(f"F.{g.choice(FIELDS)}"),
        "y0": Ten((B, D), g.choice(["float64", "float32"]), seed=g.seed(), requires_grad=mode == "graph" and g.p(0.3)),
        "t_out": t_out,
        **settings,
        "norm": None,
        "user_shape": ([B, D] if not joint else g.choice([[D], [1, D]])) if not g.p(0.1) else [B * D],
        "mode": mode,
        "event_fn": event,
        "joint": joint,
    }
    call = Call(target="rk_solve_per_sample", callee="rk_solve_per_sample", args=a, positional=3, level="C")
    names = ["y0", "y0", "t_out", "t_out", "func", "func", "norm", "user_shape", "joint", "mode", "event_fn",
             "event_fn", "event_fn", "progress", "y0_grad", "setting", "setting", "setting"]
    for _ in range(g.choice([0, 1, 1, 1, 2, 2, 3])):
        name = g.choice(names)
        if name == "setting":
            name = g.choice(SETTINGS)
        if name == "y0":
            a[name], m = g.mutate_tensor(a[name])
        elif name == "y0_grad":
            a["y0"] = replace(a["y0"], requires_grad=not a["y0"].requires_grad)
            m = f"requires_grad={a['y0'].requires_grad}"
        elif name == "t_out":
            how = g.choice(["mutate", "mutate", "rows", "rows"])
            if how == "mutate" or B == 1:
                a[name], m = g.mutate_tensor(a[name], "grid")
            else:
                rows = g.choice([B + 1, B - 1, 1])
                a[name] = _rows_grid(g, rows, T, per_row=True, mixed=g.p(0.5))[0]
                m = f"t_out with {rows} rows"
        elif name == "func":
            a[name] = Code(f"F.{g.choice(FIELDS)}")
            m = a[name].text
        elif name == "norm":
            a[name] = Code(g.choice(NORMS + ["lambda x: x.reshape(x.shape[0], -1).abs().amax(1)"]))
            m = a[name].text
        elif name == "user_shape":
            a[name] = g.choice([[], [B, D + 1], [-1], [0], [2**62], [B * D, 0], [-B * D], [D, B], [1, B * D]])
            m = lit(a[name])
        elif name == "joint":
            a[name] = not a[name]
            m = str(a[name])
        elif name == "mode":
            a[name] = g.choice(["graph", "record", "masked", "bogus", "", "Graph"])
            m = a[name]
        elif name == "event_fn":
            a[name] = Code(g.choice(_events_bad(call.target) + [f"E.time({lit(t_mid)})", "E.level(0.5)"]))
            m = a[name].text
            if a["mode"] == "record" and g.p(0.8):
                a["mode"] = "graph"
                m += " (graph mode)"
        elif name == "progress":
            m = _mutate_progress(g, a)
        else:
            m = _mutate_setting(g, a, name, D)
        call.muts.append(f"{name}: {m}")
    a["step_t"], a["jump_t"] = resolve_times(a["step_t"], a["t_out"]), resolve_times(a["jump_t"], a["t_out"])
    if a["event_fn"] is None:
        del a["event_fn"]

    y0, t_out = a["y0"], a["t_out"]
    must = []
    if {y0.device, t_out.device} != {"cpu"}:
        must.append("meta tensors")
    y0_ok = y0.dtype in ("float32", "float64") and len(y0.shape) == 2
    if not y0_ok:
        must.append("y0 must be a float32/float64 [B, D] tensor")
    if t_out.dtype != "float64" or len(t_out.shape) not in (1, 2) or not t_out.shape or t_out.shape[-1] < 1 or (
            len(t_out.shape) == 2 and len(y0.shape) == 2 and t_out.shape[0] != y0.shape[0]):
        must.append("t_out must be float64 [T] or [B, T] with T >= 1")
    tv = t_out.numbers()
    if t_out.device == "cpu" and tv is not None and t_out.shape and not _is_monotone(tv, t_out.shape[-1]):
        must.append("t_out not finite and strictly monotone")
    must += _solve_settings_must_raise(a, y0.shape[1] if len(y0.shape) == 2 else None)
    mode = a["mode"]
    if mode not in ("graph", "record"):
        must.append(f"mode {mode!r}")
    ev = a.get("event_fn")
    if ev is not None and ev.text in ("3", "'event'"):
        must.append("event_fn not callable")
    if ev is not None and mode == "record":
        must.append("event_fn in record mode")
    if len(y0.shape) == 2:
        must += _user_shape_must_raise(a["user_shape"], math.prod(y0.shape))
        if a["joint"] and y0.shape[0] != 1:
            must.append("joint mode needs B == 1")
    must += _progress_must_raise(a)
    if a["func"].text in BAD_OUTPUT:
        must.append(f"{a['func'].text} returns no tensor of y's shape, dtype and device")
    call.must_raise = must

    has_event = ev is not None
    call.checks = [
        ("wrong-output-shape", f"ps_shapes_ok(RESULT, y0, t_out, event={has_event}, record={mode == 'record'})"),
        ("returned-while-running", "not bool((RESULT['status'] == RUNNING).any())"),
        ("success-with-nonfinite-or-short", "ps_solved_ok(RESULT, y0, t_out)"),
        ("event-result-inconsistent", "ps_events_ok(RESULT, y0, t_out)"),
        ("nonfinite-gradient", "ps_grad_finite(RESULT, y0)"),
    ]
    if (not must and a["norm"] is None and a["func"].text in ROWWISE and B > 1 and a["user_shape"] == [B, D]
            and "progress" not in a):
        kw = {k: a[k] for k in SETTINGS}
        kw["mode"] = mode
        ev_txt = ev.text if ev is not None else "None"
        call.checks.append(("batch-differs-from-alone",
                            f"ps_alone_ok(RESULT, {a['func'].text}, y0, t_out, event_fn={ev_txt}, **{lit(kw)})"))
    if not must and a["norm"] is None and ev is None and "progress" not in a:
        kw = {k: a[k] for k in SETTINGS}
        call.checks.append(("loops-disagree", f"ps_loops_agree(RESULT, {a['func'].text}, y0, t_out, {mode!r}, "
                                              f"{a['joint']}, {lit(a['user_shape'])}, **{lit(kw)})"))
    if a["func"].text == "F.identity":
        call.swap = ("F.identity", "F.grow")
    return call


def checkpoint_per_sample_call(g: Gen) -> Call:
    """_C.rk_checkpoint_backward_per_sample(func, tape, grad_ys, params, user_shape) after a per-sample solve in
    record mode."""
    B = g.choice([1, 2, 3, 4])
    D = g.choice([1, 2, 3, 5])
    T = g.choice([1, 2, 3, 4])
    t_out, _ = _rows_grid(g, B, T, per_row=B > 1 and g.p(0.4))
    kw = _base_settings(g, D)
    kw["max_num_steps"] = 10000
    dtype = g.choice(["float64", "float64", "float32"])
    env = {"y0": Ten((B, D), dtype, seed=g.seed()), "t_out": t_out}
    setup = [f"field = Lin({g.uniform(0.2, 2.0)}, torch.{dtype})", f"kw = {lit(kw)}",
             f"fwd = rk_solve_per_sample(field, y0, t_out, mode='record', user_shape={[B, D]}, **kw)",
             "tape = fwd['tape']"]
    a: Dict[str, Any] = {"func": Code("field"), "tape": Code("tape"), "grad_ys": Ten((T, B, D), dtype, seed=g.seed()),
                         "params": [Code("field.theta")], "user_shape": [B, D]}
    call = Call(target="rk_checkpoint_backward_per_sample", callee="_C.rk_checkpoint_backward_per_sample", args=a,
                positional=5, env=env, setup=setup, level="C")
    valid = True
    for _ in range(g.choice([0, 0, 1, 1, 2])):
        valid = False
        name = g.choice(["grad_ys", "grad_ys", "params", "func", "tape", "tape", "user_shape"])
        if name == "grad_ys":
            if g.p(0.5):
                shape = g.choice([(T + 1, B, D), (max(T - 1, 0), B, D), (T, B + 1, D), (T, B, D + 1), (T, B * D),
                                  (), (0, B, D), (T, 1, D)])
                a[name] = replace(a[name], shape=shape)
                m = f"shape {shape}"
            else:
                a[name], m = g.mutate_tensor(a[name])
        elif name == "params":
            a[name] = g.choice([[], [Code("field.theta.detach()")], [Code("field.theta")] * 2, [Code("y0")],
                                [Ten((), "int64", fill="full", value=1)], [Ten((2,), "float64", device="meta")],
                                [Code("torch.zeros(2, dtype=torch.float64, requires_grad=True)")],
                                [Code("torch.ones((), dtype=torch.float32, requires_grad=True)")]]
                               + [[Code("1.0")]])
            m = lit(a[name]) if not any(isinstance(x, Ten) for x in a[name]) else "odd tensor"
        elif name == "func":
            a[name] = Code(g.choice(["F.decay", "F.wrong_shape", "F.raises", "F.identity", "F.nan_late",
                                     "F.wrong_dtype", "F.not_tensor", "Lin(0.5)"]))
            m = a[name].text
        elif name == "tape":
            tape = g.choice([
                "None", "fwd", "3",
                # a joint-mode RkTape
                "rk_solve(field, y0[:1], t_out if t_out.dim() == 1 else t_out[:1], mode='record', user_shape=[1, "
                f"{D}], joint=False, **kw)['tape']",
                # per-sample tapes of other problems: fewer samples, other D, other T, float32, no steps
                "rk_solve_per_sample(field, y0[:1], t_out if t_out.dim() == 1 else t_out[:1], mode='record', "
                f"user_shape=[1, {D}], **kw)['tape']",
                f"rk_solve_per_sample(field, y0[:, :1], t_out, mode='record', user_shape=[{B}, 1], "
                "**dict(kw, segment_ends=[1]))['tape']",
                f"rk_solve_per_sample(field, y0, t_out[..., :1], mode='record', user_shape=[{B}, {D}], **kw)['tape']",
                f"rk_solve_per_sample(field, y0.double() if y0.dtype == torch.float32 else y0.float(), t_out, "
                f"mode='record', user_shape=[{B}, {D}], **kw)['tape']",
                f"rk_solve_per_sample(F.nan_late, y0, t_out, mode='record', user_shape=[{B}, {D}], **kw)['tape']",
                f"rk_solve_per_sample(field, y0, t_out, mode='graph', user_shape=[{B}, {D}], **kw).get('tape')",
            ])
            a[name] = Code(tape)
            m = tape
        else:
            a[name] = g.choice([[B, D + 1], [], [-1], [2**62], [B * D], [1, B * D], [D, B], [B, D, 1]])
            m = lit(a[name])
        call.muts.append(f"{name}: {m}")
    gy = a["grad_ys"]
    must = []
    if gy.device != "cpu":
        must.append("meta grad_ys")
    tape = a["tape"].text
    if tape in ("None", "fwd", "3") or "rk_solve(" in tape or ".get('tape')" in tape:
        must.append("not a SampleTape")
    tB, tD, tT, tdt = B, D, T, dtype
    if "y0[:1]" in tape:
        tB = 1
    if "y0[:, :1]" in tape:
        tD = 1
    if "t_out[..., :1]" in tape:
        tT = 1
    if "y0.double()" in tape:
        tdt = "float64" if dtype == "float32" else "float32"
    if tuple(gy.shape) != (tT, tB, tD):
        must.append(f"grad_ys shape: must be [{tT}, {tB}, {tD}], got {list(gy.shape)}")
    elif gy.dtype != tdt:
        must.append(f"grad_ys dtype must be the tape's ({tdt})")
    must += _user_shape_must_raise(a["user_shape"], tB * tD)
    for p in a["params"]:
        if isinstance(p, Ten) or (isinstance(p, Code) and p.text in ("field.theta.detach()", "y0", "1.0")):
            must.append(f"params: {p.text if isinstance(p, Code) else 'odd tensor'}")
    call.must_raise = must
    n_params = len(a["params"])
    call.checks = [
        ("wrong-gradient-shape", f"tuple(RESULT[0].shape) == ({tB}, {tD}) and len(RESULT[1]) == {n_params} and "
                                 + ("all(r.shape == p.shape for r, p in zip(RESULT[1], params))"
                                    if n_params else "True")),
    ]
    if valid:
        call.checks.append(("checkpoint-gradient-differs-from-direct",
                            f"all(close(x, y, {1e-6 if dtype == 'float64' else 1e-3}, "
                            f"{1e-9 if dtype == 'float64' else 1e-4}) for x, y in zip([RESULT[0], *RESULT[1]], "
                            f"grad_direct_ps(field, y0, t_out, grad_ys, [field.theta], {[B, D]}, **kw)))"))
    return call


def adjoint_per_sample_call(g: Gen) -> Call:
    """_C.rk_adjoint_per_sample(func, params, t_out, ys, grad_ys, active, options, *, user_shape, tape, progress,
    progress_interval) after a forward solve, through helpers.rk_adjoint_per_sample (the options flat): the
    'resolve' trajectory (ys, the forward outputs) or the 'interpolated' one (tape, a per-sample record with
    record_dense)."""
    B = g.choice([1, 2, 3, 4])
    D = g.choice([1, 2, 3, 5])
    T = g.choice([1, 2, 3, 4])
    t_out, _ = _rows_grid(g, B, T, per_row=B > 1 and g.p(0.4))
    dtype = g.choice(["float64", "float64", "float32"])
    fwd_kw = dict(method="dopri5", rtol=[1e-10], atol=[1e-12], segment_ends=[D])
    env = {"y0": Ten((B, D), dtype, seed=g.seed()), "t_grid": t_out}
    interpolated = g.p(0.5)
    setup = [f"field = Lin({g.uniform(0.2, 2.0)}, torch.{dtype})", f"fwd_kw = {lit(fwd_kw)}",
             f"fwd = rk_solve_per_sample(field, y0, t_grid, mode='record', user_shape={[B, D]}, record_dense=True, "
             "**fwd_kw)" if interpolated else
             f"fwd = rk_solve(field, y0, t_grid, mode='masked', user_shape={[B, D]}, joint=False, **fwd_kw)"]
    settings = _base_settings(g, D)
    all_active = g.p(0.6)
    a: Dict[str, Any] = {
        "func": Code("field"), "params": [Code("field.theta")], "t_out": Code("t_grid"),
        "ys": Code("None" if interpolated else "fwd['ys']"),
        "grad_ys": Ten((T, B, D), dtype, seed=g.seed()),
        "active": Ten((B,), "bool", fill="values", values=[True if all_active else g.choice([True, False])
                                                           for _ in range(B)]),
        **settings, "user_shape": [B, D], "tape": Code("fwd['tape']" if interpolated else "None"),
    }
    call = Call(target="rk_adjoint_per_sample", callee="rk_adjoint_per_sample", args=a, positional=6, env=env,
                setup=setup, level="C")
    valid = True
    t_T, t_rows, t_ok = T, 0, True  # what t_out is after the mutations
    names = ["grad_ys", "grad_ys", "ys", "ys", "tape", "tape", "t_out", "t_out", "active", "active", "active",
             "params", "func", "user_shape", "progress", "setting", "setting"]
    rec = f"mode='record', record_dense=True, **fwd_kw)['tape']"
    tapes = {  # tape expression -> (dense SampleTape?, its B, D, dtype) (None: not a tape the adjoint takes)
        "None": None, "fwd": None, "3": None, "fwd['tape']": (True, B, D, dtype),
        "fwd.get('tape')": (True, B, D, dtype) if interpolated else None,
        f"rk_solve_per_sample(field, y0, t_grid, mode='record', user_shape={[B, D]}, **fwd_kw)['tape']": None,
        f"rk_solve_per_sample(field, y0[:1], t_grid if t_grid.dim() == 1 else t_grid[:1], user_shape={[1, D]}, "
        + rec: (True, 1, D, dtype),
        f"rk_solve_per_sample(field, y0[:, :1], t_grid, user_shape={[B, 1]}, "
        + rec.replace("**fwd_kw", "**dict(fwd_kw, segment_ends=[1])"): (True, B, 1, dtype),
        f"rk_solve_per_sample(field, y0.double() if y0.dtype == torch.float32 else y0.float(), t_grid, "
        f"user_shape={[B, D]}, " + rec: (True, B, D, "float64" if dtype == "float32" else "float32"),
        # another problem's record of the same shape: accepted (the per-sample adjoint does not compare times)
        f"rk_solve_per_sample(field, -y0, t_grid * 0.5, user_shape={[B, D]}, " + rec: (True, B, D, dtype),
        f"rk_solve(field, y0[:1], t_grid if t_grid.dim() == 1 else t_grid[:1], user_shape={[1, D]}, joint=False, "
        + rec: None,
    }
    for _ in range(g.choice([0, 0, 1, 1, 2])):
        name = g.choice(names)
        if name == "setting":
            name = g.choice(SETTINGS)
        valid = valid and name == "active"
        if name == "grad_ys":
            if g.p(0.5):
                other_T = [(T + 1, B, D), (max(T - 1, 0), B, D)] if True else []
                shape = g.choice([(T, B + 1, D), (T, B, D + 1), (T, B * D), (), (T, 0, D)] + other_T)
                a[name] = replace(a[name], shape=shape)
                m = f"shape {shape}"
            else:
                a[name], m = g.mutate_tensor(a[name])
        elif name == "ys":
            a[name] = Code(g.choice(["fwd['ys']", "None", "fwd['ys'][:1]", "fwd['ys'][:, :1]", "fwd['ys'].float()",
                                     "fwd['ys'].double()", "fwd['ys'].transpose(0, 1)", "fwd['ys'] * nan",
                                     "torch.zeros_like(fwd['ys'])", "fwd['ys'].to('meta')", "[fwd['ys']]",
                                     "fwd['ys'].transpose(0, 1).contiguous().transpose(0, 1)"]))
            m = a[name].text
        elif name == "tape":
            a[name] = Code(g.choice([k for k, v in tapes.items() if k != "fwd['tape']" or interpolated]))
            m = a[name].text
        elif name == "t_out":
            how = g.choice(["mutate", "mutate", "rows", "float32"]
                           + (["longer", "shorter"] if True else []))
            t_ok = how != "float32"
            if how == "mutate":
                spec, m = g.mutate_tensor(t_out, "grid")
                a[name] = spec
                t_T = spec.shape[-1] if spec.shape else 0
                t_rows = spec.shape[0] if len(spec.shape) == 2 else 0
            elif how in ("longer", "shorter"):
                t_T = T + 2 if how == "longer" else max(T - 1, 1)
                a[name] = _rows_grid(g, B, t_T, per_row=False)[0]
                t_rows = 0
                m = f"t_out with {t_T} times (grad_ys has {T})"
            elif how == "rows":
                t_rows = g.choice([B + 1, max(B - 1, 1)])
                a[name] = _rows_grid(g, t_rows, T, per_row=True)[0]
                m = f"t_out with {t_rows} rows"
            else:
                a[name] = Code("t_grid.float()")
                m = "t_out float32"
                t_T, t_rows = T, 0
        elif name == "active":
            strided = True
            if g.p(0.5):
                a[name], m = g.mutate_tensor(a[name])
                while a[name].layout in ("stride2", "expand") and not strided:
                    a[name], m = g.mutate_tensor(a[name])
                valid = False
            else:
                a[name] = replace(a[name], values=[g.choice([True, False]) for _ in range(B)],
                                  layout=g.choice(["contig", "offset"] + (["stride2", "expand"] if strided else [])))
                m = f"active {a[name].values} {a[name].layout}"  # still a valid call
        elif name == "params":
            a[name] = g.choice([[], [Code("field.theta.detach()")], [Code("field.theta")] * 2, [Code("y0")],
                                [Ten((), "int64", fill="full", value=1)], [Ten((2,), "float64", device="meta")],
                                [Code("torch.zeros(2, dtype=torch.float64, requires_grad=True)")]]
                               + [[Code("1.0")]])
            m = lit(a[name]) if not any(isinstance(x, Ten) for x in a[name]) else "odd tensor"
        elif name == "func":
            a[name] = Code(g.choice(["F.decay", "F.wrong_shape", "F.raises", "F.nan_late", "F.identity", "F.inf",
                                     "F.not_tensor", "Lin(0.5)"]))
            m = a[name].text
        elif name == "user_shape":
            a[name] = g.choice([[B, D + 1], [], [-1], [2**62], [B, D, 1], [B, 1, D]]
                               + ([[B * D], [D, B], [1, B * D]] if True else []))
            m = lit(a[name])
        elif name == "progress":
            m = _mutate_progress(g, a)
        else:
            m = _mutate_setting(g, a, name, D)
        call.muts.append(f"{name}: {m}")
    a["step_t"], a["jump_t"] = resolve_times(a["step_t"], t_out), resolve_times(a["jump_t"], t_out)

    gy, act = a["grad_ys"], a["active"]
    must = []
    if gy.device != "cpu":
        must.append("meta grad_ys")
    if len(gy.shape) != 3:
        must.append("grad_ys must be [T, B, D]")
    gT, gB, gD = (tuple(gy.shape) + (None, None, None))[:3]
    ys = a["ys"].text
    ys_shape = {"fwd['ys'][:1]": (1, B, D), "fwd['ys'][:, :1]": (T, 1, D),
                "fwd['ys'].transpose(0, 1)": (B, T, D)}.get(ys, (T, B, D))
    ys_dtype = {"fwd['ys'].float()": "float32", "fwd['ys'].double()": "float64"}.get(ys, dtype)
    tape = a["tape"].text
    if ys == "[fwd['ys']]":
        must.append("ys must be a tensor or None")
    if tape in ("None",) or tape == "fwd.get('tape')" and not interpolated:
        # the 'resolve' trajectory: ys are the forward outputs
        if ys in ("None", "fwd['ys'].to('meta')") or ys_shape != tuple(gy.shape) or ys_dtype != gy.dtype:
            must.append("ys must match grad_ys (shape, dtype, device)")
    elif tapes.get(tape) is None:
        must.append("tape must be a SampleTape with a dense record (record_dense=True)")
    else:
        _, tB, tD, tdt = tapes[tape]
        if (tB, tD, tdt) != (gB, gD, gy.dtype):
            must.append(f"the tape's record must match grad_ys: B, D, dtype = {(tB, tD, tdt)} vs {(gB, gD, gy.dtype)}")
    if not (isinstance(act, Ten) and act.dtype == "bool" and tuple(act.shape) == (gB,) and act.device == "cpu"):
        must.append(f"active must be a CPU bool [{gB}] tensor")
    if len(gy.shape) == 3:
        must += _user_shape_must_raise(a["user_shape"], gB * gD)
    if len(a["rtol"]) != 1 or len(a["atol"]) != 1:
        must.append("one rtol and one atol")
    elif not (a["rtol"][0] >= 0 and math.isfinite(a["rtol"][0])) or not a["atol"][0] >= 0:
        must.append("tolerances >= 0 (rtol finite)")
    segs = a["segment_ends"]
    if segs and gD is not None and segs[-1] != gD:
        must.append("segment_ends must end at D")
    must += _control_must_raise(a)
    fs = a["first_step"]
    if isinstance(fs, float) and not (math.isfinite(fs) and fs >= 0):
        must.append(f"first_step={lit(fs)}")
    ce = a["check_every"]
    if isinstance(ce, int) and not 1 <= ce <= 64:
        must.append("check_every in [1, 64]")
    if a["step_t"] or a["jump_t"]:
        must.append("step_t/jump_t in a per-sample solve")
    if not t_ok or (gT is not None and t_T != gT) or (t_rows and t_rows != gB):
        must.append(f"t_out must hold grad_ys' times (float64 [T] or [B, T]): T = {gT}, B = {gB}")
    if isinstance(a["t_out"], Ten):
        tv = a["t_out"].numbers()
        if a["t_out"].device != "cpu" or a["t_out"].dtype != "float64" or (
                tv is not None and a["t_out"].shape and not _is_monotone(tv, a["t_out"].shape[-1])):
            must.append("t_out float64, finite and strictly monotone on the CPU")
    for p in a["params"]:
        if isinstance(p, Ten) or (isinstance(p, Code) and p.text in ("field.theta.detach()", "y0", "1.0")):
            must.append(f"params: {p.text if isinstance(p, Code) else 'odd tensor'}")
    must += _progress_must_raise(a)
    call.must_raise = must
    n_params = len(a["params"])
    call.checks = [
        ("wrong-gradient-shape", f"tuple(RESULT['grad_y0'].shape) == ({gB}, {gD}) and len(RESULT['grad_params']) == "
                                 f"{n_params} and tuple(RESULT['status'].shape) == ({gB},)"),
        ("returned-while-running", "not bool((RESULT['status'] == RUNNING).any())"),
        ("inactive-sample-integrated", "adjoint_ps_ok(RESULT, active)"),
        ("success-with-nonfinite-gradient", "not bool((RESULT['status'] == SUCCESS).all()) or "
                                            "not all_finite(fwd['ys'], grad_ys) or "
                                            "all_finite(RESULT['grad_y0'], RESULT['grad_params'])"),
    ]
    if valid:
        tol = 1e-4 if dtype == "float64" else 1e-2  # (the adjoint's rtol is 1e-6)
        call.checks.append(("adjoint-gradient-differs-from-exact",
                            "bool((RESULT['status'] == SUCCESS).all()) and all(close_scaled(x.reshape(y.shape), y, "
                            f"{tol}) for x, y in zip((RESULT['grad_y0'], RESULT['grad_params'][0]), "
                            "lin_exact_grads_ps(field, y0, t_grid, grad_ys, active)))"))
    return call


IVP_OPTION_VALUES: Dict[str, list] = dict(API_OPTION_VALUES, norm=[
    Code("lambda x: x.reshape(x.shape[0], -1).abs().amax(1)"), Code("N.max_abs"), Code("N.elementwise"),
    Code("N.string"), Code("N.nan"), Code("lambda x: x.reshape(x.shape[0], -1).norm(dim=1)"),
    Code("lambda x: torch.zeros(x.shape[0], dtype=torch.float64)")])


BAD_OUTPUT = {"F.wrong_shape", "F.meta_out", "F.not_tensor", "F.wrong_dtype"}


def solve_ivp_call(g: Gen) -> Call:
    """fastdiffeq.solve_ivp(func, y0, t_eval, *, method, rtol, atol, gradient, options, on_failure, event_fn, params,
    progress) through helpers.ivp_call (optionally with a backward pass)."""
    dtype = g.choice(["float64", "float64", "float32"])
    B = g.choice([1, 2, 3, 4])
    state = g.choice([(2,), (3,), (), (2, 2), (1,)])
    T = g.choice([1, 2, 3, 5])
    gradient = g.choice(["direct", "direct", "checkpoint", "adjoint"])
    backward = g.p(0.5)
    lin = g.p(0.5) or gradient != "direct" and g.p(0.5)
    per_row = B > 1 and g.p(0.5)
    t_eval, t_mid = _rows_grid(g, B, T, per_row=per_row, mixed=per_row and g.p(0.4))
    a: Dict[str, Any] = {
        "func": Code(f"Lin({g.uniform(0.2, 2.0)}, torch.{dtype})" if lin else f"F.{g.choice(FIELDS)}"),
        "y0": Ten((B, *state), dtype, seed=g.seed(), requires_grad=backward),
        "t_eval": t_eval,
        "backward": backward,
        "rtol": g.choice([1e-6, 1e-7]) if dtype == "float64" else 1e-5,
        "atol": g.choice([1e-8, 1e-9]) if dtype == "float64" else 1e-6,
        "gradient": gradient,
    }
    if g.p(0.3):
        a["method"] = g.choice(["dopri5", "tsit5", "bosh3"])
    if not lin and gradient != "direct":
        a["params"] = ()
    if g.p(0.4):
        a["on_failure"] = g.choice(["mark", "raise"])
    if gradient == "direct" and g.p(0.3):
        a["event_fn"] = Code(g.choice([f"E.time({lit(t_mid)})", "E.level(0.0)", "E.level(0.5)"]))
    if gradient == "adjoint" and g.p(0.5):
        a["adjoint_options"] = {"trajectory": g.choice(["interpolated", "resolve"])}
    options: Dict[str, Any] = {}
    y0_spec = a["y0"]
    pre: List[str] = []  # non-tensor y0 / t_eval, bound to their names before the call
    names = ["y0", "y0", "t_eval", "t_eval", "t_eval", "rtol", "atol", "gradient", "on_failure", "options", "options",
             "options", "event_fn", "event_fn", "params", "func", "method", "progress", "adjoint_options"]
    for _ in range(g.choice([0, 0, 1, 1, 2, 3])):
        name = g.choice(names)
        if name == "y0":
            if g.p(0.8):
                a["y0"], m = g.mutate_tensor(a["y0"] if isinstance(a["y0"], Ten) else y0_spec)
            else:
                m = g.choice(["[1.0, 2.0]", "None", "(mk([2, 2]),)"])
                pre.append(f"y0 = {m}")
                a["y0"] = Code("y0")
        elif name == "t_eval":
            how = g.choice(["mutate", "mutate", "rows", "bad_row", "bad_row", "grad", "other"])
            t = a["t_eval"] if isinstance(a["t_eval"], Ten) else t_eval
            if how == "mutate":
                a["t_eval"], m = g.mutate_tensor(t, "grid")
            elif how == "rows":
                rows = g.choice([B + 1, max(B - 1, 1), 1]) if B > 1 else 2
                a["t_eval"] = _rows_grid(g, rows, T, per_row=True, mixed=g.p(0.5))[0]
                m = f"t_eval with {rows} rows"
            elif how == "bad_row":
                grid = _rows_grid(g, B, max(T, 3), per_row=True, mixed=g.p(0.5))[0]
                vals = list(grid.values)
                n = grid.shape[1]
                r = g.randint(0, B - 1)
                k = r * n + g.randint(0, n - 1)
                bad = g.choice(["nan", "inf", "repeat", "swap", "huge"])
                if bad == "nan":
                    vals[k] = math.nan
                elif bad == "inf":
                    vals[k] = g.choice([math.inf, -math.inf])
                elif bad == "repeat":
                    vals[r * n + 1] = vals[r * n]
                elif bad == "swap":
                    vals[r * n + 1], vals[r * n + 2] = vals[r * n + 2], vals[r * n + 1]
                else:
                    vals[r * n + n - 1] = math.copysign(1e300, vals[r * n + n - 1] - vals[r * n])
                a["t_eval"] = replace(grid, values=vals)
                m = f"t_eval row {r}: {bad}"
            elif how == "grad":
                a["t_eval"] = replace(t, requires_grad=True)
                m = "t_eval requires grad"
            else:
                m = g.choice(["[0.0, 1.0]", "None", "torch.arange(3)", "torch.linspace(0, 1, 3).numpy()",
                              "torch.tensor([[[0.0, 1.0]]])", "torch.zeros(2, 0)",
                              "torch.tensor([0.0, 1.0], dtype=torch.float16)",
                              "torch.tensor([0.0, 1.0], dtype=torch.complex64)"])
                pre.append(f"t_eval = {m}")
                a["t_eval"] = Code("t_eval")
        elif name in ("rtol", "atol"):
            a[name] = g.choice([Code("10**400"), -1.0, math.nan, 0.0, math.inf, 1e300, 1e-300, [1e-6], [1e-6, 1e-6],
                                "1e-3", True, None, Ten((2,), "float64", fill="full", value=1e-6),
                                Ten((), "float64", fill="full", value=1e-5),
                                Ten((B,), "float64", fill="full", value=1e-6)])
            m = lit(a[name]) if not isinstance(a[name], Ten) else f"a {list(a[name].shape)} tensor"
        elif name == "gradient":
            a["gradient"] = g.choice(["direct", "checkpoint", "adjoint", "bogus", None, "Adjoint"])
            m = lit(a["gradient"])
        elif name == "on_failure":
            a["on_failure"] = g.choice(["mark", "raise", "ignore", None, True])
            m = lit(a["on_failure"])
        elif name == "options":
            k = g.choice(list(IVP_OPTION_VALUES) + ["step_t", "jump_t", "options_type"])
            if k in ("step_t", "jump_t"):
                v = Rel(g.choice(REL_CHOICES))
            elif k == "options_type":
                a["options"] = Code(g.choice(["[('safety', 0.9)]", "'fast'"]))
                m = a["options"].text
                call_m = f"options: {m}"
                a.setdefault("_muts", []).append(call_m)
                continue
            else:
                v = g.choice(IVP_OPTION_VALUES[k])
            options[k] = v
            m = f"options[{k!r}] = {lit(v) if not isinstance(v, (Ten, Rel)) else 'times'}"
        elif name == "event_fn":
            a["event_fn"] = Code(g.choice(_events_bad("solve_ivp", backward) + [f"E.time({lit(t_mid)})", "E.level(0.0)",
                                                                                 "E.sin"]))
            m = a["event_fn"].text
        elif name == "params":
            a["params"] = g.choice([None, (), [Code("torch.zeros(2, requires_grad=True)")], [1.0],
                                    [Code("torch.zeros(2)")], Code("torch.zeros(2, requires_grad=True)"),
                                    [Ten((2,), "float64", device="meta", requires_grad=True)]])
            m = lit(a["params"]) if not isinstance(a["params"], list) or not any(
                isinstance(x, Ten) for x in a["params"]) else "[meta tensor]"
        elif name == "func":
            a["func"] = Code(g.choice([f"F.{g.choice(FIELDS)}", "3", f"Lin(0.5, torch.{dtype})"]))
            m = a["func"].text
        elif name == "method":
            a["method"] = g.choice(["rk4", "DOPRI5", 5, "euler", None, "bosh3"])
            m = lit(a["method"])
        elif name == "adjoint_options":
            a["adjoint_options"] = g.choice([{"trajectory": "interpolated"}, {"trajectory": "resolve"}, {},
                                             {"trajectory": "bogus"}, {"trajectory": None}, {"bogus": 1},
                                             {"norm": "seminorm"}, Code("'interpolated'"), None])
            m = lit(a["adjoint_options"])
        else:
            a["progress"] = g.choice(["yes", 1, None])
            m = f"progress={lit(a['progress'])}"
        a.setdefault("_muts", []).append(f"{name}: {m}")
    muts = a.pop("_muts", [])
    pre = [ln for ln in pre if not any(ln.startswith(f"{k} = ") and isinstance(a[k], Ten) for k in ("y0", "t_eval"))]
    if any(m.startswith("t_eval") for m in muts) and not isinstance(a.get("options"), Code):
        # a far grid with the default max_num_steps (2**31 - 1 per output interval) runs for hours
        options.setdefault("max_num_steps", 10000)
    if options:
        a["options"] = resolve_times(options, a["t_eval"] if isinstance(a["t_eval"], Ten) else t_eval)
    call = Call(target="solve_ivp", callee="ivp_call", args=a, positional=3, level="api", muts=muts, setup=pre)

    must = []
    y0, te = a["y0"], a["t_eval"]
    func = a["func"].text
    if func == "3":
        must.append("func not callable")
    if func in BAD_OUTPUT:
        must.append(f"{func} returns no tensor of y's shape, dtype and device")
    B_eff = None
    if isinstance(y0, Ten):
        if y0.device != "cpu":
            must.append("meta y0")
        if y0.dtype not in ("float32", "float64"):
            must.append("y0 dtype")
        if not y0.shape or y0.shape[0] == 0:
            must.append("y0 must be [B, ...] with B >= 1")
        else:
            B_eff = y0.shape[0]
        if y0.dtype in ("float32", "float64") and math.prod(y0.shape) and any(
                not math.isfinite(v) for _, v in y0.specials if isinstance(v, float)):
            must.append("y0 not finite")
        if y0.dtype in ("float32", "float64") and math.prod(y0.shape) and any(
                abs(v) > 3e38 for _, v in y0.specials if isinstance(v, float)) and y0.dtype == "float32":
            must.append("y0 not finite (float32 overflow)")
    else:
        must.append("y0 not a tensor")
    if isinstance(te, Ten):
        tv = te.numbers()
        if te.device != "cpu":
            must.append("meta t_eval")
        if te.dtype not in ("float16", "float32", "float64", "bfloat16"):
            must.append("t_eval not floating")
        if len(te.shape) not in (1, 2) or (te.shape and te.shape[-1] == 0):
            must.append("t_eval must be [T] or [B, T], T >= 1")
        elif len(te.shape) == 2 and B_eff is not None and te.shape[0] != B_eff:
            must.append("t_eval rows != B")
        elif tv is not None and te.shape and not _is_monotone(tv, te.shape[-1]):
            must.append("t_eval not finite and strictly monotone per row")
        if te.requires_grad:
            must.append("t_eval requires grad")
    elif not any(ln == "t_eval = torch.tensor([0.0, 1.0], dtype=torch.float16)" for ln in pre):
        must.append("t_eval not a float tensor [T] / [B, T]")
    for k in ("rtol", "atol"):
        v = a[k]
        if isinstance(v, float) and (v != v or v < 0 or math.isinf(v)):
            must.append(f"{k}={lit(v)}")
        elif isinstance(v, (str, bool)) or v is None or isinstance(v, Code):
            must.append(f"{k}={lit(v)}")
        elif isinstance(v, list) and len(v) != 1:
            must.append(f"{k}: one value")
        elif isinstance(v, Ten) and math.prod(v.shape) != 1:
            must.append(f"{k}: a tensor of {math.prod(v.shape)} values")
    if a["rtol"] == 0.0 and a["atol"] == 0.0:
        must.append("rtol and atol both 0")
    if a.get("gradient", "direct") not in ("direct", "checkpoint", "adjoint"):
        must.append("gradient")
    if a.get("on_failure", "raise") not in ("mark", "raise"):
        must.append("on_failure")
    if "method" in a and a["method"] not in ("dopri5", "tsit5", "bosh3"):
        must.append("method")
    if "progress" in a and not isinstance(a["progress"], bool):
        must.append("progress must be a bool")
    ao = a.get("adjoint_options")
    if isinstance(ao, Code) or isinstance(ao, dict) and (set(ao) - {"trajectory"} or ao.get(
            "trajectory", "resolve") not in ("resolve", "interpolated")):
        must.append("adjoint_options: a dict with trajectory 'resolve' or 'interpolated'")
    opts = a.get("options")
    if isinstance(opts, Code):
        must.append("options not a dict")
    elif opts:
        must += [f"options: {m}" for m in _control_must_raise(
            {k: v for k, v in opts.items() if k != "max_num_steps" or isinstance(v, int)})]
        if "bogus_option" in opts:
            must.append("unknown option")
        if opts.get("step_t") or opts.get("jump_t"):
            must.append("step_t/jump_t in solve_ivp")
    ev = a.get("event_fn")
    if ev is not None:
        if ev.text in ("3", "'event'"):
            must.append("event_fn not callable")
        if a.get("gradient", "direct") != "direct":
            must.append("event_fn with gradient != 'direct'")
    params = a.get("params")
    if isinstance(params, list) and any(not isinstance(p, (Ten, Code)) or isinstance(p, Code) and "torch" not in p.text
                                        for p in params):
        must.append("params must hold tensors")
    # (params given as one tensor is iterated over its 0-dim elements: accepted)
    if params is None and not func.startswith("Lin") and a.get("gradient") in ("checkpoint", "adjoint"):
        must.append("params required for gradient checkpoint/adjoint with a plain function")
    call.must_raise = sorted(set(must))

    has_event = ev is not None
    call.checks = [
        ("wrong-output-shape", f"ivp_shapes_ok(RESULT, y0, t_eval, event={has_event})"),
        ("returned-with-failed-samples", "RESULT['status'].eq(SUCCESS).all() or "
                                         f"{a.get('on_failure', 'raise')!r} == 'mark'"),
        ("success-with-nonfinite", "ivp_success_finite(RESULT, y0)"),
    ]
    valid = not must and not muts
    if valid and func.startswith("Lin") and not has_event and isinstance(y0, Ten) and y0.dtype == "float64":
        # the field is built before the call, so that the check sees its theta
        a["func"] = Code("field")
        call.setup.insert(0, f"field = {func}")
        call.checks.append(("differs-from-exact", "ivp_lin_exact_ok(RESULT, field, y0, t_eval)"))
    if valid and B_eff and B_eff > 1 and (func in ROWWISE or func.startswith("Lin")) and "options" not in a:
        kw = {k: a[k] for k in ("rtol", "atol", "method") if k in a}
        ev_txt = f", event_fn={ev.text}" if has_event else ""
        fn = "field" if a["func"].text == "field" else func
        call.checks.append(("batch-differs-from-alone", f"ivp_alone_ok(RESULT, {fn}, y0, t_eval{ev_txt}, **{lit(kw)})"))
    if func == "F.identity":
        call.swap = ("F.identity", "F.grow")
    return call


def odeint_event_call(g: Gen) -> Call:
    """fastdiffeq.odeint_event(func, y0, t0, *, event_fn, reverse_time, odeint_interface, **kwargs) through
    helpers.event_call (optionally back-propagating the event time)."""
    dtype = g.choice(["float64", "float64", "float32"])
    kind = g.choice(["const", "decay"])
    reverse = g.p(0.3)
    level = {("const", False): 1.5, ("const", True): 0.5, ("decay", False): 0.5, ("decay", True): 2.0}[kind, reverse]
    n_parts = g.choice([0, 0, 0, 1, 2])
    backward = g.p(0.5)
    shapes = [g.choice([(2,), (3,), (), (1,), (2, 2)]) for _ in range(max(n_parts, 1))]
    parts = [Ten(s, dtype, fill="full", value=1.0, requires_grad=backward and (j == 0 or g.p(0.5)))
             for j, s in enumerate(shapes)]
    t0v = g.choice([0.0, 1.0, -2.0])
    t0 = Ten(g.choice([(), (), (1,)]), g.choice(["float64", "float64", "float32"]), fill="full", value=t0v,
             requires_grad=g.p(0.4))
    interface = g.choice([None, None, "fde.odeint", "fde.odeint_adjoint"])
    a: Dict[str, Any] = {
        "func": Code(f"F.{kind}"),
        "y0": parts[0] if n_parts == 0 else tuple(parts),
        "t0": t0,
        "backward": backward,
        "event_fn": Code(f"E.level({lit(level)})"),
        "reverse_time": reverse,
        "rtol": 1e-9 if dtype == "float64" else 1e-6, "atol": 1e-11 if dtype == "float64" else 1e-7,
    }
    if interface:
        a["odeint_interface"] = Code(interface)
        if interface == "fde.odeint_adjoint":
            a["adjoint_params"] = ()
    if g.p(0.3):
        a["method"] = g.choice(["dopri5", "tsit5", "bosh3"])
    options: Dict[str, Any] = {}
    names = ["y0", "t0", "t0", "event_fn", "event_fn", "reverse_time", "interface", "func", "rtol", "options",
             "options", "method", "extra"]
    for _ in range(g.choice([0, 0, 1, 1, 2])):
        name = g.choice(names)
        if name == "y0":
            if n_parts and g.p(0.5):
                j = g.randint(0, n_parts - 1)
                parts[j], m = g.mutate_tensor(parts[j])
                a["y0"] = tuple(parts) if g.p(0.8) else list(parts)
                m = f"y0[{j}] {m}"
            elif n_parts == 0:
                a["y0"], m = g.mutate_tensor(a["y0"])
            else:
                a["y0"], m = (), "empty tuple"
        elif name == "t0":
            if g.p(0.6):
                a["t0"], m = g.mutate_tensor(a["t0"] if isinstance(a["t0"], Ten) else t0, "time")
            else:
                a["t0"] = g.choice([0.0, Code("None"), Ten((2,), "float64", fill="values", values=[0.0, 1.0]),
                                    Ten((0,), "float64")])
                m = lit(a["t0"]) if not isinstance(a["t0"], Ten) else f"t0 shape {a['t0'].shape}"
        elif name == "event_fn":
            a["event_fn"] = Code(g.choice(_events_bad("odeint_event", backward) + ["E.level(-5.0)", "E.time(0.5)"]
                                          + (["None"] if True else [])))
            m = a["event_fn"].text
        elif name == "reverse_time":
            a["reverse_time"] = g.choice([not reverse, "yes", None, 1])
            m = lit(a["reverse_time"])
        elif name == "interface":
            a["odeint_interface"] = Code(g.choice(["fde.odeint_adjoint", "fde.odeint"]
                                                  + (["3"] if True else [])))
            a.pop("adjoint_params", None) if g.p(0.5) else a.__setitem__("adjoint_params", ())
            m = a["odeint_interface"].text + (" with adjoint_params=()" if "adjoint_params" in a else "")
        elif name == "func":
            a["func"] = Code(f"F.{g.choice(FIELDS)}")
            m = a["func"].text
        elif name == "rtol":
            a[g.choice(["rtol", "atol"])] = g.choice([-1.0, math.nan, "1e-3", [1e-6] * 3, None])
            m = f"rtol/atol {lit(a.get('rtol'))}/{lit(a.get('atol'))}"
        elif name == "options":
            k = g.choice(list(API_OPTION_VALUES) + ["step_t", "jump_t"])
            if k in ("step_t", "jump_t"):
                v = [t0v + g.choice([0.25, -0.25, 1e-300])]
            else:
                v = g.choice(API_OPTION_VALUES[k])
            options[k] = v
            m = f"options[{k!r}] = {lit(v)}"
        elif name == "method":
            a["method"] = g.choice(["rk4", "DOPRI5", 5, None])
            m = lit(a["method"])
        else:
            k, v = g.choice([("gradient", "checkpoint"), ("gradient", "bogus"), ("progress", "yes"),
                             ("progress", False)])
            a[k] = v
            m = f"{k}={lit(v)}"
        call_m = f"{name}: {m}"
        a.setdefault("_muts", []).append(call_m)
    muts = a.pop("_muts", [])
    if muts or g.p(0.5):
        # An event that never fires is searched for over min(1e300, max_step * max_num_steps): with the default
        # 2**31 - 1 steps and a solution whose steps stop growing, hours.
        options.setdefault("max_num_steps", 5000)
    if options:
        a["options"] = options
    call = Call(target="odeint_event", callee="event_call", args=a, positional=3, level="api", muts=muts)

    must = []
    ys = list(a["y0"]) if isinstance(a["y0"], (tuple, list)) else [a["y0"]]
    if isinstance(a["y0"], list) or a["y0"] == ():
        must.append("y0 a list or an empty tuple")
    for s in ys:
        if s.device != "cpu":
            must.append("meta y0")
        if s.dtype not in ("float32", "float64"):
            must.append("y0 dtype")
        if s.dtype in ("float32", "float64") and math.prod(s.shape) and any(
                isinstance(v, float) and not math.isfinite(v) for _, v in s.specials):
            must.append("y0 not finite")
    if len({s.dtype for s in ys}) > 1:
        must.append("y0 parts of different dtypes")
    t0s = a["t0"]
    if not isinstance(t0s, Ten) or math.prod(t0s.shape) != 1:
        must.append("t0 must be a tensor holding one time")
    else:
        tv = t0s.numbers()
        if t0s.device != "cpu":
            must.append("meta t0")
        if tv is not None and not all(math.isfinite(v) for v in tv):
            must.append("t0 not finite")
    ev = a["event_fn"].text
    if ev in ("3", "'event'", "None"):
        must.append("event_fn not callable")
    if ev in ("E.number", "E.string", "E.none"):
        must.append("event_fn must return a tensor")
    itf = a.get("odeint_interface")
    if itf is not None and itf.text == "3":
        must.append("odeint_interface not callable")
    if itf is not None and itf.text == "fde.odeint_adjoint" and "adjoint_params" not in a:
        must.append("odeint_adjoint with a plain function needs adjoint_params")
    if itf is not None and itf.text == "fde.odeint" and "adjoint_params" in a:
        must.append("odeint has no adjoint_params")
    for k in ("rtol", "atol"):
        v = a[k]
        if isinstance(v, float) and (v != v or v < 0) or isinstance(v, str) or v is None:
            must.append(f"{k}={lit(v)}")
        if isinstance(v, list) and len(v) != len(ys):
            must.append(f"{k}: one per tuple element")
    if "method" in a and a["method"] not in ("dopri5", "tsit5", "bosh3", None):
        must.append("method")
    must += [f"options: {m}" for m in _control_must_raise(
        {k: v for k, v in options.items() if k != "max_num_steps" or isinstance(v, int)})]
    if "bogus_option" in options:
        must.append("unknown option")
    rev = a["reverse_time"]
    if isinstance(a["t0"], Ten) and a["t0"].fill == "full" and a["t0"].value == t0v and isinstance(rev, bool):
        ahead = [p for k in ("step_t", "jump_t") for p in options.get(k, []) if (p - t0v) * (-1 if rev else 1) > 0]
        if ahead:  # (points behind t0 are dropped)
            must.append("step_t/jump_t with an event")
    if a.get("gradient") == "bogus" or a.get("progress") == "yes":
        must.append("bad gradient/progress")
    call.must_raise = sorted(set(must))
    call.checks = [
        ("wrong-output-shape", "(shape_of(RESULT['sol']) == tuple((2, *p.shape) for p in y0)) if isinstance(y0, "
                               "tuple) else tuple(RESULT['sol'].shape) == (2, *y0.shape)"),
        ("wrong-output-shape", "RESULT['t'].numel() == 1"),
    ]
    valid = not must and not muts
    if valid:
        tol = 1e-6 if dtype == "float64" and t0.dtype == "float64" else 1e-4
        call.checks.append(("event-differs-from-exact", f"event_exact_ok(RESULT, {kind!r}, y0, t0, {lit(level)}, "
                                                        f"{tol})"))
    return call


def _fixed_methods() -> List[str]:
    from fastdiffeq import _C

    return [m for m in _C.methods if _C.tableau(m)["stepping"] == "fixed"]


def _fixed_grid_points(tv: list, n_sub: int) -> list:
    """A grid through every output time with n_sub steps per output interval."""
    if len(tv) < 2:
        return list(tv)
    return [tv[k] + (tv[k + 1] - tv[k]) * j / n_sub for k in range(len(tv) - 1) for j in range(n_sub)] + [tv[-1]]


def _times_must_raise(t: Ten, name: str) -> List[str]:
    """The fixed-grid loop's time vectors: float64 [n >= 1] on the CPU, finite and strictly monotone."""
    if t.device != "cpu" or t.dtype != "float64" or len(t.shape) != 1:
        return [f"{name} must be a 1-D float64 CPU tensor"]
    if t.shape[0] == 0:
        return [f"{name} must hold at least one time"]
    v = t.numbers()
    if v is not None and not _is_monotone(v, t.shape[0]):
        return [f"{name} not finite and strictly monotone"]
    return []


def fixed_grid_call(g: Gen) -> Call:
    """_C.fixed_grid_solve(func, y0, grid, t_out, *, method, interp, perturb, user_shape, mode)."""
    D = g.choice([1, 2, 3])
    T = g.choice([1, 2, 3, 5])
    t_out = _grid(g, T)
    gv = _fixed_grid_points(t_out.numbers(), g.choice([1, 2, 3]))
    a = {
        "func": Code(f"F.{g.choice(FIELDS)}"),
        "y0": Ten((1, D), g.choice(["float64", "float32"]), seed=g.seed()),
        "grid": Ten((len(gv),), "float64", fill="values", values=gv),
        "t_out": t_out,
        "method": g.choice(_fixed_methods()), "interp": g.choice(["linear", "cubic"]), "perturb": g.p(0.3),
        "user_shape": [D], "mode": g.choice(["graph", "record"]),
    }
    call = Call(target="fixed_grid_solve", callee="_C.fixed_grid_solve", args=a, positional=4, level="C")
    for _ in range(g.choice([0, 1, 1, 1, 2])):
        name = g.choice(list(a))
        v = a[name]
        if name in ("y0", "grid", "t_out"):
            a[name], m = g.mutate_tensor(v, "grid" if name != "y0" else "")
        elif name == "func":
            a[name] = Code(f"F.{g.choice(FIELDS)}")
            m = a[name].text
        elif name == "method":
            a[name] = g.choice(["dopri5", "", "RK4", "dopri8"])
            m = a[name]
        elif name == "interp":
            a[name] = g.choice(["quadratic", ""])
            m = a[name]
        elif name == "perturb":
            a[name] = not v
            m = str(a[name])
        elif name == "user_shape":
            a[name] = g.choice([[], [D + 1], [-1], [0], [1, D]])
            m = lit(a[name])
        else:
            a[name] = g.choice(["masked", "bogus"])
            m = a[name]
        call.muts.append(f"{name}: {m}")
    y0, grid, t_out = a["y0"], a["grid"], a["t_out"]
    must = []
    if y0.device != "cpu":
        must.append("meta y0")
    if y0.dtype not in ("float32", "float64") or len(y0.shape) != 2:
        must.append("y0 must be a float32/float64 [B, D] tensor")
    must += _times_must_raise(grid, "grid") + _times_must_raise(t_out, "t_out")
    tv, gvals = t_out.numbers(), grid.numbers()
    if not must and tv is not None and gvals is not None and (gvals[0] != tv[0] or gvals[-1] != tv[-1]):
        must.append("the grid must start at t[0] and end at t[-1]")
    if a["method"] not in _fixed_methods():
        must.append(f"method {a['method']!r} is not a fixed-grid method")
    if a["interp"] not in ("linear", "cubic"):
        must.append("interp must be 'linear' or 'cubic'")
    if a["mode"] not in ("graph", "record"):
        must.append("mode must be 'graph' or 'record'")
    if len(y0.shape) == 2:
        must += _user_shape_must_raise(a["user_shape"], math.prod(y0.shape))
    call.must_raise = must
    call.observe = "{k: v for k, v in RESULT.items() if k != 'tape'}"
    call.checks = [("wrong-output-shape", "tuple(RESULT['ys'].shape) == (t_out.shape[-1], *y0.shape)")]
    return call


def fixed_grid_backward_call(g: Gen) -> Call:
    """_C.fixed_grid_backward(func, tape, grad_ys, params, user_shape) after a recording fixed-grid solve."""
    D = g.choice([1, 2, 3])
    T = g.choice([1, 2, 3, 4])
    t_out = _grid(g, T)
    gv = _fixed_grid_points(t_out.numbers(), g.choice([1, 2]))
    kw = dict(method=g.choice(_fixed_methods()), interp=g.choice(["linear", "cubic"]), perturb=g.p(0.3),
              user_shape=[D])
    env = {"y0": Ten((1, D), "float64", seed=g.seed()), "t_out": t_out,
           "grid": Ten((len(gv),), "float64", fill="values", values=gv)}
    setup = [f"field = Lin({g.uniform(0.2, 2.0)})", f"kw = {lit(kw)}",
             "tape = _C.fixed_grid_solve(field, y0, grid, t_out, mode='record', **kw)['tape']"]
    return _tape_backward_call(g, "fixed_grid_backward", T, D, env, setup, "fixed-grid")


def _tape_backward_call(g: Gen, target: str, T: int, D: int, env: dict, setup: list, tape_kind: str) -> Call:
    """_C.<target>(func, tape, grad_ys, params, user_shape) after a recording solve (setup makes `tape`):
    mutations of each argument and what they must raise."""
    a = {"func": Code("field"), "tape": Code("tape"), "grad_ys": Ten((T, 1, D), "float64", seed=g.seed()),
         "params": [Code("field.theta")], "user_shape": [D]}
    call = Call(target=target, callee=f"_C.{target}", args=a, positional=5, env=env, setup=setup, level="C")
    for _ in range(g.choice([0, 0, 1, 1, 2])):
        name = g.choice(list(a))
        if name == "grad_ys":
            if g.p(0.5):
                shape = g.choice([(T + 2, 1, D), (T, D), (), (T, 1, D + 1), (T, 2, D)])
                a[name] = replace(a[name], shape=shape)
                m = f"shape {shape}"
            else:
                a[name], m = g.mutate_tensor(a[name])
        elif name == "params":
            a[name] = g.choice([[], [Code("field.theta.detach()")], [Code("field.theta")] * 2,
                                [Ten((2,), "float64", device="meta")]])
            m = "params changed"
        elif name == "func":
            a[name] = Code(g.choice(["F.decay", "F.wrong_shape", "F.raises", "Lin(0.5)"]))
            m = a[name].text
        elif name == "tape":
            a[name] = Code(g.choice(["None", "3", "y0"]))
            m = a[name].text
        else:
            a[name] = g.choice([[D + 1], [], [-1], [1, D]])
            m = lit(a[name])
        call.muts.append(f"{name}: {m}")
    gy = a["grad_ys"]
    if gy.device != "cpu":
        call.must_raise.append("meta grad_ys")
    if tuple(gy.shape) != (T, 1, D):
        call.must_raise.append(f"grad_ys shape: must be [{T}, 1, {D}], got {list(gy.shape)}")
    if a["tape"].text != "tape":
        call.must_raise.append(f"not a {tape_kind} tape")
    call.must_raise += _user_shape_must_raise(a["user_shape"], D)
    call.checks = [("wrong-gradient-shape", f"tuple(RESULT[0].shape) == (1, {D})")]
    return call


# ---------------------------------------------------------------------------------------------------
# SDEs: sdeint, sdeint_adjoint (torchsde 0.2.6's contract), the Brownian motions, the native MLP
# ---------------------------------------------------------------------------------------------------

# The contract, written here independently of the library's method records: (SDE type, noise types, Lévy areas).
_ALL_NOISE = ("diagonal", "additive", "scalar", "general")
_ANY_LEVY = ("none", "space-time", "davie", "foster")
SDE_METHODS: Dict[Tuple[str, str], Tuple[Tuple[str, ...], Tuple[str, ...]]] = {
    ("euler", "ito"): (_ALL_NOISE, _ANY_LEVY),
    ("milstein", "ito"): (("additive", "diagonal", "scalar"), _ANY_LEVY),
    ("srk", "ito"): (("additive", "diagonal", "scalar"), ("space-time", "davie", "foster")),
    ("milstein", "stratonovich"): (("additive", "diagonal", "scalar"), _ANY_LEVY),
    ("midpoint", "stratonovich"): (_ALL_NOISE, _ANY_LEVY),
    ("heun", "stratonovich"): (_ALL_NOISE, _ANY_LEVY),
    ("euler_heun", "stratonovich"): (_ALL_NOISE, _ANY_LEVY),
    ("log_ode", "stratonovich"): (_ALL_NOISE, ("davie", "foster")),
    ("reversible_heun", "stratonovich"): (_ALL_NOISE, _ANY_LEVY),
}
SDE_METHOD_NAMES = sorted({m for m, _ in SDE_METHODS})
NEEDS_G = {"srk", "log_ode", "reversible_heun", "milstein"}  # need the diffusion g itself, not only products


def _sde_default_method(sde_type: str, noise: str) -> str:
    return "midpoint" if sde_type == "stratonovich" else ("euler" if noise == "general" else "srk")


def _sde_method_must_raise(method: Any, sde_type: str, noise: str, levy: str, where: str = "method") -> List[str]:
    if not isinstance(method, str):
        return [f"{where}={lit(method)} is not a string"]
    if (method, sde_type) not in SDE_METHODS:
        known = method in SDE_METHOD_NAMES
        return [f"{where}={method!r} " + (f"is not for {sde_type} SDEs" if known else "is unknown")]
    noises, levies = SDE_METHODS[(method, sde_type)]
    out = []
    if noise not in noises:
        out.append(f"{where}={method!r} does not support {noise} noise")
    if levy not in levies:
        out.append(f"{where}={method!r} needs levy_area_approximation in {list(levies)}, bm has {levy!r}")
    return out


def _sde_adjoint_must_raise(adj: Any, method: str, sde_type: str, noise: str, levy: str) -> List[str]:
    """adjoint_method: the adjoint SDE's noise is general for additive noise; it offers products only."""
    if adj is None:
        if method == "reversible_heun":
            return []
        adj = "midpoint" if sde_type == "stratonovich" else ("milstein" if noise == "diagonal" else "euler")
    if adj == "adjoint_reversible_heun":
        return [] if method == "reversible_heun" else ["adjoint_reversible_heun without method='reversible_heun'"]
    anoise = "general" if noise == "additive" else noise
    out = _sde_method_must_raise(adj, sde_type, anoise, levy, "adjoint_method")
    if not out and adj in ("srk", "log_ode"):
        out.append(f"adjoint_method={adj!r} needs g itself (the adjoint SDE offers products only)")
    if not out and adj == "milstein" and noise != "diagonal":
        out.append("adjoint_method='milstein' needs diagonal noise")
    return out


def _sde_ts_must_raise(ts: Any) -> List[str]:
    if isinstance(ts, list):
        vals = ts
        if not all(isinstance(v, float) for v in vals):
            return ["ts is not a list of floats"]
    else:
        if ts.requires_grad:
            return ["ts requires grad"]
        if len(ts.shape) != 1 or ts.shape[0] < 2:
            return [f"ts must be 1-D with at least 2 times, got shape {ts.shape}"]
        if not ts.dtype.startswith(("float", "bfloat")):
            return [f"ts dtype {ts.dtype}"]
        if ts.device != "cpu":
            return []  # (meta: undefined; the comparisons raise in torch)
        vals = ts.numbers()
        if vals is None:
            return []
    if len(vals) < 2:
        return ["ts must hold at least 2 times"]
    if not all(math.isfinite(v) for v in vals):
        return ["ts not finite"]
    if not all(b > a for a, b in zip(vals, vals[1:])):
        return ["ts not strictly increasing"]
    return []


SDE_KINDS = ["lin"] * 5 + ["free"] * 3 + ["nan", "raises", "wrong_g", "products"]


def sde_call_spec(g: Gen, fn: str) -> Call:
    """fastdiffeq.sdeint / sdeint_adjoint(sde, y0, ts, bm=, method=, dt=, adaptive=, ...) through helpers.sde_call,
    with a seeded fastdiffeq.BrownianInterval (optionally a backward pass)."""
    adjoint = fn == "sdeint_adjoint"
    noise = g.choice(_ALL_NOISE)
    sde_type = g.choice(["ito", "stratonovich"])
    # sdeint_adjoint: often reversible Heun with ts on the step grid, whose adjoint is the exact discrete gradient.
    method_forced = "reversible_heun" if adjoint and g.p(0.25) else None
    if method_forced:
        sde_type = "stratonovich"
    kind = g.choice(SDE_KINDS) if g.p(0.35) else "lin"
    if kind == "free":
        noise = "additive"
    if kind == "products":
        noise = "general"
    B, d = g.choice([1, 2, 3]), g.choice([1, 2, 3])
    m = d if noise == "diagonal" else 1 if noise == "scalar" else g.choice([1, 2, 3])
    dtype = g.choice(["float64", "float64", "float64", "float32"])
    methods = [k for (k, st), (noises, _) in SDE_METHODS.items() if st == sde_type and noise in noises
               and not (kind == "products" and k in NEEDS_G)]
    method = method_forced or (g.choice(methods) if g.p(0.8) else None)
    eff = method or _sde_default_method(sde_type, noise)
    levies = SDE_METHODS[(eff, sde_type)][1] if (eff, sde_type) in SDE_METHODS else _ANY_LEVY
    levy = g.choice(levies) if g.p(0.5) else levies[0]
    T = g.choice([2, 3, 4])
    t0, span = g.choice([0.0, 0.0, 0.5, -1.0]), g.choice([0.5, 1.0])
    dt = g.choice([0.1, 0.125, 0.25, 0.0625])
    tv = [t0 + span * k / (T - 1) for k in range(T)]
    if method_forced:
        dt = 0.125
        tv = [t0 + 0.25 * k for k in range(T)]
    elif g.p(0.3):  # output times off the step grid
        tv = tv[:1] + [x + 0.03 for x in tv[1:-1]] + tv[-1:]
    ts: Any = Ten((T,), dtype, fill="values", values=tv)
    backward = g.p(0.4) or bool(method_forced)
    y0 = Ten((B, d), dtype, seed=g.seed(), requires_grad=backward)
    a: Dict[str, Any] = {"fn": Code(f"fde.{fn}"), "sde": Code("sde"), "y0": y0, "ts": ts, "backward": backward,
                         "bm": Code("bm"), "dt": dt}
    if method is not None:
        a["method"] = method
    adaptive = g.p(0.12)
    if adaptive:
        a.update(adaptive=True, rtol=1e-2, atol=1e-2, dt_min=1e-3)
    logqp = g.p(0.1) and kind != "products"
    if logqp:
        a["logqp"] = True
    extra = g.p(0.1)
    if extra:
        a["extra"] = True
    if method == "milstein" and g.p(0.5) and not adjoint:
        a["options"] = {"grad_free": True}
    adj_method = None
    if adjoint and g.p(0.3):
        adj_method = g.choice(SDE_METHOD_NAMES + ["adjoint_reversible_heun"])
        a["adjoint_method"] = adj_method
    bm_mode = "explicit" if g.p(0.9) else "default"
    wide = g.p(0.3)
    bm_size: Tuple[int, ...] = (B, m)
    bm_dtype = dtype
    sde_expr = (f"SdeProducts({sde_type!r}, d={d}, m={m}, dtype=torch.{dtype}, seed={g.seed()})" if kind == "products"
                else f"Sde({noise!r}, {sde_type!r}, d={d}, m={m}, kind={kind!r}, dtype=torch.{dtype}, seed={g.seed()})")
    setup_extra: List[str] = []
    must: List[str] = []
    muts: List[str] = []
    bm_short = False
    for _ in range(g.choice([0, 0, 0, 1, 1, 2, 3])):
        name = g.choice(["type", "y0", "ts", "ts", "dt", "method", "bm", "bm", "tol", "options", "names", "kind"]
                        + (["adjoint"] * 3 if adjoint else []))
        if name == "type":
            attr, bad = g.choice([("noise_type", "bogus"), ("sde_type", "bogus"), ("noise_type", "Diagonal"),
                                  ("sde_type", None)])
            setup_extra.append(f"sde.{attr} = {bad!r}")
            must.append(f"sde.{attr}={bad!r}")
            m_ = f"sde.{attr} = {bad!r}"
        elif name == "y0":
            if g.p(0.3):
                new = g.choice([(d,), (B, d, 1), (), (1, B, d)])
                a["y0"] = replace(a["y0"], shape=new)
                m_ = f"y0 shape {new}"
            else:
                a["y0"], m_ = g.mutate_tensor(a["y0"], "")
        elif name == "ts":
            how = g.choice(["tensor", "tensor", "list", "grad", "huge"])
            if how == "tensor" and isinstance(a["ts"], Ten):
                a["ts"], m_ = g.mutate_tensor(a["ts"], "grid")
            elif how == "list":
                vals = list(a["ts"].numbers() or tv) if isinstance(a["ts"], Ten) else list(a["ts"])
                a["ts"] = g.choice([vals, vals[:1], [], vals[::-1], [vals[0], vals[0]] + vals[1:]])
                m_ = f"ts = {lit(a['ts'])}"
            elif how == "huge":  # a span that overflows (t1 - t0 = inf) or needs too many steps
                lo = g.choice([-1.7e308, -1e300, 0.0])
                a["ts"] = Ten((2,), "float64", fill="values", values=[lo, 1.7e308])
                m_ = f"ts = [{lo:g}, 1.7e308]"
            elif isinstance(a["ts"], Ten):
                a["ts"] = replace(a["ts"], requires_grad=True)
                m_ = "ts requires grad"
            else:
                continue
        elif name == "dt":
            a["dt"] = g.choice([0.0, -0.1, math.nan, math.inf, 1e-9, 1e300, "x", Code("torch.tensor(0.1)"),
                                Code("torch.tensor(0.1, requires_grad=True)"), Code("None")]
                               + ["0.1", 1e-300, 5e-324])
            m_ = f"dt={lit(a['dt'])}"
        elif name == "method":
            a["method"] = g.choice(["rk4", "SRK", 5, "adjoint_reversible_heun", ""] + SDE_METHOD_NAMES * 2)
            m_ = f"method={lit(a['method'])}"
        elif name == "bm":
            how = g.choice(["batch", "channels", "1d", "3d", "levy", "short", "not_bm", "default", "float32"])
            if how == "batch":
                bm_size = (B + 1, m)
            elif how == "channels":
                bm_size = (B, m + 1)
            elif how == "1d":
                bm_size = (B * m,)
            elif how == "3d":
                bm_size = (B, m, 1)
            elif how == "levy":
                levy = g.choice(_ANY_LEVY)
            elif how == "short":
                bm_short = True
            elif how == "not_bm":
                a["bm"] = Code(g.choice(["3", "'bm'", "torch.zeros(2, 2)"]))
            elif how == "float32":
                bm_dtype = "float32" if dtype == "float64" else "float64"
            else:
                bm_mode = "default"
            m_ = f"bm {how}"
        elif name == "tol":
            k = g.choice(["rtol", "atol", "dt_min"])
            a[k] = g.choice([math.nan, math.inf, -1.0, 0.0, "x"])
            if g.p(0.5):
                a["adaptive"] = True
                a.setdefault("dt_min", 1e-3)
            m_ = f"{k}={lit(a[k])}"
        elif name == "options":
            a["options"] = g.choice([{"bogus": 1}, {"grad_free": True}, Code("[('grad_free', True)]")])
            m_ = f"options={lit(a['options'])}"
        elif name == "names":
            a["names"] = g.choice([{"drfit": "f"}, {"drift": "f", "diffusion": "g"}, Code("['drift']")])
            m_ = f"names={lit(a['names'])}"
        elif name == "kind":
            if kind != "lin":
                continue
            kind = g.choice(["nan", "raises", "wrong_g", "products", "not_module"])
            if kind == "products":
                sde_expr = f"SdeProducts({sde_type!r}, d={d}, m={m}, dtype=torch.{dtype}, seed={g.seed()})"
                if noise != "general":
                    setup_extra.insert(0, f"sde.noise_type = {noise!r}")
            elif kind == "not_module":
                setup_extra.append("sde = types.SimpleNamespace(noise_type=sde.noise_type, sde_type=sde.sde_type, "
                                   "f=sde.f, g=sde.g, h=sde.h)")
            else:
                sde_expr = re.sub(r"kind='\w+'", f"kind={kind!r}", sde_expr)
            m_ = f"sde kind {kind}"
        else:  # adjoint-only arguments
            k, v = g.choice([("adjoint_method", "bogus"), ("adjoint_method", g.choice(SDE_METHOD_NAMES)),
                             ("adjoint_method", "adjoint_reversible_heun"), ("adjoint_params", ()),
                             ("adjoint_params", [1.0]), ("adjoint_params", Code("list(sde.parameters())[:1]")),
                             ("adjoint_options", {"bogus": 1}), ("adjoint_options", {"grad_free": True}),
                             ("adjoint_adaptive", True)])
            a[k] = v
            if k == "adjoint_method":
                adj_method = v
            if k == "adjoint_adaptive":  # (the default adjoint tolerances take ~10**4 steps: slow, not wrong)
                a.update(adjoint_rtol=1e-2, adjoint_atol=1e-2, dt_min=1e-3)
            m_ = f"{k}={lit(v)}"
        muts.append(f"{name}: {m_}")

    ts_spec = a["ts"]
    if isinstance(ts_spec, list):  # a variable the checks can refer to
        setup_extra.append(f"ts = {lit(ts_spec)}")
        a["ts"] = Code("ts")
    # The Brownian motion: on ts's span (wider: a margin), or shorter than ts (a query falls outside it).
    tvals = ts_spec.numbers() if isinstance(ts_spec, Ten) else ts_spec
    finite = [float(v) for v in (tvals or []) if isinstance(v, float) and math.isfinite(v)]
    lo_t, hi_t = (min(finite), max(finite)) if len(finite) >= 2 and min(finite) < max(finite) else (tv[0], tv[-1])
    if wide:
        lo_t, hi_t = lo_t - 0.5, hi_t + 0.5
    if bm_short:
        hi_t = lo_t + (hi_t - lo_t) / 2
    if not math.isfinite(hi_t - lo_t) or math.sqrt(hi_t - lo_t) * 40 > torch.finfo(getattr(torch, bm_dtype)).max:
        hi_t = lo_t + 1.0  # a span no Brownian motion of that dtype can hold (the huge-ts calls must raise anyway)
    bm_kw = f"dict(t0={lit(lo_t)}, t1={lit(hi_t)}, size={bm_size!r}, dtype=torch.{bm_dtype}, entropy={g.seed()}, " \
            f"levy_area_approximation={levy!r})"
    setup = [f"sde = {sde_expr}"] + setup_extra + [f"bm_kw = {bm_kw}", "bm = fde.BrownianInterval(**bm_kw)"]
    if bm_mode == "default":
        a.pop("bm", None)
        muts.append("bm: default")
    call = Call(target=fn, callee="sde_call", args=a, positional=4, setup=setup, level="sde", muts=muts)

    # What the contract forbids.
    st_ok = not any(x.startswith("sde.sde_type") for x in must)
    nt_ok = not any(x.startswith("sde.noise_type") for x in must)
    y = a["y0"]
    if st_ok and nt_ok:
        if len(y.shape) != 2:
            must.append(f"y0 must be 2-D, got shape {y.shape}")
        elif not y.dtype.startswith(("float", "bfloat")):
            must.append(f"y0 dtype {y.dtype}")
    if not must:
        for k in ("dt", "rtol", "atol", "dt_min"):
            v = a.get(k)
            if isinstance(v, str):
                must.append(f"{k}={v!r} is not a number")
            elif isinstance(v, Code) and v.text == "None":
                must.append(f"{k}=None")
            elif isinstance(v, Code) and "requires_grad" in v.text:
                must.append(f"{k} requires grad")
            elif isinstance(v, float) and not math.isfinite(v):
                must.append(f"{k}={lit(v)} not finite")
        dtv = a["dt"]
        if isinstance(dtv, float) and math.isfinite(dtv) and dtv <= 0:
            must.append(f"dt={dtv} <= 0")
        if a.get("adaptive") and isinstance(a.get("dt_min"), float) and a["dt_min"] <= 0:
            must.append(f"dt_min={a['dt_min']} <= 0 with adaptive=True")
        opts = a.get("options")
        if isinstance(opts, Code):
            must.append("options is not a dict")
        elif isinstance(opts, dict) and set(opts) - {"grad_free"}:
            must.append("unknown options key")
        nm = a.get("names")
        if isinstance(nm, Code):
            must.append("names is not a dict")
        elif isinstance(nm, dict) and set(nm) - {"drift", "diffusion", "prior_drift", "diffusion_prod",
                                                   "drift_and_diffusion", "drift_and_diffusion_prod"}:
            must.append("unknown names key")
    if adjoint and not must:
        ap = a.get("adjoint_params")
        if kind == "not_module" and "adjoint_params" not in a:
            must.append("sdeint_adjoint: sde is not an nn.Module and adjoint_params is not given")
        if isinstance(ap, list) and any(isinstance(x, float) for x in ap):
            must.append("adjoint_params holds a float")
        ao = a.get("adjoint_options")
        if isinstance(ao, dict) and set(ao) - {"grad_free"}:
            must.append("unknown adjoint_options key")
    if not must and kind == "products" and logqp:
        must.append("logqp needs g and h")
    meth = a.get("method", None)
    if not must and not (meth is None or isinstance(meth, str)):
        must.append(f"method={lit(meth)} is not a string")
    eff = meth if meth is not None else _sde_default_method(sde_type, noise)
    ts_bad = [] if must else _sde_ts_must_raise(ts_spec)
    must += ts_bad
    default_bm = "bm" not in a
    bm_code = a.get("bm")
    not_bm = isinstance(bm_code, Code) and bm_code.text != "bm"
    if not must and isinstance(eff, str) and (eff, sde_type) not in SDE_METHODS:
        must.append(f"method={eff!r} " + ("is not for " + sde_type if eff in SDE_METHOD_NAMES else "is unknown"))
    y_ok = len(y.shape) == 2 and y.dtype.startswith(("float", "bfloat")) and y.device == "cpu"
    y_same = y_ok and tuple(y.shape) == (B, d) and y.dtype == dtype
    if not must and not_bm:
        must.append("bm is not a Brownian motion")
    n_early = len(must)  # what prepare() checks before it calls the sde's f and g (_check_shapes)
    if not must and y_same and kind in ("lin", "free", "nan", "wrong_g", "products", "not_module"):
        if kind == "wrong_g":
            must.append("the diffusion's state size is not y0's")
        if not default_bm and tuple(bm_size) != (B, m):
            must.append(f"bm of shape {bm_size}, the SDE's (batch, noise channels) are {(B, m)}")
        if kind == "products" and default_bm:
            must.append("g_prod only and no bm: the number of Brownian channels is unknown")
    if not must and isinstance(eff, str):
        bm_levy = levy if not default_bm else None
        if bm_levy is not None:
            must += _sde_method_must_raise(eff, sde_type, noise, bm_levy)
        else:
            must += [x for x in _sde_method_must_raise(eff, sde_type, noise, "davie") if "levy" not in x]
    if not must and kind == "products" and eff in NEEDS_G and y_same:
        must.append(f"method={eff!r} needs g, the sde has only g_prod")
    if adjoint and not must and isinstance(eff, str):
        am = a.get("adjoint_method")
        if isinstance(am, str) and am == "adjoint_reversible_heun" and eff != "reversible_heun":
            must.append("adjoint_reversible_heun without method='reversible_heun'")
        elif backward and y_same and kind in ("lin", "free", "nan"):
            lv = levy if not default_bm else {"srk": "space-time", "log_ode": "davie"}.get(eff, "none")
            must += _sde_adjoint_must_raise(am, eff, sde_type, noise, lv)
            if a.get("adjoint_options", {}).get("grad_free") and (am or ("milstein" if noise == "diagonal" and
                                                                         sde_type == "ito" else "")) == "milstein":
                must.append("adjoint_options grad_free with adjoint milstein")
    if not must and not default_bm and bm_short and not ts_bad:
        must.append("ts reaches past the end of bm")
    if not must and isinstance(ts_spec, Ten) and ts_spec.numbers() and not ts_bad and isinstance(a["dt"], float) \
            and a["dt"] > 0 and math.isfinite(a["dt"]) and not a.get("adaptive"):
        vals = ts_spec.numbers()
        span_ = vals[-1] - vals[0]
        if not math.isfinite(span_) or span_ / a["dt"] > 1e7:
            must.append(f"dt={a['dt']} makes more than 10**7 steps over [{vals[0]}, {vals[-1]}]")
    if kind == "raises":  # the sde's own error comes first
        must = must[:n_early]
    if kind == "products":  # g_prod is called with an increment of bm's shape before the consistency checks
        must = [x for x in must if not x.startswith("bm")]
    call.must_raise = must

    # Oracles of a valid call.
    plain = not must and not muts and kind in ("lin", "free")
    out_kw = {k: v for k, v in a.items() if k in ("method", "dt", "adaptive", "rtol", "atol", "dt_min", "logqp",
                                                   "extra", "options")}
    call.checks = [("wrong-output-shape", f"sde_shapes_ok(RESULT, y0, ts, logqp={bool(a.get('logqp'))}, "
                                          f"extra={bool(a.get('extra'))})")]
    if default_bm:
        call.observe = "shape_of(RESULT['ys'])"  # the default motion draws a fresh entropy: only shapes repeat
    if plain:
        call.checks.append(("returned-nonfinite", "sde_finite_ok(RESULT, y0)"))
        kw_text = ", ".join(f"{k}={lit(v)}" for k, v in out_kw.items())
        if not default_bm:
            twin = "fde.sdeint" if adjoint else "fde.sdeint_adjoint"
            call.checks.append((f"{fn}-differs-from-{twin[4:]}",
                                f"sde_twin_ok(RESULT, {twin}, sde, y0, ts, bm_kw, {kw_text})"))
            if g.p(0.5):
                call.checks.append(("grid-sampler-differs-from-queries",
                                    f"sde_plain_bm_ok(RESULT, fde.{fn}, sde, y0, ts, bm_kw, {kw_text})"))
            if kind == "free" and not a.get("logqp"):
                call.checks.append(("drift-free-differs-from-exact", "sde_free_exact_ok(RESULT, sde, y0, ts, bm)"))
            on_grid = all(abs((x - tv[0]) / dt - round((x - tv[0]) / dt)) < 1e-9 for x in tv)
            if adjoint and backward and eff == "reversible_heun" and on_grid and not a.get("adaptive") \
                    and a.get("adjoint_method") in (None, "adjoint_reversible_heun") and not a.get("logqp"):
                tol = 1e-8 if dtype == "float64" else 1e-3
                call.checks.append(("adjoint-gradient-differs-from-direct",
                                    f"sde_grads_agree(RESULT, sde, y0, ts, bm_kw, {tol}, {kw_text})"))
    return call


BM_LEVY = ["none", "space-time", "davie", "foster"]


def brownian_call_spec(g: Gen, cls: str) -> Call:
    """fastdiffeq.BrownianInterval / BrownianPath / BrownianTree(**kwargs), then bm(ta, tb, return_U=, return_A=) for a
    few queries, through helpers.brownian_call."""
    dtype = g.choice(["float64", "float64", "float32"])
    size = g.choice([(2,), (2, 3), (1, 1), (3,), (2, 2, 2), ()])
    t0 = g.choice([0.0, 0.0, -1.0, 2.5])
    span = g.choice([1.0, 1.0, 0.5, 3.0]) if cls != "BrownianPath" else 1.0
    t1 = t0 + span
    entropy = g.seed()
    kw: Dict[str, Any] = {}
    levy = "none"
    if cls == "BrownianInterval":
        levy = g.choice(BM_LEVY)
        kw = {"t0": t0, "t1": t1, "size": size, "dtype": Code(f"torch.{dtype}"), "entropy": entropy,
              "levy_area_approximation": levy}
        if g.p(0.3):
            kw["cache_size"] = g.choice([0, 3, 48, None])
        if g.p(0.2):
            kw["halfway_tree"], kw["tol"] = True, g.choice([1e-6, 1e-3])
        elif g.p(0.2):
            kw["dt"] = g.choice([0.01, 0.1])
        if g.p(0.1):
            kw["W"] = Ten(size, dtype, seed=g.seed())
    elif cls == "BrownianPath":
        kw = {"t0": t0, "w0": Ten(size, dtype, seed=g.seed())}
    else:
        kw = {"t0": t0, "w0": Ten(size, dtype, seed=g.seed()), "t1": t1, "entropy": entropy,
              "tol": g.choice([1e-6, 1e-6, 1e-4])}
        if g.p(0.3):
            kw["w1"] = Ten(size, dtype, seed=g.seed())
    want_u = levy != "none"
    want_a = levy in ("davie", "foster")

    def point() -> float:
        return round(t0 + span * g.r.random(), 6)

    queries: List[tuple] = []
    for _ in range(g.choice([2, 3, 4, 6])):
        x, y = sorted((point(), point()))
        if g.p(0.15):
            x, y = t0, t1
        queries.append((x, y, want_u and g.p(0.5), want_a and g.p(0.5)))
    if cls != "BrownianInterval" and g.p(0.5):
        queries.append((point(), False, False))  # bm(t): the value at t
    must: List[str] = []
    muts: List[str] = []
    for _ in range(g.choice([0, 0, 0, 1, 1, 2])):
        what = g.choice(["t0", "t1", "size", "dtype", "entropy", "dt", "tol", "cache", "levy", "W", "query", "query",
                         "query", "return", "w0"])
        if what in ("t0", "t1") and what in kw:
            v = g.choice([math.nan, math.inf, -math.inf, Code("torch.tensor([0.0, 1.0])"), "0", True,
                          Code("torch.tensor(0.25)"), t1 + 1.0 if what == "t0" else t0 - 1.0])
            kw[what] = v
            m_ = f"{what}={lit(v)}"
        elif what == "size" and "size" in kw:
            kw["size"] = g.choice([(-1,), (2.5,), "3", Code("torch.tensor([2])"), 3, None])
            m_ = f"size={lit(kw['size'])}"
        elif what == "dtype" and "dtype" in kw:
            kw["dtype"] = Code(g.choice(["torch.int64", "'float64'", "torch.bool", "torch.float16", "torch.bfloat16"]))
            m_ = f"dtype={kw['dtype'].text}"
        elif what == "entropy" and "entropy" in kw:
            kw["entropy"] = g.choice([-1, 1.5, True, "7", 2**70, 0])
            m_ = f"entropy={lit(kw['entropy'])}"
        elif what == "dt" and cls == "BrownianInterval":
            kw["dt"] = g.choice([0.0, -0.1, math.nan, 1e-300, 1e300])
            m_ = f"dt={lit(kw['dt'])}"
        elif what == "tol" and cls != "BrownianPath":
            kw["tol"] = g.choice([-1.0, 0.0, math.nan, 10.0, 0.5])
            m_ = f"tol={lit(kw['tol'])}"
        elif what == "cache" and cls == "BrownianInterval":
            kw["cache_size"] = g.choice([-1, 1.5, True, 0, 1])
            m_ = f"cache_size={lit(kw['cache_size'])}"
        elif what == "levy" and cls == "BrownianInterval":
            kw["levy_area_approximation"] = g.choice(["bogus", "Davie", None, "none", "foster"])
            m_ = f"levy_area_approximation={lit(kw['levy_area_approximation'])}"
        elif what == "W" and cls == "BrownianInterval":
            kw["W"], m_ = g.mutate_tensor(kw.get("W", Ten(size, dtype, seed=1)))
            if kw["W"].device == "meta" or "on meta" in m_:
                kw["W"] = replace(kw["W"], device="cpu")
                m_ = "unchanged"
        elif what == "w0" and "w0" in kw:
            kw["w0"], m_ = g.mutate_tensor(kw["w0"])
            if "on meta" in m_:
                kw["w0"] = replace(kw["w0"], device="cpu")
        elif what == "query":
            j = g.randint(0, len(queries) - 1)
            q = list(queries[j])
            how = g.choice(["before", "after", "reversed", "nan", "inf", "tensor2", "tiny_outside", "string", "equal"])
            if how == "before":
                q[0] = t0 - g.choice([0.5, 1e-3])
            elif how == "after":
                q[1 if len(q) == 4 else 0] = t1 + g.choice([0.5, 1e-3])
            elif how == "reversed" and len(q) == 4:
                q[0], q[1] = q[1] + 0.1, q[0]
            elif how == "nan":
                q[0] = math.nan
            elif how == "inf":
                q[0] = -math.inf
            elif how == "tensor2":
                q[0] = Code("torch.tensor([0.1, 0.2])")
            elif how == "tiny_outside":  # within rounding slack of the end: taken as the end
                q[1 if len(q) == 4 else 0] = t1 + 1e-15 * max(1.0, abs(t1))
            elif how == "string":
                q[0] = "0.5"
            else:
                q[1 if len(q) == 4 else 0] = q[0]
            queries[j] = tuple(q)
            m_ = f"query {j} {how}: {lit(tuple(q))}"
        elif what == "return":
            j = g.randint(0, len(queries) - 1)
            q = list(queries[j])
            q[-2], q[-1] = g.choice([(True, False), (False, True), (True, True), (1, 0)])
            queries[j] = tuple(q)
            m_ = f"query {j} return_U={q[-2]}, return_A={q[-1]}"
        else:
            continue
        muts.append(m_)

    # The contract.
    def real(v: Any, name: str, finite: bool = True) -> Optional[float]:
        if isinstance(v, bool) or isinstance(v, str):
            must.append(f"{name}={v!r} is not a real number")
            return None
        if isinstance(v, Code):
            if "[" in v.text:
                must.append(f"{name} has two elements")
                return None
            return 0.25
        if v is None:
            return None
        if finite and not math.isfinite(v):
            must.append(f"{name}={lit(v)} not finite")
            return None
        return float(v)

    t0v = real(kw.get("t0"), "t0")
    t1v = real(kw.get("t1", (t0v if t0v is not None else t0) + 1.0), "t1") if cls != "BrownianPath" else None
    if cls == "BrownianPath" and t0v is not None:
        t1v = t0v + 1.0
    if t0v is not None and t1v is not None and t0v > t1v:
        must.append(f"t0={t0v} > t1={t1v}")
    halfway = cls == "BrownianTree" or kw.get("halfway_tree")
    tolv = kw.get("tol", 1e-6 if cls == "BrownianTree" else 0.0)
    if cls != "BrownianPath":
        tv_ = real(tolv, "tol")
        if tv_ is not None and (tv_ < 0 or (halfway and tv_ <= 0)):
            must.append(f"tol={tv_}")
    if "dt" in kw:
        dv = real(kw["dt"], "dt")
        if dv is not None and dv <= 0:
            must.append(f"dt={dv} <= 0")
        if halfway:
            must.append("dt with halfway_tree")
    sz = kw.get("size", size)
    if cls == "BrownianInterval":
        if sz is None and "W" not in kw:
            must.append("no size and no W")
        elif isinstance(sz, (str, Code)) or (isinstance(sz, tuple) and any(not isinstance(s, int) or s < 0 for s in sz)):
            must.append(f"size={lit(sz)}")
        dts = kw["dtype"].text
        if dts in ("torch.int64", "'float64'", "torch.bool"):
            must.append(f"dtype={dts}")
        e = kw["entropy"]
        if isinstance(e, (bool, str, float)) or (isinstance(e, int) and e < 0):
            must.append(f"entropy={lit(e)}")
        c = kw.get("cache_size", 45)
        if c is not None and (isinstance(c, (bool, float)) or c < 0):
            must.append(f"cache_size={lit(c)}")
        lv = kw["levy_area_approximation"]
        if lv not in BM_LEVY:
            must.append(f"levy_area_approximation={lit(lv)}")
        W = kw.get("W")
        if W is not None:
            if not W.dtype.startswith(("float", "bfloat")):
                must.append("W is not floating point")
            elif isinstance(sz, tuple) and tuple(W.shape) != sz:
                must.append(f"W shape {W.shape} != size {sz}")
            elif W.dtype != kw["dtype"].text.replace("torch.", ""):
                must.append("W dtype != dtype")
        want_u = lv in ("space-time", "davie", "foster")
        want_a = lv in ("davie", "foster")
        dts_ok = dts.replace("torch.", "") if dts.startswith("torch.") else dtype
    else:
        for k in ("w0", "w1"):
            w = kw.get(k)
            if w is not None and not w.dtype.startswith(("float", "bfloat")):
                must.append(f"{k} is not floating point")
        w0, w1 = kw.get("w0"), kw.get("w1")
        if w1 is not None and w0 is not None and (w1.shape != w0.shape or w1.dtype != w0.dtype):
            must.append("w1 does not match w0")
        want_u = want_a = False
        dts_ok = w0.dtype if w0 is not None else dtype
    lo_ = t0v if t0v is not None else t0
    hi_ = t1v if t1v is not None else t1
    for q in queries:
        times = list(q[:-2])
        vals = []
        for k, tq in enumerate(times):
            if tq is False:
                continue
            v = real(tq, "ta" if k == 0 else "tb") if not isinstance(tq, float) or math.isfinite(tq) else \
                real(tq, "ta" if k == 0 else "tb")
            if v is None:
                break
            slack = 64 * 2.22e-16 * max(abs(lo_), abs(hi_), hi_ - lo_)
            if v < lo_ - slack or v > hi_ + slack:
                must.append(f"query time {v} outside [{lo_}, {hi_}]")
                break
            vals.append(v)
        else:
            if len(vals) == 2 and vals[0] > vals[1]:
                must.append(f"query ta={vals[0]} > tb={vals[1]}")
        if q[-2] and not want_u:
            must.append("return_U without Levy area")
        if q[-1] and not want_a:
            must.append("return_A without davie/foster")
    call = Call(target=cls, callee="brownian_call", args={"cls": Code(f"fde.{cls}"), "kwargs": kw,
                                                           "queries": Code("queries")}, positional=3, level="sde",
                setup=[f"queries = {lit(queries)}"], muts=muts)
    call.must_raise = must
    call.observe = "RESULT['out']"
    call.checks = [("wrong-output-shape", "bm_shapes_ok(RESULT, queries)")]
    plain = not must and dts_ok in ("float64", "float32") and not any(
        isinstance(t, Ten) and (t.specials or t.fill != "randn") for t in kw.values())
    if cls == "BrownianPath":  # no entropy argument: a fresh path per construction (as torchsde)
        call.observe = "shape_of(RESULT['out'])"
    if plain:
        s_, u_ = t0 + 0.1 * span, t0 + 0.9 * span  # (times on a 1e-3 grid: a halfway tree rounds them to tol)
        t_ = round(t0 + span * g.uniform(0.15, 0.85), 3)
        call.checks += [
            ("brownian-not-additive", f"bm_additive_ok(RESULT['bm'], {s_!r}, {t_!r}, {u_!r})"),
            ("brownian-query-not-repeatable", "bm_repeat_ok(RESULT['bm'], queries)"),
            ("levy-area-not-antisymmetric", "bm_levy_antisymmetric_ok(RESULT, queries)"),
        ]
        if cls != "BrownianPath" and isinstance(kw.get("entropy"), int) and real(tolv, "tol") < 1e-2:
            call.checks.append(("entropy-ignored", f"bm_entropy_matters_ok(fde.{cls}, kwargs, RESULT)"))
        if cls == "BrownianInterval" and not kw.get("halfway_tree") and kw.get("cache_size", 45) in (None, 48):
            call.checks.append(("values-change-after-cache-eviction", f"bm_cache_ok(fde.{cls}, kwargs, queries, RESULT)"))
        if halfway:
            call.checks.append(("halfway-tree-depends-on-query-order",
                                f"bm_order_free_ok(fde.{cls}, kwargs, queries, RESULT)"))
        if cls != "BrownianInterval":
            call.checks.append(("wrong-start-or-end-value", "bm_start_ok(RESULT, kwargs['w0'], kwargs.get('w1'))"))
    return call


def native_mlp_call(g: Gen) -> Call:
    """_C.NativeMLP(weights, biases, activation), then mlp(t, y) and mlp.vjp(y, v), through helpers.mlp_call, against
    the same MLP computed in torch (and torch.autograd for the VJP)."""
    dtype = g.choice(["float64", "float64", "float32"])
    D = g.choice([1, 2, 3, 5])
    widths = [D] + [g.choice([1, 4, 8]) for _ in range(g.choice([0, 1, 2]))] + [D]
    ws = [Ten((o, i), dtype, seed=g.seed()) for i, o in zip(widths[:-1], widths[1:])]
    bs = [Ten((o,), dtype, seed=g.seed()) for o in widths[1:]]
    act = g.choice(["tanh", "softplus", "relu", "elu", "sigmoid", "silu"])
    yshape = g.choice([(4, D), (D,), (2, 3, D), (1, D), (0, D)])
    with_v = g.p(0.6)
    a: Dict[str, Any] = {"weights": ws, "biases": bs, "activation": act, "y": Ten(yshape, dtype, seed=g.seed())}
    if with_v:
        a["v"] = Ten(yshape, dtype, seed=g.seed())
    must: List[str] = []
    muts: List[str] = []
    for _ in range(g.choice([0, 0, 1, 1, 2])):
        what = g.choice(["activation", "weights", "weights", "biases", "y", "y", "v", "layers", "t"])
        if what == "activation":
            a["activation"] = g.choice(["gelu", "", "TANH", "relu "])
            m_ = f"activation={a['activation']!r}"
        elif what in ("weights", "biases"):
            if not isinstance(a[what], list) or not a[what]:
                continue
            j = g.randint(0, len(a[what]) - 1)
            how = g.choice(["tensor", "tensor", "transpose", "1d", "zero", "int", "grad"])
            t = a[what][j]
            if how == "tensor":
                new, m_ = g.mutate_tensor(t, "")
            elif how == "transpose" and len(t.shape) == 2:
                new, m_ = replace(t, shape=(t.shape[1], t.shape[0])), "transposed shape"
            elif how == "1d":
                new, m_ = replace(t, shape=(math.prod(t.shape),)), "flattened"
            elif how == "zero":
                new, m_ = replace(t, shape=tuple(0 for _ in t.shape)), "zero-size"
            elif how == "int":
                new, m_ = replace(t, dtype="int64"), "int64"
            else:
                new, m_ = replace(t, requires_grad=True), "requires grad"
            a[what] = a[what][:j] + [new] + a[what][j + 1:]
            m_ = f"{what}[{j}] {m_}"
        elif what == "layers":
            how = g.choice(["no_layers", "extra_bias", "not_list", "none"])
            if how == "no_layers":
                a["weights"], a["biases"] = [], []
            elif how == "extra_bias":
                a["biases"] = a["biases"] + [Ten((D,), dtype, seed=1)]
            elif how == "not_list":
                a["weights"] = a["weights"][0]
            else:
                a["biases"] = Code("None")
            m_ = f"layers {how}"
        elif what == "y":
            a["y"], m_ = g.mutate_tensor(a["y"], "")
            m_ = "y " + m_
        elif what == "v" and with_v:
            a["v"], m_ = g.mutate_tensor(a["v"], "")
            m_ = "v " + m_
        elif what == "t":
            a["t"] = g.choice([Code("torch.tensor(float('nan'))"), Code("torch.zeros(3)"), Code("None")])
            m_ = f"t={a['t'].text}"
        else:
            continue
        muts.append(m_)
    # The contract (check_mlp_spec, eval's feature and dtype checks, vjp's shape check).
    W, Bs = a["weights"], a["biases"]
    floats = ("float32", "float64", "float16", "bfloat16")
    if not isinstance(W, list) or not isinstance(Bs, list):
        must.append("weights and biases must be lists of tensors")
    elif not W:
        must.append("no layers")
    elif len(W) != len(Bs):
        must.append("one bias per weight")
    else:
        for k, (w, b) in enumerate(zip(W, Bs)):
            if len(w.shape) != 2 or 0 in w.shape:
                must.append(f"weight {k} shape {w.shape}")
            elif len(b.shape) != 1 or b.shape[0] != w.shape[0]:
                must.append(f"bias {k} shape {b.shape}")
            elif k and w.shape[1] != W[k - 1].shape[0]:
                must.append(f"weight {k} does not chain")
        dts = {t.dtype for t in W + Bs}
        devs = {t.device for t in W + Bs}
        if len(dts) > 1:
            must.append("parameters of several dtypes")
        if len(devs) > 1:
            must.append("parameters on several devices")
    if a["activation"] not in ("tanh", "softplus", "relu", "elu", "sigmoid", "silu"):
        must.append(f"activation={a['activation']!r}")
    y = a["y"]
    if not must:
        w0 = W[0]
        if math.prod(y.shape) % w0.shape[1] != 0 or not y.shape or y.shape[-1] != w0.shape[1]:
            if math.prod(y.shape) % w0.shape[1] != 0:
                must.append(f"y of shape {y.shape} for {w0.shape[1]} features")
        if y.dtype != w0.dtype:
            must.append(f"y dtype {y.dtype}, parameters {w0.dtype}")
        if y.device != w0.device:
            must.append("y and the parameters on different devices")
        if with_v and not must and tuple(a["v"].shape) != tuple(y.shape):
            must.append(f"v shape {a['v'].shape} != y shape {y.shape}")
        if with_v and not must and (a["v"].dtype != y.dtype or a["v"].device != y.device):
            must.append(f"v ({a['v'].dtype}, {a['v'].device}) is not like y ({y.dtype}, {y.device})")
    call = Call(target="NativeMLP", callee="mlp_call", args=a, positional=4, level="C", muts=muts)
    call.must_raise = must
    all_ten = ([] if not isinstance(W, list) else W) + ([] if not isinstance(Bs, list) else Bs) + [y] + \
        ([a["v"]] if with_v else [])
    float_ok = all(t.dtype in floats for t in all_ten) and all(t.device == "cpu" for t in all_ten)
    if not must and float_ok and dtype_ok(all_ten) and "t" not in a and not any(t.specials for t in all_ten):
        v_arg = ", v" if with_v else ""
        call.checks = [("native-mlp-differs-from-torch", f"mlp_ok(RESULT, weights, biases, {a['activation']!r}, y{v_arg})")]
        call.checks.append(("wrong-output-shape", "tuple(RESULT['f'].shape) == tuple(y.shape)"))
    return call


CNF_LISTS = ("weights", "biases", "gate_weights", "gate_biases", "time_weights")


def native_cnf_call(g: Gen) -> Call:
    """_C.NativeCNF(weights, biases, gate_weights, gate_biases, time_weights, sqrt_T, train_T=, activation=,
    trace=, noise=, with_logp=, kinetic=, jacobian=), then field(s, y) and field.vjp(s, y, v), through
    helpers.cnf_call, against the same augmented field written in torch from the formulas (helpers.cnf_reference)
    and torch.autograd for the VJP."""
    dtype = g.choice(["float64", "float64", "float32"])
    D = g.randint(1, 4)
    # (17 and 20: hidden widths past the narrow loops' limit, core::kNarrowWidth = 16, so that BLAS runs too)
    widths = [D] + [g.choice([1, 3, 8, 17, 20]) for _ in range(g.choice([0, 1, 2]))] + [D]
    shapes = [(o, i) for i, o in zip(widths[:-1], widths[1:])]
    a: Dict[str, Any] = {"weights": [Ten(sh, dtype, seed=g.seed()) for sh in shapes]}
    for name in CNF_LISTS[1:]:
        a[name] = [Ten((o,), dtype, seed=g.seed()) for o, _ in shapes]
    a["sqrt_T"] = Ten((), dtype, fill="full", value=g.choice([0.5, 0.8, 1.0, 1.3, -0.9]))
    N = g.choice([1, 2, 3, 5])
    trace = g.choice(["exact", "hutchinson"])
    with_logp = g.p(0.8)
    kinetic, jacobian = g.p(0.5), g.p(0.5)
    width = D + ((1 + kinetic + jacobian) if with_logp else 0)
    yshape = g.choice([(N, width), (N, width), (1, N * width)])
    a["s"] = Ten(g.choice([(), (1,)]), g.choice([dtype, "float64"]), fill="full", value=g.uniform(-1.0, 1.5))
    a["y"] = Ten(yshape, dtype, seed=g.seed())
    with_v = g.p(0.6)
    if with_v:
        a["v"] = Ten(yshape, dtype, seed=g.seed())
    a["train_T"] = g.p(0.5)
    a["activation"] = g.choice(["tanh", "softplus", "relu", "elu", "sigmoid", "silu"])
    a["trace"] = trace
    # Hutchinson's noise (the draw of one solve): needed with the log-density; an exact field ignores one.
    a["noise"] = Ten((N, D), dtype, seed=g.seed()) if trace == "hutchinson" or g.p(0.2) else Code("None")
    a["with_logp"], a["kinetic"], a["jacobian"] = with_logp, kinetic, jacobian
    # As in a training step: y and every parameter a leaf requiring grad, so that field(s, y) records the
    # autograd Function (its backward is the same hand-written product as vjp).
    graph = with_v and g.p(0.3)
    if graph:
        for name in CNF_LISTS:
            a[name] = [replace(t, requires_grad=True) for t in a[name]]
        a["y"] = replace(a["y"], requires_grad=True)
        if a["train_T"]:
            a["sqrt_T"] = replace(a["sqrt_T"], requires_grad=True)
    muts: List[str] = []
    for _ in range(g.choice([0, 0, 1, 1, 2])):
        what = g.choice(["activation", "trace", "list", "list", "list", "layers", "sqrt_T", "noise", "y", "y", "v",
                         "s", "flags"])
        if what == "activation":
            a["activation"] = g.choice(["gelu", "", "TANH", "relu ", "identity"])
            m_ = f"activation={a['activation']!r}"
        elif what == "trace":
            a["trace"] = g.choice(["Exact", "", "hutch", "skilling", "exact "])
            m_ = f"trace={a['trace']!r}"
        elif what == "list":
            name = g.choice(CNF_LISTS)
            lst = a[name]
            if not isinstance(lst, list) or not lst:
                continue
            j = g.randint(0, len(lst) - 1)
            t = lst[j]
            if not isinstance(t, Ten):
                continue
            how = g.choice(["tensor", "tensor", "transpose", "1d", "2d", "grow", "zero", "int", "grad", "nan",
                            "sparse"])
            if how == "tensor":
                new, m_ = g.mutate_tensor(t, "")
            elif how == "transpose" and len(t.shape) == 2:
                new, m_ = replace(t, shape=(t.shape[1], t.shape[0])), "transposed shape"
            elif how == "1d":
                new, m_ = replace(t, shape=(math.prod(t.shape),)), "flattened"
            elif how == "2d":
                new, m_ = replace(t, shape=(1,) + tuple(t.shape)), "a leading 1"
            elif how == "grow" and t.shape:
                new, m_ = replace(t, shape=tuple(t.shape[:-1]) + (t.shape[-1] + 1,)), "last dim + 1"
            elif how == "zero":
                new, m_ = replace(t, shape=tuple(0 for _ in t.shape)), "zero-size"
            elif how == "int":
                new, m_ = replace(t, dtype=g.choice(["int64", "int32"]), fill="full", value=1), "int"
            elif how == "grad":
                new, m_ = replace(t, requires_grad=True), "requires grad"
            elif how == "nan":
                new, m_ = replace(t, specials=((g.randint(0, 7), g.choice([math.nan, math.inf])),)), "NaN/inf"
            elif how == "sparse":
                new, m_ = replace(t, layout="sparse", guard=False), "sparse"
            else:
                continue
            a[name] = lst[:j] + [new] + lst[j + 1:]
            m_ = f"{name}[{j}] {m_}"
        elif what == "layers":
            how = g.choice(["no_layers", "drop_last", "extra", "not_list", "none", "not_tensor", "not_chaining"])
            name = g.choice(CNF_LISTS)
            if how == "no_layers":
                for n_ in CNF_LISTS:
                    a[n_] = []
            elif how == "drop_last":
                a[name] = a[name][:-1]
            elif how == "extra":
                a[name] = a[name] + [Ten((D,), dtype, seed=1)]
            elif how == "not_list":
                a[name] = a[name][0]
            elif how == "none":
                a[name] = Code("None")
            elif how == "not_tensor":
                a[name] = a[name][:-1] + [Code("1.0")]
            elif len(shapes) > 1:  # layer 1 takes one more input than layer 0 gives
                o, i = shapes[1]
                a["weights"] = [a["weights"][0], Ten((o, i + 1), dtype, seed=2)] + a["weights"][2:]
            else:
                continue
            m_ = f"layers {how}" + ("" if how in ("no_layers", "not_chaining") else f" ({name})")
        elif what == "sqrt_T":
            how = g.choice(["shape", "dtype", "meta", "nan", "grad", "none", "float", "sparse"])
            if not isinstance(a["sqrt_T"], Ten):  # (already not a tensor)
                continue
            if how == "sparse":
                a["sqrt_T"] = replace(a["sqrt_T"], layout="sparse")
            elif how == "shape":
                a["sqrt_T"] = replace(a["sqrt_T"], shape=g.choice([(1,), (2,), (1, 1), (0,)]))
            elif how == "dtype":
                a["sqrt_T"] = replace(a["sqrt_T"], dtype=g.choice(["float32", "float64", "int64", "float16"]))
            elif how == "meta":
                a["sqrt_T"] = replace(a["sqrt_T"], device="meta")
            elif how == "nan":
                a["sqrt_T"] = replace(a["sqrt_T"], value=g.choice([math.nan, math.inf, 0.0]))
            elif how == "grad":
                a["sqrt_T"] = replace(a["sqrt_T"], requires_grad=True)
            else:
                a["sqrt_T"] = Code("None" if how == "none" else "0.7")
            m_ = f"sqrt_T {how}"
        elif what == "noise":
            how = g.choice(["missing", "rows", "cols", "1d", "dtype", "meta", "nan", "not_tensor", "sparse"])
            if how == "missing":
                a["noise"] = Code("None")
            elif how == "not_tensor":
                a["noise"] = Code("[1.0]")
            else:
                base = a["noise"] if isinstance(a["noise"], Ten) else Ten((N, D), dtype, seed=3)
                if how == "rows":
                    base = replace(base, shape=(N + g.choice([1, -1]), D))
                elif how == "cols":
                    base = replace(base, shape=(N, D + 1))
                elif how == "1d":
                    base = replace(base, shape=(N * D,))
                elif how == "dtype":
                    base = replace(base, dtype=g.choice([d for d in DTYPES if d != dtype]))
                elif how == "meta":
                    base = replace(base, device="meta")
                elif how == "sparse":
                    base = replace(base, layout="sparse")
                else:
                    base = replace(base, specials=((0, math.nan),))
                a["noise"] = base
            m_ = f"noise {how}"
        elif what == "y":
            how = g.choice(["tensor", "tensor", "width", "grad", "empty", "sparse"])
            if how == "tensor":
                a["y"], m_ = g.mutate_tensor(a["y"], "")
            elif how == "width":
                a["y"] = replace(a["y"], shape=(N, width + g.choice([1, -1])))
                m_ = f"width {a['y'].shape}"
            elif how == "grad":
                a["y"], m_ = replace(a["y"], requires_grad=True), "requires grad"
            elif how == "sparse":
                a["y"], m_ = replace(a["y"], layout="sparse"), "sparse"
            else:
                a["y"], m_ = replace(a["y"], shape=(0, width)), "no samples"
            m_ = "y " + m_
        elif what == "v" and with_v:
            if g.p(0.2):
                a["v"], m_ = replace(a["v"], layout="sparse"), "sparse"
            else:
                a["v"], m_ = g.mutate_tensor(a["v"], "")
            m_ = "v " + m_
        elif what == "s":
            how = g.choice(["several", "empty", "nan", "int", "meta", "grad", "none", "float", "complex", "sparse"])
            if not isinstance(a["s"], Ten):
                continue
            if how == "several":
                a["s"] = replace(a["s"], shape=(g.choice([2, 3]),))
            elif how == "empty":
                a["s"] = replace(a["s"], shape=(0,))
            elif how == "nan":
                a["s"] = replace(a["s"], value=g.choice([math.nan, math.inf]))
            elif how == "int":
                a["s"] = replace(a["s"], dtype="int64", value=1)
            elif how == "complex":
                a["s"] = replace(a["s"], dtype="complex64")
            elif how == "sparse":
                a["s"] = replace(a["s"], layout="sparse")
            elif how == "meta":
                a["s"] = replace(a["s"], device="meta")
            elif how == "grad":
                a["s"] = replace(a["s"], requires_grad=True)
            else:
                a["s"] = Code("None" if how == "none" else "0.25")
            m_ = f"s {how}"
        elif what == "flags":
            flag = g.choice(["with_logp", "kinetic", "jacobian", "train_T"])
            a[flag] = not a[flag]
            m_ = f"{flag}={a[flag]} (the state not resized)"
        else:
            continue
        muts.append(m_)
    must = _cnf_must_raise(a, with_v)
    call = Call(target="NativeCNF", callee="cnf_call", args=a, positional=8, level="C", muts=muts)
    call.must_raise = must
    call.observe = "{k: v for k, v in RESULT.items() if k != 'h'}"
    tens = [t for n_ in CNF_LISTS if isinstance(a[n_], list) for t in a[n_]] + \
        [a[n_] for n_ in ("sqrt_T", "s", "y", "v", "noise") if n_ in a]
    plain = all(isinstance(t, Ten) and t.dtype in ("float32", "float64") and t.device == "cpu" and not t.specials
                and t.layout != "sparse"
                and not (t.fill == "full" and not math.isfinite(t.value)) for t in tens if not isinstance(t, Code))
    if not must and plain:
        v_arg = ", v" if with_v else ""
        flags = ", ".join(f"{k}={k}" for k in ("train_T", "activation", "trace", "noise", "with_logp", "kinetic",
                                               "jacobian"))
        lists = ", ".join(CNF_LISTS)
        call.checks = [("wrong-output-shape", "tuple(RESULT['f'].shape) == tuple(y.shape)"),
                       ("native-cnf-differs-from-torch",
                        f"cnf_ok(RESULT, {lists}, sqrt_T, s, y{v_arg}, {flags})")]
        if graph and not muts:
            call.checks.append(("native-cnf-autograd-differs-from-vjp", "cnf_autograd_ok(RESULT, y, v)"))
        for n_ in ("train_T", "activation", "trace", "with_logp", "kinetic", "jacobian"):
            call.setup.append(f"{n_} = {lit(a[n_])}")
        if isinstance(a["noise"], Code):
            call.setup.append("noise = None")
    return call


def _cnf_must_raise(a: Dict[str, Any], with_v: bool) -> List[str]:
    """The contract of _C.NativeCNF and its calls (check_cnf_spec, check_state, the binding's name checks)."""
    must: List[str] = []
    if a["activation"] not in ("tanh", "softplus", "relu", "elu", "sigmoid", "silu"):
        must.append(f"activation={a['activation']!r}")
    if a["trace"] not in ("exact", "hutchinson"):
        must.append(f"trace={a['trace']!r}")
    lists = [a[n] for n in CNF_LISTS]
    if not all(isinstance(x, list) and all(isinstance(t, Ten) for t in x) for x in lists):
        return must + ["weights, biases, gate and time vectors must be lists of tensors"]
    if not isinstance(a["sqrt_T"], Ten):
        return must + ["sqrt_T must be a tensor"]
    noise = a["noise"]
    if not (isinstance(noise, Ten) or (isinstance(noise, Code) and noise.text == "None")):
        return must + ["noise must be a tensor or None"]
    W = lists[0]
    L = len(W)
    if not L:
        return must + ["no layers"]
    if any(len(x) != L for x in lists):
        return must + ["one bias, gate weight, gate bias and time weight per layer"]
    sq = a["sqrt_T"]
    if sq.shape != ():
        must.append(f"sqrt_T of shape {sq.shape}")
    if W[0].dtype not in ("float32", "float64"):
        must.append(f"parameters of dtype {W[0].dtype}")
    for k, w in enumerate(W):
        if len(w.shape) != 2 or 0 in w.shape:
            must.append(f"weight {k} of shape {w.shape}")
            return must
        if k and w.shape[1] != W[k - 1].shape[0]:
            must.append(f"weight {k} does not chain")
        for x in lists[1:]:
            if tuple(x[k].shape) != (w.shape[0],):
                must.append(f"layer {k} vector of shape {x[k].shape}")
    if len(W[-1].shape) == 2 and W[-1].shape[0] != W[0].shape[1]:
        must.append("the last layer does not map back to the features")
    D = W[0].shape[1]
    spec_tensors = [t for x in lists for t in x] + [sq] + ([noise] if isinstance(noise, Ten) else [])
    if len({t.dtype for t in spec_tensors}) > 1:
        must.append("the field's tensors of several dtypes")
    if any(t.device != "cpu" for t in spec_tensors):
        must.append("a field tensor on meta")
    if any(t.layout == "sparse" and t.device == "cpu" for t in spec_tensors):
        must.append("a sparse field tensor")
    hutch = a["with_logp"] and a["trace"] == "hutchinson"
    if hutch and (not isinstance(noise, Ten) or len(noise.shape) != 2 or noise.shape[1] != D):
        must.append(f"Hutchinson needs a [N, {D}] noise")
    if must:
        return must
    # The calls.
    s, y = a["s"], a["y"]
    if not isinstance(s, Ten):
        return ["s must be a tensor"]
    width = D + ((1 + a["kinetic"] + a["jacobian"]) if a["with_logp"] else 0)
    if y.dtype != W[0].dtype:
        must.append(f"y dtype {y.dtype}, parameters {W[0].dtype}")
    if y.device != "cpu" or s.device != "cpu":
        must.append("y or s on meta")
    if math.prod(s.shape) != 1:
        must.append(f"s of shape {s.shape}")
    if s.dtype.startswith("complex"):
        must.append("a complex s")
    if (y.layout == "sparse" and y.device == "cpu") or (s.layout == "sparse" and s.device == "cpu"):
        must.append("a sparse y or s")
    n = math.prod(y.shape)
    if n == 0 or n % width:
        must.append(f"y of shape {y.shape} for {width} columns per sample")
    elif hutch and n // width != noise.shape[0]:
        must.append(f"{n // width} samples, noise for {noise.shape[0]}")
    if with_v and not must:
        v = a["v"]
        if tuple(v.shape) != tuple(y.shape) or v.dtype != y.dtype or v.device != y.device or \
                (v.layout == "sparse" and v.device == "cpu"):
            must.append(f"v ({v.shape}, {v.dtype}, {v.device}) is not like y")
    return must


def dtype_ok(ts: List[Ten]) -> bool:
    return all(t.dtype in ("float32", "float64") for t in ts)
def _reversible_grid(g: Gen, method: str, tv: list) -> list:
    return _fixed_grid_points(tv, g.choice([1, 2])) if method in _fixed_methods() else []


def reversible_solve_call(g: Gen) -> Call:
    """_C.reversible_solve(func, y0, t_out, options, *, coupling, grid, user_shape) through helpers.reversible_solve
    (joint mode, B = 1; the options flat: method, rtol, atol, segment_ends, max_num_steps)."""
    D = g.choice([1, 2, 3])
    T = g.choice([1, 2, 3, 4])
    t_out = _grid(g, T)
    method = g.choice(_adaptive_methods() + _fixed_methods())
    a = {
        "func": Code(f"F.{g.choice(FIELDS)}"),
        "y0": Ten((1, D), g.choice(["float64", "float32"]), seed=g.seed()),
        "t_out": t_out,
        "method": method, "rtol": [1e-6], "atol": [1e-8], "segment_ends": [D],
        "max_num_steps": g.choice([2**31 - 1, 1000]),
        "coupling": g.choice([0.999, 0.99, 1.0]),
        "grid": _reversible_grid(g, method, t_out.numbers()),
        "user_shape": [D],
    }
    call = Call(target="reversible_solve", callee="reversible_solve", args=a, positional=3, level="C")
    for _ in range(g.choice([0, 1, 1, 2])):
        name = g.choice(["func", "y0", "t_out", "coupling", "user_shape", "method"])
        if name in ("y0", "t_out"):
            a[name], m = g.mutate_tensor(a[name], "grid" if name == "t_out" else "")
        elif name == "func":
            a[name] = Code(f"F.{g.choice(FIELDS)}")
            m = a[name].text
        elif name == "coupling":
            a[name] = g.choice([0.0, -0.5, 1.5, math.nan, math.inf])
            m = str(a[name])
        elif name == "method":
            a[name] = g.choice(["", "DOPRI5", "bogus"])
            m = a[name]
        else:
            a[name] = g.choice([[], [D + 1], [-1], [0], [1, D]])
            m = lit(a[name])
        call.muts.append(f"{name}: {m}")
    y0, t = a["y0"], a["t_out"]
    must = []
    if y0.device != "cpu":
        must.append("meta y0")
    if y0.dtype not in ("float32", "float64") or tuple(y0.shape)[:1] != (1,) or len(y0.shape) != 2:
        must.append("y0 must be a float32/float64 [1, D] tensor")
    must += _times_must_raise(t, "t_out")
    if not (0.0 < a["coupling"] <= 1.0):
        must.append("the coupling must lie in (0, 1]")
    if a["method"] not in _adaptive_methods() + _fixed_methods():
        must.append(f"unknown method {a['method']!r}")
    if len(y0.shape) == 2:
        must += _user_shape_must_raise(a["user_shape"], math.prod(y0.shape))
    call.must_raise = must
    call.observe = "{k: v for k, v in RESULT.items() if k != 'tape'}"
    call.checks = [("wrong-output-shape", "tuple(RESULT['ys'].shape) == (t_out.shape[-1], *y0.shape)")]
    return call


def reversible_backward_call(g: Gen) -> Call:
    """_C.reversible_backward(func, tape, grad_ys, params, user_shape) after a reversible solve."""
    D = g.choice([1, 2, 3])
    T = g.choice([1, 2, 3])
    t_out = _grid(g, T)
    method = g.choice(_adaptive_methods() + _fixed_methods())
    grid = _reversible_grid(g, method, t_out.numbers())
    env = {"y0": Ten((1, D), "float64", seed=g.seed()), "t_out": t_out}
    setup = [f"field = Lin({g.uniform(0.2, 2.0)})",
             f"tape = reversible_solve(field, y0, t_out, method={method!r}, rtol=[1e-6], atol=[1e-8], "
             f"segment_ends=[{D}], grid={grid!r}, user_shape=[{D}])['tape']"]
    return _tape_backward_call(g, "reversible_backward", T, D, env, setup, "reversible")


def residual_call(g: Gen, backward: bool) -> Call:
    """_C.residual_forward(blocks, params, x, scheme) / _C.residual_backward(blocks, params, x_end, grad_end,
    scheme): blocks are Lin-like callables x -> -theta x (or broken ones), one parameter list per block."""
    N = g.choice([1, 2, 3, 5])
    D = g.choice([1, 2, 3])
    env = {}
    setup = [f"blocks_mod = [Lin({g.uniform(0.2, 2.0)}) for _ in range({N})]",
             "blocks = [(lambda m: (lambda x: m(0.0, x)))(m) for m in blocks_mod]",
             "params = [[m.theta] for m in blocks_mod]"]
    a = {"blocks": Code("blocks"), "params": Code("params"), "x": Ten((2, D), "float64", seed=g.seed())}
    if backward:
        a["grad_end"] = Ten((2, D), "float64", seed=g.seed())
    a["scheme"] = g.choice(["euler", "heun"])
    name = "residual_backward" if backward else "residual_forward"
    call = Call(target=name, callee=f"_C.{name}", args=a, positional=len(a), env=env, setup=setup, level="C")
    for _ in range(g.choice([0, 1, 1, 2])):
        k = g.choice(list(a))
        if k in ("x", "grad_end"):
            a[k], m = g.mutate_tensor(a[k])
        elif k == "blocks":
            a[k] = Code(g.choice(["[]", "[3]", "[lambda x: x[:, :1]] * 2", "[lambda x: 'no']", "None"]))
            m = a[k].text
        elif k == "params":
            a[k] = Code(g.choice(["[]", "[[3]] * len(blocks)", "None", "[[m.theta.detach()] for m in blocks_mod]"]))
            m = a[k].text
        else:
            a[k] = g.choice(["rk4", "", "EULER"])
            m = a[k]
        call.muts.append(f"{k}: {m}")
    must = []
    if a["scheme"] not in ("euler", "heun"):
        must.append("scheme must be 'euler' or 'heun'")
    if a["blocks"].text in ("[]", "[3]", "None"):
        must.append("blocks must be a non-empty list of callables")
    if a["params"].text in ("[]", "[[3]] * len(blocks)", "None") and a["blocks"].text == "blocks":
        must.append("params must hold one tensor list per block")
    x = a["x"]
    if x.dtype not in ("float32", "float64"):
        must.append("x must be float32/float64")
    if backward:
        ge = a["grad_end"]
        if tuple(ge.shape) != tuple(x.shape) or ge.dtype != x.dtype or ge.device != x.device:
            must.append("grad_end must match x_end")
    call.must_raise = must
    return call


def reversible_per_sample_call(g: Gen) -> Call:
    """_C.reversible_solve_per_sample(func, y0, t_out, options, *, coupling, user_shape) through
    helpers.reversible_solve_per_sample (B samples, t_out [T] or [B, T]; adaptive methods)."""
    B = g.choice([1, 2, 3])
    D = g.choice([1, 2, 3])
    T = g.choice([1, 2, 3, 4])
    a = {
        "func": Code(f"F.{g.choice(FIELDS)}"),
        "y0": Ten((B, D), g.choice(["float64", "float32"]), seed=g.seed()),
        "t_out": _grid(g, T, rows=B if B > 1 and g.p(0.4) else 0),
        "method": g.choice(_adaptive_methods()), "rtol": [1e-6], "atol": [1e-8], "segment_ends": [D],
        "max_num_steps": g.choice([2**31 - 1, 1000]),
        "coupling": g.choice([0.999, 0.99, 1.0]),
        "user_shape": [B, D],
    }
    call = Call(target="reversible_solve_per_sample", callee="reversible_solve_per_sample", args=a, positional=3,
                level="C")
    for _ in range(g.choice([0, 1, 1, 2])):
        name = g.choice(["func", "y0", "t_out", "coupling", "user_shape", "method"])
        if name in ("y0", "t_out"):
            a[name], m = g.mutate_tensor(a[name], "grid" if name == "t_out" else "")
        elif name == "func":
            a[name] = Code(f"F.{g.choice(FIELDS)}")
            m = a[name].text
        elif name == "coupling":
            a[name] = g.choice([0.0, -0.5, 1.5, math.nan])
            m = str(a[name])
        elif name == "method":
            a[name] = g.choice(["", "rk4", "bogus"])
            m = a[name]
        else:
            a[name] = g.choice([[], [B * D + 1], [-1], [D, B] if B != D else [0]])
            m = lit(a[name])
        call.muts.append(f"{name}: {m}")
    y0 = a["y0"]
    must = []
    if y0.device != "cpu":
        must.append("meta y0")
    if y0.dtype not in ("float32", "float64") or len(y0.shape) != 2:
        must.append("y0 must be a float32/float64 [B, D] tensor")
    if not (0.0 < a["coupling"] <= 1.0):
        must.append("the coupling must lie in (0, 1]")
    if a["method"] not in _adaptive_methods():
        must.append(f"method {a['method']!r} is not an adaptive method")
    call.must_raise = must
    call.observe = "{k: v for k, v in RESULT.items() if k != 'tape'}"
    call.checks = [("wrong-output-shape", "tuple(RESULT['ys'].shape) == (t_out.shape[-1], *y0.shape)")]
    return call


def reversible_backward_per_sample_call(g: Gen) -> Call:
    """_C.reversible_backward_per_sample(func, tape, grad_ys, params, user_shape) after a per-sample solve."""
    B = g.choice([1, 2, 3])
    D = g.choice([1, 2])
    T = g.choice([1, 2, 3])
    env = {"y0": Ten((B, D), "float64", seed=g.seed()), "t_out": _grid(g, T)}
    setup = [f"field = Lin({g.uniform(0.2, 2.0)})",
             f"tape = reversible_solve_per_sample(field, y0, t_out, method='dopri5', rtol=[1e-6], atol=[1e-8], "
             f"segment_ends=[{D}], user_shape=[{B}, {D}])['tape']"]
    a = {"func": Code("field"), "tape": Code("tape"), "grad_ys": Ten((T, B, D), "float64", seed=g.seed()),
         "params": [Code("field.theta")], "user_shape": [B, D]}
    call = Call(target="reversible_backward_per_sample", callee="_C.reversible_backward_per_sample", args=a,
                positional=5, env=env, setup=setup, level="C")
    for _ in range(g.choice([0, 0, 1, 1, 2])):
        name = g.choice(list(a))
        if name == "grad_ys":
            shape = g.choice([(T + 1, B, D), (T, D), (), (T, B, D + 1)])
            a[name] = replace(a[name], shape=shape)
            m = f"shape {shape}"
        elif name == "params":
            a[name] = g.choice([[], [Code("field.theta.detach()")], [Ten((2,), "float64", device="meta")]])
            m = "params changed"
        elif name == "func":
            a[name] = Code(g.choice(["F.decay", "F.wrong_shape", "F.raises", "Lin(0.5)"]))
            m = a[name].text
        elif name == "tape":
            a[name] = Code(g.choice(["None", "3", "y0"]))
            m = a[name].text
        else:
            a[name] = g.choice([[B * D + 1], [], [-1]])
            m = lit(a[name])
        call.muts.append(f"{name}: {m}")
    gy = a["grad_ys"]
    if tuple(gy.shape) != (T, B, D):
        call.must_raise.append(f"grad_ys shape: must be [{T}, {B}, {D}], got {list(gy.shape)}")
    if a["tape"].text != "tape":
        call.must_raise.append("not a per-sample reversible tape")
    call.checks = [("wrong-gradient-shape", f"tuple(RESULT[0].shape) == ({B}, {D})")]
    return call


ENTRY_POINTS: Dict[str, Callable[[Gen], Call]] = {
    "rk_solve": solve_call,
    "rk_checkpoint_backward": backward_call,
    "rk_adjoint": adjoint_call,
    "all_finite": finite_call,
    "odeint": lambda g: api_call(g, "odeint"),
    "odeint_adjoint": lambda g: api_call(g, "odeint_adjoint"),
    "rk_solve_per_sample": solve_per_sample_call,
    "rk_checkpoint_backward_per_sample": checkpoint_per_sample_call,
    "rk_adjoint_per_sample": adjoint_per_sample_call,
    "solve_ivp": solve_ivp_call,
    "odeint_event": odeint_event_call,
    "fixed_grid_solve": fixed_grid_call,
    "fixed_grid_backward": fixed_grid_backward_call,
    "sdeint": lambda g: sde_call_spec(g, "sdeint"),
    "sdeint_adjoint": lambda g: sde_call_spec(g, "sdeint_adjoint"),
    "BrownianInterval": lambda g: brownian_call_spec(g, "BrownianInterval"),
    "BrownianPath": lambda g: brownian_call_spec(g, "BrownianPath"),
    "BrownianTree": lambda g: brownian_call_spec(g, "BrownianTree"),
    "NativeMLP": native_mlp_call,
    "NativeCNF": native_cnf_call,
    "reversible_solve": reversible_solve_call,
    "reversible_backward": reversible_backward_call,
    "reversible_solve_per_sample": reversible_per_sample_call,
    "reversible_backward_per_sample": reversible_backward_per_sample_call,
    "residual_forward": lambda g: residual_call(g, False),
    "residual_backward": lambda g: residual_call(g, True),
}


def _selftest(kind: str) -> Call:
    """Calls with a known defect, for testing the harness itself (tests/test_fuzz.py)."""
    t = Ten((2, 3), "float64", seed=1)
    calls = {
        "crash": Call("selftest:crash", "__import__('os').abort", {}),
        "hang": Call("selftest:hang", "__import__('time').sleep", {"secs": 3600}, positional=1),
        "unclear": Call("selftest:unclear", "[].pop", {}),
        "clear": Call("selftest:clear", "OPS.rk_stage", {"y": Ten((3,)), "ks": [Ten((3,))], "h": Ten((1,)),
                                                          "coeffs": [1.0]}),
        "nondeterministic": Call("selftest:nondeterministic", "torch.randn", {"n": 3}, positional=1),
        "accepted": Call("selftest:accepted", "torch.zeros", {"n": 3}, positional=1, must_raise=["a bad input"]),
        "alias": Call("selftest:alias", "inplace_then_read", {"out": t, "x": Alias("out")}, mutable=["out"]),
        "oob": Call("selftest:oob", "write_past_end", {"x": replace(t, guard=True)}, mutable=["x"]),
        "check": Call("selftest:check", "torch.zeros", {"n": 3}, positional=1,
                      checks=[("wrong-output-shape", "RESULT.shape == (4,)")]),
        "meta": Call("selftest:meta", "torch.Tensor.tolist", {"x": t}, positional=1, meta_parity=True),
        "swap": Call("selftest:swap", "F.identity", {"t": 0.0, "y": t}, positional=2, swap=("F.identity", "F.const")),
    }
    return calls[kind]


def targets() -> List[str]:
    return [f"op:{n}" for n in op_schemas()] + list(ENTRY_POINTS)


def make_call(target: str, seed: int, i: int) -> Call:
    g = Gen(target, seed, i)
    if target.startswith("selftest:"):
        call = _selftest(target.split(":", 1)[1])
    elif target.startswith("op:"):
        name = target[3:]
        call = op_call(g, name, getattr(torch.ops.fastdiffeq, name).default._schema)
    else:
        call = ENTRY_POINTS[target](g)
    call.key = (target, seed, i)
    return call
