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


def _draw_dims(g: Gen) -> Dims:
    from fastdiffeq import _C

    tab = _C.tableau(g.choice(list(_C.methods)))
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
    method = g.choice(list(_C.methods))
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
    method = g.choice(list(_C.methods))
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
    method = g.choice(list(_C.methods))
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


ENTRY_POINTS: Dict[str, Callable[[Gen], Call]] = {
    "rk_solve": solve_call,
    "rk_checkpoint_backward": backward_call,
    "rk_adjoint": adjoint_call,
    "all_finite": finite_call,
    "odeint": lambda g: api_call(g, "odeint"),
    "odeint_adjoint": lambda g: api_call(g, "odeint_adjoint"),
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
