"""Brownian motion for the SDE solvers: ``BrownianInterval``, ``BrownianPath``, ``BrownianTree`` (torchsde 0.2.6 API).

Design
------
*Tree of intervals.* A ``BrownianInterval`` on ``[t0, t1]`` is a binary tree of intervals. The root holds the
increment ``W`` over ``[t0, t1]`` (and the space-time Levy area ``H`` when ``levy_area_approximation`` is not
``'none'``). An internal node ``[a, b]`` is split at one point ``m`` (``a < m < b``); its children ``[a, m]``
and ``[m, b]`` get their values from the node's value by a Brownian bridge. The tree only ever grows (leaves
are split, nothing is re-split), so a value once defined never changes. A query ``[ta, tb]`` is answered by
the canonical cover of ``[ta, tb]`` by tree nodes (descending from the lowest node containing it, taking each
node that lies inside the query whole); a query that is exactly a node returns that node's value, even if the
node was split later, so re-querying an interval returns bit-identical tensors.

*Where leaves are split.* When a query needs a point ``p`` strictly inside a leaf ``[a, b]``:

- ``halfway_tree=True`` (``BrownianTree``): split at the midpoint, rounded to ``tol``, and descend until ``p``
  is a node end. The tree, hence the path, depends on ``entropy`` only, not on the query order.
- otherwise: if ``b - a > K * min(tb - ta, dt)`` split at the midpoint ``(a + b) / 2`` (a lazily built
  dyadic skeleton), else split at ``p`` itself. ``K = min(16, cache_size // 3)`` (16 for an unbounded cache,
  at least 1). A leaf is split at a query point only when it is at most ``K`` query widths wide, so a run of
  sequential queries forms chains of at most ``K`` nodes under a skeleton of depth ``log2((t1 - t0) / (K w))``:
  a query costs one bridge sample (plus ~2/K skeleton samples) and recomputing any evicted node walks at
  most ``O(log + K)`` levels, whatever the number of past queries. As in torchsde (``halfway_tree=False``),
  the path depends on ``entropy`` and on the sequence of query points.

*Seeds.* Node ``n`` has a heap index (root 1, children ``2n`` and ``2n + 1``) fixed by its position in the
tree. Its noise comes from ``torch.randn`` with one reusable ``torch.Generator`` re-seeded to
``seed(n, stream) = fmix32((2 n + stream + k1) mod 2**32) xor k2`` (murmur3's 32-bit finaliser, a bijection;
``k1``, ``k2`` come from ``entropy`` by splitmix64). Stream 0 is the bridge noise used to split ``n``; stream 1
is the Davie/Foster Levy-area noise of ``n``; heap index 0 (unused by nodes) seeds the root's own ``W, H``.
CPU generators only use 32 bits of a seed, so seeds are made distinct by construction rather than hashed:
nodes of depth < 31 never share noise (deeper nodes fall back to a 64-bit hash folded to 32 bits).

*Cache.* Node values live in an LRU cache of ``cache_size`` nodes (``None``: unbounded, ``0``: none; the root
is kept apart). A missing value is recomputed from the nearest cached ancestor with the same noise and the
same floating-point operations, so it is bit-identical after eviction. Splitting a node computes and caches
both children (the right one is the next query's parent in a forward sweep).

Bridge formulas
---------------
Split ``[s, t]`` (``h = t - s``) at ``m``: ``h1 = m - s``, ``h2 = t - m``; ``Z1``, ``Z2`` independent standard
normals. Without Levy area: ``W1 = (h1/h) W + sqrt(h1 h2 / h) Z1``, ``W2 = W - W1``.

With space-time Levy area, in torchsde's normalisation ``H_{s,t} = U_{s,t}/h - W_{s,t}/2`` where
``U_{s,t} = int_s^t (W_u - W_s) du`` (so ``H ~ N(0, h/12)``, independent of ``W``; ``Var U = h^3/3``). From
``U_{s,t} = U_{s,m} + h2 W_{s,m} + U_{m,t}``:  ``H = (h1 H1 + h2 H2)/h + (h2 W1 - h1 W2)/(2h)``. Conditioning
the independent Gaussians ``(W1, H1)`` on ``(W, H)`` (Gaussian regression; ``S = h1^3 + h2^3``):

- ``E[W1] = (h1/h) W + 6 h1 h2/h^2 H``,  ``E[H1] = (h1/h)^2 H``
- ``Var W1 = h1 h2 S / h^4``,  ``Cov(W1, H1) = -h1^3 h2 / (2 h^3)``,  ``Var H1 = h1 (h^3 - h1^3) / (12 h^3)``

sampled by the Cholesky factor: ``W1 = E[W1] + a Z1``, ``H1 = E[H1] + b Z1 + c Z2`` with
``a = sqrt(h1 h2 S)/h^2``, ``b = -h1^3 h2 / (2 h^3 a)``, ``c = sqrt(h1 h2^3 / (12 S))``. The right child follows
from the two constraints: ``W2 = W - W1`` and (solved for ``H2``, written without dividing by ``h2`` so it stays
accurate for tiny ``h2``) ``H2 = (h2/h)^2 H - h1 h2^3/(2 h^3 a) Z1 - h1 sqrt(h1 h2/(12 S)) Z2``. This is the
same joint law as torchsde's ``_Interval`` and Foster's thesis (2020, ch. 4), derived and tested here
independently. Davie's / Foster's approximations of the full Levy area ``A`` of a node follow torchsde:
``A = H (x) W - W (x) H + sigma (N - N^T)`` with ``sigma = h / sqrt(12)`` (Davie) or
``sigma_ij = sqrt(h/10 (h/10 + H_i^2 + H_j^2))`` (Foster); over a cover of several nodes ``W``, ``H`` and ``A``
are combined exactly (Chen's relation for ``A``).
"""

from __future__ import annotations

import abc
import math
import numbers
from collections import OrderedDict
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["BaseBrownian", "BrownianInterval", "BrownianPath", "BrownianTree", "ReverseBrownian"]

LEVY_AREA_APPROXIMATIONS = ("none", "space-time", "davie", "foster")

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
# Nodes with a heap index below this get a unique 32-bit seed per stream (2 * index + stream < 2**32).
_UNIQUE_SEED_LIMIT = 1 << 31
_MAX_CHAIN = 16  # K above: the most query-point splits in a chain under one skeleton leaf

Scalar = Union[float, int, torch.Tensor]


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _fmix32(x: int) -> int:
    # murmur3's finaliser: a bijection of 32-bit integers with good avalanche.
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & _M32
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & _M32
    return x ^ (x >> 16)


class BaseBrownian(metaclass=abc.ABCMeta):
    """Interface of a Brownian motion sampler, as torchsde's ``BaseBrownian``."""

    __slots__ = ()

    @abc.abstractmethod
    def __call__(self, ta: Scalar, tb: Optional[Scalar] = None, return_U: bool = False, return_A: bool = False):
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype:
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def shape(self) -> Tuple[int, ...]:
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def levy_area_approximation(self) -> str:
        raise NotImplementedError

    def size(self) -> Tuple[int, ...]:
        """The shape of one sample (torchsde's ``size()``)."""
        return self.shape


class _Node:
    """One interval ``[start, end]`` of the tree; ``mid`` is set once it has been split."""

    __slots__ = ("start", "end", "parent", "is_left", "index", "mid", "left", "right", "value")

    def __init__(self, start: float, end: float, parent: Optional["_Node"], is_left: bool, index: int) -> None:
        self.start = start
        self.end = end
        self.parent = parent
        self.is_left = is_left
        self.index = index  # heap index: root 1, children 2i and 2i+1
        self.mid: Optional[float] = None
        self.left: Optional[_Node] = None
        self.right: Optional[_Node] = None
        # (W, H) when cached (H is None without Levy area); None when evicted or never computed.
        self.value: Optional[Tuple[torch.Tensor, Optional[torch.Tensor]]] = None


def _time_scalar(value: Any, name: str) -> float:
    """A Python float from an int/float/numpy scalar or a one-element tensor; TypeError/ValueError naming it."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"`{name}` must be a scalar (a float or a one-element tensor), got shape "
                             f"{tuple(value.shape)}")
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"`{name}` must be a real number, got a {value.dtype} tensor")
        out = float(value.item())
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number (float, int or one-element tensor), got "
                        f"{type(value).__name__}")
    else:
        out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"`{name}` must be finite, got {out}")
    return out


def _check_tensor(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"`{name}` must be a floating-point tensor, got {value.dtype}")
    return value


class BrownianInterval(BaseBrownian):
    """Brownian motion on ``[t0, t1]`` sampled on demand by Brownian bridges, with fixed entropy.

    Call ``bm(ta, tb)`` for the increment ``W(tb) - W(ta)`` (``t0 <= ta <= tb <= t1``), ``bm(t)`` for
    ``W(t) - W(t0)``; ``return_U=True`` adds the space-time integral ``U = int_ta^tb (W_u - W_ta) du`` (needs a
    ``levy_area_approximation`` other than ``'none'``), ``return_A=True`` Davie's or Foster's approximation of
    the Levy area (needs ``'davie'`` or ``'foster'``). Results come as ``W``, ``(W, U)``, ``(W, A)`` or
    ``(W, U, A)``. The tensors returned for a query that is exactly one tree interval are the cached ones:
    do not modify them in place.

    See the module docstring for the data structure. Arguments as torchsde 0.2.6's ``BrownianInterval``:

    Args:
        t0, t1: the interval (``t0 <= t1``); floats or one-element tensors.
        size: the shape of one sample (``W``'s shape); may be omitted when ``W`` or ``H`` is given.
        dtype: floating dtype (default: ``W``'s, else torch's default dtype).
        device: device (default: ``W``'s, else CPU).
        entropy: non-negative int seed; ``None`` draws one from numpy's global generator (as torchsde).
        dt: expected step size: leaves wider than ``K * dt`` are split at midpoints before any query point
            (a dyadic skeleton, built lazily where queries go). Must be ``None`` with ``halfway_tree``.
        tol: query times are rounded to ``-int(log10(tol))`` decimals when ``tol > 0`` (must be ``> 0`` with
            ``halfway_tree``).
        pool_size: accepted and checked for compatibility (torchsde's numpy entropy pool); unused here.
        cache_size: number of node values kept (LRU); ``None`` for unbounded, ``0`` for none.
        halfway_tree: split only at midpoints, so the path depends on ``entropy`` alone, not the query order.
        levy_area_approximation: ``'none'``, ``'space-time'``, ``'davie'`` or ``'foster'``.
        W, H: the increment and space-time Levy area over ``[t0, t1]`` (drawn when not given).

    Queries outside ``[t0, t1]`` raise ``ValueError`` (torchsde warns and clamps); times beyond the ends by
    less than ``64 eps max(|t0|, |t1|, t1 - t0)`` are taken as the end. ``ta > tb`` raises a ``ValueError``
    that is also a ``RuntimeError`` (torchsde raises ``RuntimeError``).
    """

    def __init__(self,
                 t0: Scalar = 0.,
                 t1: Scalar = 1.,
                 size: Optional[Union[int, Sequence[int]]] = None,
                 dtype: Optional[torch.dtype] = None,
                 device: Optional[Union[str, torch.device]] = None,
                 entropy: Optional[int] = None,
                 dt: Optional[Scalar] = None,
                 tol: Scalar = 0.,
                 pool_size: int = 8,
                 cache_size: Optional[int] = 45,
                 halfway_tree: bool = False,
                 levy_area_approximation: str = "none",
                 W: Optional[torch.Tensor] = None,
                 H: Optional[torch.Tensor] = None) -> None:
        t0f = _time_scalar(t0, "t0")
        t1f = _time_scalar(t1, "t1")
        if t0f > t1f:
            raise ValueError(f"`t0` ({t0f}) must not be greater than `t1` ({t1f})")
        if not math.isfinite(t1f - t0f):
            raise ValueError(f"the interval [`t0`, `t1`] = [{t0f}, {t1f}] is wider than a float can hold")
        dtf = None if dt is None else _time_scalar(dt, "dt")
        if dtf is not None and dtf <= 0:
            raise ValueError(f"`dt` must be positive, got {dtf}")
        if not isinstance(halfway_tree, bool):
            raise TypeError(f"`halfway_tree` must be a bool, got {type(halfway_tree).__name__}")
        tolf = _time_scalar(tol, "tol")
        if halfway_tree:
            if tolf <= 0:
                raise ValueError(f"`tol` must be positive when `halfway_tree` is True, got {tolf}")
            if dtf is not None:
                raise ValueError("`dt` must be None when `halfway_tree` is True (the tree is dyadic)")
        elif tolf < 0:
            raise ValueError(f"`tol` must be non-negative, got {tolf}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, numbers.Integral):
            raise TypeError(f"`pool_size` must be an int, got {type(pool_size).__name__}")
        if pool_size < 1:
            raise ValueError(f"`pool_size` must be at least 1, got {pool_size}")
        if cache_size is not None:
            if isinstance(cache_size, bool) or not isinstance(cache_size, numbers.Integral):
                raise TypeError(f"`cache_size` must be an int or None, got {type(cache_size).__name__}")
            if cache_size < 0:
                raise ValueError(f"`cache_size` must be non-negative (or None for unbounded), got {cache_size}")
            cache_size = int(cache_size)
        if not isinstance(levy_area_approximation, str):
            raise TypeError(f"`levy_area_approximation` must be a str, got {type(levy_area_approximation).__name__}")
        if levy_area_approximation not in LEVY_AREA_APPROXIMATIONS:
            raise ValueError(f"`levy_area_approximation` must be one of {list(LEVY_AREA_APPROXIMATIONS)}, got "
                             f"{levy_area_approximation!r}")
        if entropy is None:
            entropy = int(np.random.randint(0, 2 ** 31 - 1))  # numpy's global RNG, as torchsde
        elif isinstance(entropy, bool) or not isinstance(entropy, numbers.Integral):
            raise TypeError(f"`entropy` must be a non-negative int or None, got {type(entropy).__name__}")
        elif entropy < 0:
            raise ValueError(f"`entropy` must be non-negative, got {entropy}")
        entropy = int(entropy)
        size_t, dtype, device = self._resolve_tensor_info(size, dtype, device, W, H)
        if math.sqrt(t1f - t0f) * 40 > torch.finfo(dtype).max:  # W ~ sqrt(t1 - t0) N(0, 1): |N| < 40
            raise ValueError(f"the interval [`t0`, `t1`] = [{t0f}, {t1f}] is too wide for {dtype}: its Brownian "
                             f"increments overflow")

        self._size = size_t
        self._dtype = dtype
        self._device = device
        self._entropy = entropy
        self._levy_area_approximation = levy_area_approximation
        self._dt = dtf
        self._tol = tolf
        self._pool_size = int(pool_size)
        self._cache_size = cache_size
        self._halfway_tree = halfway_tree
        self._have_H = levy_area_approximation != "none"
        self._have_A = levy_area_approximation in ("davie", "foster")
        self._ndigits = -int(math.log10(tolf)) if tolf > 0 else None
        self._start = self._round(t0f)  # torchsde's names for the interval ends
        self._end = self._round(t1f)
        if self._start > self._end or (self._start == self._end and t0f < t1f):
            raise ValueError(f"`tol`={tolf} is too coarse for [`t0`, `t1`] = [{t0f}, {t1f}]: they round to "
                             f"{self._start} and {self._end}")
        span = self._end - self._start
        self._slack = 64 * 2.220446049250313e-16 * max(abs(self._start), abs(self._end), span)
        if cache_size is None:
            self._chain = _MAX_CHAIN
        else:
            self._chain = max(1, min(_MAX_CHAIN, cache_size // 3))
        # Seed keys: fixed 32-bit offsets from the entropy (see the module docstring).
        mixed = _splitmix64((entropy & _M64) ^ _splitmix64(entropy >> 64))
        self._key1 = mixed & _M32
        self._key2 = mixed >> 32
        self._key64 = _splitmix64(mixed)
        self._generator = torch.Generator(device=device)
        self._noise_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
        self._lru: "OrderedDict[_Node, None]" = OrderedDict()

        self._root = _Node(self._start, self._end, None, False, 1)
        if W is None:
            if self._have_H and H is None:
                noise = self._randn((2, *size_t), 0, 0)
                W, H = noise[0].mul_(math.sqrt(span)), noise[1].mul_(math.sqrt(span / 12))
            else:
                W = self._randn(size_t, 0, 0).mul_(math.sqrt(span))
        if self._have_H and H is None:
            # W was given: H is independent of W, from its own stream.
            H = self._randn(size_t, 0, 1).mul_(math.sqrt(span / 12))
        self._root.value = (W, H if self._have_H else None)
        self._last = self._root  # searches start from the most recent query's node

    # ------------------------------------------------------------------ construction helpers

    @staticmethod
    def _resolve_tensor_info(size: Any, dtype: Any, device: Any, W: Any, H: Any
                             ) -> Tuple[Tuple[int, ...], torch.dtype, torch.device]:
        tensors = []
        if W is not None:
            tensors.append(("W", _check_tensor(W, "W")))
        if H is not None:
            tensors.append(("H", _check_tensor(H, "H")))
        if size is not None:
            if isinstance(size, numbers.Integral) and not isinstance(size, bool):
                size = (size,)
            if isinstance(size, torch.Tensor) or not isinstance(size, (tuple, list, torch.Size)):
                raise TypeError(f"`size` must be a tuple of ints, got {type(size).__name__}")
            for s in size:
                if isinstance(s, bool) or not isinstance(s, numbers.Integral):
                    raise TypeError(f"`size` must be a tuple of ints, got {tuple(size)}")
                if s < 0:
                    raise ValueError(f"`size` must hold non-negative ints, got {tuple(size)}")
            size = tuple(int(s) for s in size)
        elif not tensors:
            raise ValueError("`size` must be given (or `W` or `H`, whose shape then defines it)")
        if dtype is not None:
            if not isinstance(dtype, torch.dtype):
                raise TypeError(f"`dtype` must be a torch.dtype, got {type(dtype).__name__}")
            if not dtype.is_floating_point:
                raise TypeError(f"`dtype` must be a floating-point dtype, got {dtype}")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as err:
                raise ValueError(f"`device` is not a valid torch device: {device!r} ({err})") from None
        for name, tensor in tensors:
            if size is not None and tuple(tensor.shape) != size:
                raise ValueError(f"`{name}` has shape {tuple(tensor.shape)} but `size` is {size}")
            if dtype is not None and tensor.dtype != dtype:
                raise ValueError(f"`{name}` has dtype {tensor.dtype} but `dtype` is {dtype}")
            if device is not None and tensor.device != device:
                raise ValueError(f"`{name}` is on {tensor.device} but `device` is {device}")
            size = tuple(tensor.shape) if size is None else size
            dtype = tensor.dtype if dtype is None else dtype
            device = tensor.device if device is None else device
        if len(tensors) == 2:
            (_, w), (_, h) = tensors
            if w.shape != h.shape or w.dtype != h.dtype or w.device != h.device:
                raise ValueError(f"`W` ({tuple(w.shape)}, {w.dtype}, {w.device}) and `H` ({tuple(h.shape)}, "
                                 f"{h.dtype}, {h.device}) must have the same shape, dtype and device")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        device = torch.device("cpu") if device is None else device
        return size, dtype, device

    def _round(self, t: float) -> float:
        return t if self._ndigits is None else round(t, self._ndigits)

    # ------------------------------------------------------------------ noise

    def _seed(self, index: int, stream: int) -> int:
        if index < _UNIQUE_SEED_LIMIT:
            return _fmix32((2 * index + stream + self._key1) & _M32) ^ self._key2
        # Deep node: a 64-bit hash of its index, folded to the 32 bits a CPU generator uses.
        x = self._key64
        while index:
            x = _splitmix64(x ^ (index & _M64))
            index >>= 64
        x = _splitmix64(x ^ stream)
        return (x ^ (x >> 32)) & _M32

    def _randn(self, shape: Tuple[int, ...], index: int, stream: int) -> torch.Tensor:
        self._generator.manual_seed(self._seed(index, stream))
        noise = torch.randn(shape, dtype=self._noise_dtype, device=self._device, generator=self._generator)
        return noise if noise.dtype == self._dtype else noise.to(self._dtype)

    # ------------------------------------------------------------------ tree

    def _split(self, node: _Node, point: float, width: float) -> None:
        """Split the leaf ``node``, which has ``point`` strictly inside, at the point the rule picks."""
        a, b = node.start, node.end
        if self._halfway_tree:
            mid = self._round(0.5 * (a + b))
        else:
            limit = self._chain * (width if self._dt is None else min(width, self._dt))
            mid = 0.5 * (a + b) if b - a > limit else point
            mid = self._round(mid)
        if not a < mid < b:  # midpoint indistinguishable from an end (rounding): the point is inside
            mid = point
        node.mid = mid
        node.left = _Node(a, mid, node, True, 2 * node.index)
        node.right = _Node(mid, b, node, False, 2 * node.index + 1)

    def _cover(self, ta: float, tb: float) -> List[_Node]:
        """The tree nodes that tile ``[ta, tb]`` (ta < tb), left to right, splitting leaves as needed."""
        node = self._last
        while not (node.start <= ta and tb <= node.end):
            node = node.parent
        width = tb - ta
        out: List[_Node] = []
        stack = [node]
        while stack:
            n = stack.pop()
            if ta <= n.start and n.end <= tb:
                out.append(n)
                continue
            if n.mid is None:
                self._split(n, ta if n.start < ta < n.end else tb, width)
            # Right pushed first so the left is handled (appended) first.
            if n.right.start < tb and n.right.end > ta:
                stack.append(n.right)
            if n.left.start < tb and n.left.end > ta:
                stack.append(n.left)
        self._last = out[-1]
        return out

    def _store(self, node: _Node, value: Tuple[torch.Tensor, Optional[torch.Tensor]]) -> None:
        cache_size = self._cache_size
        if cache_size == 0:
            return
        node.value = value
        lru = self._lru
        lru[node] = None
        lru.move_to_end(node)
        if cache_size is not None and len(lru) > cache_size:
            old, _ = lru.popitem(last=False)
            old.value = None

    def _value(self, node: _Node) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(W, H)`` of a node, from the cache or recomputed from the nearest cached ancestor."""
        value = node.value
        if value is not None:
            if node is not self._root:
                self._lru.move_to_end(node)
            return value
        path = []
        n = node
        while n.value is None:
            path.append(n)
            n = n.parent
        value = n.value
        for child in reversed(path):
            parent = child.parent
            left, right = self._bridge(parent, value)
            self._store(parent.left, left)
            self._store(parent.right, right)
            value = left if child.is_left else right
        return value

    def _bridge(self, node: _Node, value: Tuple[torch.Tensor, Optional[torch.Tensor]]):
        """The children's ``(W, H)`` of a split node from its own ``(W, H)`` (formulas: module docstring)."""
        W, H = value
        h1 = node.mid - node.start
        h2 = node.end - node.mid
        h = h1 + h2
        # Every coefficient is sqrt(h) times a function of the fractions p = h1/h, q = h2/h (p + q = 1), so no
        # product of widths can overflow or underflow, however wide or narrow the node (a width near 1e-300 or
        # 1e300 kept its variance only this way).
        p, q = h1 / h, h2 / h
        root_h = math.sqrt(h)
        if H is None:
            W1 = self._randn(self._size, node.index, 0)
            W1.mul_(root_h * math.sqrt(p * q)).add_(W, alpha=p)
            return (W1, None), (W - W1, None)
        noise = self._randn((2, *self._size), node.index, 0)
        Z1, Z2 = noise[0], noise[1]
        cubes = p ** 3 + q ** 3  # S / h^3, in [1/4, 1]
        a = root_h * math.sqrt(p * q * cubes)
        b = -root_h * p ** 2.5 * math.sqrt(q) / (2 * math.sqrt(cubes))
        c = root_h * math.sqrt(p * q ** 3 / (12 * cubes))
        e = -root_h * math.sqrt(p) * q ** 2.5 / (2 * math.sqrt(cubes))
        f = -root_h * p * math.sqrt(p * q / (12 * cubes))
        W1 = torch.mul(Z1, a).add_(W, alpha=p).add_(H, alpha=6 * p * q)
        H1 = torch.mul(Z1, b).add_(Z2, alpha=c).add_(H, alpha=p * p)
        H2 = Z1.mul_(e).add_(Z2, alpha=f).add_(H, alpha=q * q)
        return (W1, H1), (W - W1, H2)

    def _levy_area(self, node: _Node, W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
        """Davie's or Foster's approximation of a node's Levy area (torchsde's formula and shapes)."""
        if W.dim() <= 1:
            # A scalar or a single dimension is a batch of 1-D motions: their Levy area is zero.
            return torch.zeros_like(W)
        h = node.end - node.start
        noise = self._randn((*self._size, self._size[-1]), node.index, 1)
        noise = noise - noise.transpose(-1, -2)  # antisymmetric, off-diagonal variance 2
        if self._levy_area_approximation == "foster":
            H2 = H * H
            std = (H2.unsqueeze(-1) + H2.unsqueeze(-2)).add_(0.1 * h).mul_(0.1 * h).sqrt_()
            noise.mul_(std)
        else:
            noise.mul_(h / math.sqrt(12))
        # H (x) W - W (x) H first, then the noise: a sum of two exactly antisymmetric terms stays exactly so.
        area = H.unsqueeze(-1) * W.unsqueeze(-2)
        return area.sub_(W.unsqueeze(-1) * H.unsqueeze(-2)).add_(noise)

    # ------------------------------------------------------------------ queries

    def _time(self, t: Any, name: str) -> float:
        tf = self._round(_time_scalar(t, name))
        if tf < self._start:
            if self._start - tf > self._slack:
                raise ValueError(f"`{name}`={tf} is before the start t0={self._start} of the Brownian interval "
                                 f"[{self._start}, {self._end}]")
            tf = self._start
        elif tf > self._end:
            if tf - self._end > self._slack:
                raise ValueError(f"`{name}`={tf} is after the end t1={self._end} of the Brownian interval "
                                 f"[{self._start}, {self._end}]")
            tf = self._end
        return tf

    def _zeros_result(self, want_U: bool, want_A: bool):
        W = torch.zeros(self._size, dtype=self._dtype, device=self._device)
        U = torch.zeros_like(W) if want_U else None
        A = None
        if want_A:
            shape = self._size if len(self._size) <= 1 else (*self._size, self._size[-1])
            A = torch.zeros(shape, dtype=self._dtype, device=self._device)
        return W, U, A

    def _increment(self, ta: float, tb: float, want_U: bool, want_A: bool):
        """``(W, U or None, A or None)`` over ``[ta, tb]`` for checked times ``ta <= tb``."""
        if ta == tb:
            return self._zeros_result(want_U, want_A)
        nodes = self._cover(ta, tb)
        first = nodes[0]
        W, H = self._value(first)
        A = self._levy_area(first, W, H) if want_A else None
        for node in nodes[1:]:
            Wi, Hi = self._value(node)
            if H is not None:
                # H over [ta, node.end] from H over [ta, node.start] and H over the node (module docstring).
                hi = node.end - node.start
                hl = node.start - ta
                H = (Hi + 0.5 * W).mul_(hi).add_((H - 0.5 * Wi).mul_(hl)).div_(hi + hl)
            if A is not None:
                Ai = self._levy_area(node, Wi, Hi)
                if W.dim() <= 1:
                    A = A + Ai
                else:
                    # Chen: A_{s,t} = A_{s,v} + A_{v,t} + (W_{s,v} (x) W_{v,t} - W_{v,t} (x) W_{s,v}) / 2.
                    cross = W.unsqueeze(-1) * Wi.unsqueeze(-2)
                    A = A + Ai + 0.5 * (cross - cross.transpose(-1, -2))
            W = W + Wi
        U = (0.5 * W + H) * (tb - ta) if want_U else None
        return W, U, A

    def __call__(self, ta: Scalar, tb: Optional[Scalar] = None, return_U: bool = False, return_A: bool = False):
        """Increment over ``[ta, tb]`` (over ``[t0, ta]`` when ``tb`` is None), with ``U`` and/or ``A`` if asked.

        Returns ``W``, ``(W, U)``, ``(W, A)`` or ``(W, U, A)``, each of shape ``size`` (``A``:
        ``(*size, size[-1])``, or ``size`` when ``size`` has at most one dimension, as torchsde).
        """
        if tb is None:
            ta_f, tb_f = self._start, self._time(ta, "ta")
        else:
            ta_f, tb_f = self._time(ta, "ta"), self._time(tb, "tb")
            if ta_f > tb_f:
                raise _QueryOrderError(f"query times must satisfy ta <= tb, got ta={ta_f} and tb={tb_f}")
        if return_U and not self._have_H:
            raise ValueError("`return_U`=True needs levy_area_approximation 'space-time', 'davie' or 'foster'; "
                             "this Brownian motion has 'none'")
        if return_A and not self._have_A:
            raise ValueError(f"`return_A`=True needs levy_area_approximation 'davie' or 'foster'; this Brownian "
                             f"motion has {self._levy_area_approximation!r}")
        W, U, A = self._increment(ta_f, tb_f, bool(return_U), bool(return_A))
        if return_U:
            return (W, U, A) if return_A else (W, U)
        return (W, A) if return_A else W

    def _grid_increments(self, ts: Union[torch.Tensor, Sequence[float]], return_U: bool = False):
        """Increments over consecutive intervals of a monotone grid, stacked: ``[len(ts) - 1, *size]``.

        Increasing ``ts``: row ``i`` is ``bm(ts[i], ts[i+1])``; decreasing ``ts``: row ``i`` is
        ``bm(ts[i+1], ts[i])`` (the increment over that interval, forward in time and not negated, as the
        adjoint's ``ReverseBrownian`` asks for it). The queries are made in the order of ``ts``, so the rows
        equal those calls made one by one, bit for bit, and leave the same tree. With ``return_U``, returns
        ``(W, U)`` stacked alike.
        """
        if isinstance(ts, torch.Tensor):
            if ts.dim() != 1:
                raise ValueError(f"`ts` must be one-dimensional, got shape {tuple(ts.shape)}")
            if not ts.is_floating_point():
                raise TypeError(f"`ts` must be a floating-point tensor, got {ts.dtype}")
            times = ts.detach().to("cpu", torch.float64).tolist()
        elif isinstance(ts, (list, tuple)):
            times = [_time_scalar(t, "ts") for t in ts]
        else:
            raise TypeError(f"`ts` must be a 1-D tensor or a list of floats, got {type(ts).__name__}")
        if return_U and not self._have_H:
            raise ValueError("`return_U`=True needs levy_area_approximation 'space-time', 'davie' or 'foster'; "
                             "this Brownian motion has 'none'")
        times = [self._time(t, "ts") for t in times]
        increasing = all(x <= y for x, y in zip(times, times[1:]))
        if not increasing and not all(x >= y for x, y in zip(times, times[1:])):
            raise ValueError("`ts` must be monotone (increasing or decreasing)")
        Ws: List[torch.Tensor] = []
        Us: List[torch.Tensor] = []
        for x, y in zip(times, times[1:]):
            W, U, _ = self._increment(x, y, return_U, False) if increasing else self._increment(y, x, return_U, False)
            Ws.append(W)
            if return_U:
                Us.append(U)
        if not Ws:
            empty = torch.empty((0, *self._size), dtype=self._dtype, device=self._device)
            return (empty, empty.clone()) if return_U else empty
        W_out = torch.stack(Ws)
        return (W_out, torch.stack(Us)) if return_U else W_out

    # ------------------------------------------------------------------ properties

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(t0={self._start}, t1={self._end}, size={self._size}, dtype={self._dtype}, "
                f"device={self._device!r}, entropy={self._entropy}, dt={self._dt}, tol={self._tol}, "
                f"pool_size={self._pool_size}, cache_size={self._cache_size}, halfway_tree={self._halfway_tree}, "
                f"levy_area_approximation={self._levy_area_approximation!r})")

    @property
    def shape(self) -> Tuple[int, ...]:
        return self._size

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def levy_area_approximation(self) -> str:
        return self._levy_area_approximation

    @property
    def t0(self) -> float:
        """Start of the interval (torchsde keeps it as ``_start``, also set here)."""
        return self._start

    @property
    def t1(self) -> float:
        """End of the interval (torchsde keeps it as ``_end``, also set here)."""
        return self._end

    @property
    def entropy(self) -> int:
        return self._entropy

    @property
    def dt(self) -> Optional[float]:
        return self._dt

    @property
    def tol(self) -> float:
        return self._tol

    @property
    def pool_size(self) -> int:
        return self._pool_size

    @property
    def cache_size(self) -> Optional[int]:
        return self._cache_size

    @property
    def halfway_tree(self) -> bool:
        return self._halfway_tree


class _QueryOrderError(ValueError, RuntimeError):
    """``ta > tb``: a ValueError like fastdiffeq's other bad arguments, and a RuntimeError as torchsde raises."""


class _WrappedBrownian(BaseBrownian):
    """Shared part of BrownianPath and BrownianTree: a BrownianInterval plus the start value ``w0``."""

    _interval: BrownianInterval
    _w0: torch.Tensor

    def __call__(self, t: Scalar, tb: Optional[Scalar] = None, return_U: bool = False, return_A: bool = False):
        """``bm(t)``: the value ``w0 + W(t) - W(t0)``; ``bm(ta, tb, ...)``: as ``BrownianInterval``."""
        out = self._interval(t, tb, return_U=return_U, return_A=return_A)
        if tb is None and not return_U and not return_A:
            out = out + self._w0
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(interval={self._interval})"

    @property
    def dtype(self) -> torch.dtype:
        return self._interval.dtype

    @property
    def device(self) -> torch.device:
        return self._interval.device

    @property
    def shape(self) -> Tuple[int, ...]:
        return self._interval.shape

    @property
    def levy_area_approximation(self) -> str:
        return self._interval.levy_area_approximation

    @property
    def t0(self) -> float:
        return self._interval.t0

    @property
    def t1(self) -> float:
        return self._interval.t1

    def _grid_increments(self, ts: Union[torch.Tensor, Sequence[float]], return_U: bool = False):
        """As :meth:`BrownianInterval._grid_increments`."""
        return self._interval._grid_increments(ts, return_U=return_U)


class BrownianPath(_WrappedBrownian):
    """Brownian motion on ``[t0, t0 + 1]`` starting at ``w0``, keeping every computed value (torchsde 0.2.6).

    ``w0``'s shape, dtype and device give the sample's; ``window_size`` is unused (deprecated in torchsde).
    """

    def __init__(self, t0: Scalar, w0: torch.Tensor, window_size: int = 8) -> None:
        _check_tensor(w0, "w0")
        if isinstance(window_size, bool) or not isinstance(window_size, numbers.Integral):
            raise TypeError(f"`window_size` must be an int, got {type(window_size).__name__}")
        t0f = _time_scalar(t0, "t0")
        self._w0 = w0
        self._interval = BrownianInterval(t0=t0f, t1=t0f + 1, size=w0.shape, dtype=w0.dtype, device=w0.device,
                                          cache_size=None)


class BrownianTree(_WrappedBrownian):
    """Brownian motion from ``w0`` at ``t0`` whose path depends on ``entropy`` only (torchsde 0.2.6).

    A ``BrownianInterval`` with ``halfway_tree=True``: points are resolved to ``tol`` by dyadic splitting.
    ``t1`` defaults to ``t0 + 1``; ``w1``, if given, is the value at ``t1``. ``cache_depth`` and ``safety`` are
    unused (deprecated in torchsde).
    """

    def __init__(self, t0: Scalar, w0: torch.Tensor, t1: Optional[Scalar] = None, w1: Optional[torch.Tensor] = None,
                 entropy: Optional[int] = None, tol: float = 1e-6, pool_size: int = 24, cache_depth: int = 9,
                 safety: Optional[float] = None) -> None:
        _check_tensor(w0, "w0")
        t0f = _time_scalar(t0, "t0")
        t1f = t0f + 1 if t1 is None else _time_scalar(t1, "t1")
        W = None
        if w1 is not None:
            _check_tensor(w1, "w1")
            if w1.shape != w0.shape or w1.dtype != w0.dtype or w1.device != w0.device:
                raise ValueError(f"`w1` ({tuple(w1.shape)}, {w1.dtype}, {w1.device}) must match `w0` "
                                 f"({tuple(w0.shape)}, {w0.dtype}, {w0.device})")
            W = w1 - w0
        self._w0 = w0
        self._interval = BrownianInterval(t0=t0f, t1=t1f, size=w0.shape, dtype=w0.dtype, device=w0.device,
                                          entropy=entropy, tol=tol, pool_size=pool_size, halfway_tree=True, W=W)


class ReverseBrownian(BaseBrownian):
    """The Brownian motion of the adjoint pass: ``rev(ta, tb) = base(-tb, -ta)`` (torchsde's, not negated)."""

    def __init__(self, base_brownian: BaseBrownian) -> None:
        self.base_brownian = base_brownian

    def __call__(self, ta: Scalar, tb: Optional[Scalar] = None, return_U: bool = False, return_A: bool = False):
        if tb is None:
            raise ValueError("ReverseBrownian needs both `ta` and `tb` (interval queries only)")
        return self.base_brownian(-tb, -ta, return_U=return_U, return_A=return_A)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_brownian={self.base_brownian})"

    @property
    def dtype(self) -> torch.dtype:
        return self.base_brownian.dtype

    @property
    def device(self) -> torch.device:
        return self.base_brownian.device

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.base_brownian.shape

    @property
    def levy_area_approximation(self) -> str:
        return self.base_brownian.levy_area_approximation
