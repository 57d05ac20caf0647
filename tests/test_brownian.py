"""BrownianInterval / BrownianPath / BrownianTree: path properties, laws, determinism, caching, the torchsde API.

Statistical checks use one fixed entropy and many independent components (the sample size), with tolerances of
6 standard errors computed from that size: the samples are deterministic, and the bound is far from the value.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from fastdiffeq import BrownianInterval, BrownianPath, BrownianTree
from fastdiffeq._brownian import ReverseBrownian

pytestmark = pytest.mark.usefixtures("single_thread")

N_STAT = 200_000  # components per sample in the statistical tests
Z = 6.0  # standard errors allowed


def _mean_ok(x: torch.Tensor, var: float) -> None:
    bound = Z * math.sqrt(var / x.numel())
    assert abs(x.mean().item()) < bound, (x.mean().item(), bound)


def _var_ok(x: torch.Tensor, var: float) -> None:
    # Var of the sample second moment of a centred Gaussian: 2 var^2 / n.
    est = x.pow(2).mean().item()
    bound = Z * var * math.sqrt(2 / x.numel())
    assert abs(est - var) < bound, (est, var, bound)


def _uncorrelated(x: torch.Tensor, y: torch.Tensor) -> None:
    corr = (x * y).mean().item() / math.sqrt(x.pow(2).mean().item() * y.pow(2).mean().item())
    assert abs(corr) < Z / math.sqrt(x.numel()), corr


# ---------------------------------------------------------------- path properties


def test_additivity_at_random_points():
    bm = BrownianInterval(0.0, 2.0, size=(16, 3), dtype=torch.float64, entropy=7)
    rng = random.Random(0)
    for _ in range(200):
        s, t, u = sorted(rng.uniform(0.0, 2.0) for _ in range(3))
        whole = bm(s, u)
        torch.testing.assert_close(whole, bm(s, t) + bm(t, u), rtol=0, atol=1e-12)
    # Point queries are increments from t0.
    torch.testing.assert_close(bm(1.5) - bm(0.5), bm(0.5, 1.5), rtol=0, atol=1e-12)
    torch.testing.assert_close(bm(0.0, 2.0), bm(2.0), rtol=0, atol=0)


def test_increment_mean_and_variance():
    bm = BrownianInterval(0.0, 1.0, size=(N_STAT,), dtype=torch.float64, entropy=11)
    bm(0.0, 0.1)  # split the root first, so the increments below are bridge samples
    bm(0.55, 0.6)
    for s, u in [(0.0, 1.0), (0.1, 0.7), (0.55, 0.6), (0.3, 0.3001)]:
        dW = bm(s, u)
        _mean_ok(dW, u - s)
        _var_ok(dW, u - s)


def test_disjoint_increments_uncorrelated():
    bm = BrownianInterval(0.0, 1.0, size=(N_STAT,), dtype=torch.float64, entropy=3)
    pieces = [bm(a, b) for a, b in [(0.0, 0.3), (0.3, 0.35), (0.35, 0.9), (0.9, 1.0)]]
    for i in range(len(pieces)):
        for j in range(i + 1, len(pieces)):
            _uncorrelated(pieces[i], pieces[j])


def test_sequential_small_steps_have_the_right_quadratic_variation():
    n = 400
    bm = BrownianInterval(0.0, 1.0, size=(2000,), dtype=torch.float64, entropy=5)
    incs = bm._grid_increments(torch.linspace(0, 1, n + 1, dtype=torch.float64))
    # Each of the 2000 components' quadratic variation over 400 steps is ~ 1 with variance 2/400.
    qv = incs.pow(2).sum(0)
    assert abs(qv.mean().item() - 1.0) < Z * math.sqrt(2 / n / qv.numel())
    _var_ok(incs.flatten(), 1.0 / n)


# ---------------------------------------------------------------- determinism and caching


def _queries(seed: int, k: int = 40):
    rng = random.Random(seed)
    out = []
    for _ in range(k):
        a, b = sorted(rng.uniform(0.0, 1.0) for _ in range(2))
        out.append((a, b))
    return out


def test_same_entropy_same_path_different_entropy_different():
    qs = _queries(1)
    a = BrownianInterval(0.0, 1.0, size=(4, 2), entropy=123)
    b = BrownianInterval(0.0, 1.0, size=(4, 2), entropy=123)
    c = BrownianInterval(0.0, 1.0, size=(4, 2), entropy=124)
    for ta, tb in qs:
        wa, wb, wc = a(ta, tb), b(ta, tb), c(ta, tb)
        assert torch.equal(wa, wb)
        assert not torch.equal(wa, wc)


@pytest.mark.parametrize("cache_size", [None, 45, 2, 0])
@pytest.mark.parametrize("levy", ["none", "space-time"])
def test_reverse_and_repeated_queries_return_identical_values(cache_size, levy):
    bm = BrownianInterval(0.0, 1.0, size=(3, 2), dtype=torch.float64, entropy=9, cache_size=cache_size,
                          levy_area_approximation=levy)
    grid = [i / 137 for i in range(138)]
    want_U = levy != "none"
    forward = [bm(a, b, return_U=True) if want_U else (bm(a, b),) for a, b in zip(grid, grid[1:])]
    backward = [bm(a, b, return_U=True) if want_U else (bm(a, b),) for a, b in reversed(list(zip(grid, grid[1:])))]
    for f, r in zip(forward, reversed(backward)):
        for x, y in zip(f, r):
            assert torch.equal(x, y)
    # Random re-queries of old intervals (values recomputed after eviction) are identical too.
    rng = random.Random(0)
    for i in rng.sample(range(len(forward)), 30):
        again = bm(grid[i], grid[i + 1], return_U=True) if want_U else (bm(grid[i], grid[i + 1]),)
        for x, y in zip(forward[i], again):
            assert torch.equal(x, y)


def test_values_survive_eviction_and_later_splits():
    bm = BrownianInterval(0.0, 1.0, size=(5,), dtype=torch.float64, entropy=4, cache_size=3)
    first = {q: bm(*q) for q in _queries(2, 30)}
    for q in _queries(3, 30):  # more splits inside the old intervals, and many evictions
        bm(*q)
    for q, w in first.items():
        assert torch.equal(bm(*q), w)


def test_tree_depth_stays_logarithmic_and_reverse_pass_is_linear():
    n = 4096
    bm = BrownianInterval(0.0, 1.0, size=(1,), entropy=0)
    grid = [i / n for i in range(n + 1)]
    for a, b in zip(grid, grid[1:]):
        bm(a, b)
    depth, stack = 0, [(bm._root, 0)]
    while stack:
        node, d = stack.pop()
        depth = max(depth, d)
        if node.mid is not None:
            stack += [(node.left, d + 1), (node.right, d + 1)]
    assert depth <= math.log2(n) + bm._chain + 2, depth
    calls = 0
    original = bm._bridge

    def counting_bridge(node, value):
        nonlocal calls
        calls += 1
        return original(node, value)

    bm._bridge = counting_bridge
    for a, b in reversed(list(zip(grid, grid[1:]))):
        bm(a, b)
    # The default cache (45) holds a chain: recomputing costs about one bridge per query, not O(depth).
    assert calls <= 2 * n, calls


def test_dt_hint_and_tol_rounding():
    bm = BrownianInterval(0.0, 1.0, size=(3,), dtype=torch.float64, entropy=1, dt=1e-3, tol=1e-9)
    w = bm(0.25, 0.5)
    assert torch.equal(bm(0.25 + 1e-12, 0.5 - 1e-12), w)  # same times after rounding to 9 digits
    torch.testing.assert_close(bm(0.25, 0.3) + bm(0.3, 0.5), w, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- space-time Levy area


def test_space_time_levy_area_law():
    bm = BrownianInterval(0.0, 1.0, size=(N_STAT,), dtype=torch.float64, entropy=21,
                          levy_area_approximation="space-time")
    bm(0.0, 0.6)  # the intervals below are then bridge children (left, right, and grandchildren)
    for s, u in [(0.0, 1.0), (0.0, 0.6), (0.6, 1.0), (0.2, 0.45), (0.45, 0.6)]:
        h = u - s
        W, U = bm(s, u, return_U=True)
        H = U / h - 0.5 * W
        _mean_ok(U, h ** 3 / 3)
        _var_ok(U, h ** 3 / 3)  # U = int_s^u (W_r - W_s) dr: Var = h^3 / 3
        _var_ok(H, h / 12)
        _uncorrelated(H, W)
    # The two halves of a split are independent: W's and H's of [0.2, 0.45] and [0.45, 0.6].
    W1, U1 = bm(0.2, 0.45, return_U=True)
    W2, U2 = bm(0.45, 0.6, return_U=True)
    H1, H2 = U1 / 0.25 - 0.5 * W1, U2 / 0.15 - 0.5 * W2
    for x, y in [(W1, W2), (H1, H2), (W1, H2), (H1, W2)]:
        _uncorrelated(x, y)


def test_space_time_levy_area_splitting_identity():
    # U_{s,u} = U_{s,t} + U_{t,u} + (u - t) W_{s,t}, from U_{s,u} = int_s^u (W_r - W_s) dr.
    bm = BrownianInterval(0.0, 1.0, size=(8, 2), dtype=torch.float64, entropy=8,
                          levy_area_approximation="space-time")
    rng = random.Random(1)
    for _ in range(100):
        s, t, u = sorted(rng.uniform(0.0, 1.0) for _ in range(3))
        W, U = bm(s, u, return_U=True)
        W1, U1 = bm(s, t, return_U=True)
        W2, U2 = bm(t, u, return_U=True)
        torch.testing.assert_close(W, W1 + W2, rtol=0, atol=1e-12)
        torch.testing.assert_close(U, U1 + U2 + (u - t) * W1, rtol=0, atol=1e-12)


def test_tiny_subintervals_keep_space_time_area_accurate():
    # A split very near an end: the right child's H is sampled directly, not recovered by dividing by h2.
    bm = BrownianInterval(0.0, 1.0, size=(N_STAT,), dtype=torch.float32, entropy=2,
                          levy_area_approximation="space-time")
    h = 1e-6
    W, U = bm(1.0 - h, 1.0, return_U=True)
    H = U / h - 0.5 * W
    _var_ok(H.double(), h / 12)


def test_given_W_and_H_are_respected():
    W = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    H = torch.tensor([0.1, 0.2, -0.3], dtype=torch.float64)
    bm = BrownianInterval(1.0, 3.0, W=W, H=H, entropy=0, levy_area_approximation="space-time")
    assert bm.shape == (3,) and bm.dtype == torch.float64
    w, u = bm(1.0, 3.0, return_U=True)
    assert torch.equal(w, W)
    torch.testing.assert_close(u, 2.0 * (0.5 * W + H), rtol=0, atol=1e-15)
    torch.testing.assert_close(bm(1.0, 1.7) + bm(1.7, 2.2) + bm(2.2, 3.0), W, rtol=0, atol=1e-12)
    _, u1 = bm(1.0, 1.7, return_U=True)
    w1 = bm(1.0, 1.7)
    _, u2 = bm(1.7, 3.0, return_U=True)
    w2 = bm(1.7, 3.0)
    torch.testing.assert_close(u1 + u2 + 1.3 * w1, u, rtol=0, atol=1e-12)
    assert torch.equal(w1 + 0, w1) and torch.equal(w2, bm(1.7, 3.0))


# ---------------------------------------------------------------- Davie / Foster Levy area


@pytest.mark.parametrize("levy", ["davie", "foster"])
def test_levy_area_shapes_and_antisymmetry(levy):
    bm = BrownianInterval(0.0, 1.0, size=(7, 3), dtype=torch.float64, entropy=1, levy_area_approximation=levy)
    W, A = bm(0.2, 0.5, return_A=True)
    assert W.shape == (7, 3) and A.shape == (7, 3, 3)
    assert torch.equal(A, -A.transpose(-1, -2))
    W, U, A = bm(0.1, 0.9, return_U=True, return_A=True)  # a cover of several nodes: Chen's relation
    assert U.shape == (7, 3) and A.shape == (7, 3, 3)
    assert torch.equal(A, -A.transpose(-1, -2))
    assert A.abs().sum() > 0
    _, A0 = bm(0.4, 0.4, return_A=True)
    assert A0.shape == (7, 3, 3) and not A0.any()
    # One-dimensional sizes are a batch of scalar motions: zero Levy area of W's shape (torchsde).
    bm1 = BrownianInterval(0.0, 1.0, size=(5,), entropy=1, levy_area_approximation=levy)
    _, A1 = bm1(0.2, 0.5, return_A=True)
    assert A1.shape == (5,) and not A1.any()


def test_davie_levy_area_variance_matches_torchsde_normalisation():
    # torchsde: A_ij = H_i W_j - W_i H_j + h/sqrt(12) (N_ij - N_ji): Var = h^2/6 + h^2/6 = h^2/3.
    bm = BrownianInterval(0.0, 1.0, size=(N_STAT // 4, 2), dtype=torch.float64, entropy=6,
                          levy_area_approximation="davie")
    h = 0.5
    _, A = bm(0.25, 0.75, return_A=True)
    _var_ok(A[:, 0, 1], h * h / 3)


# ---------------------------------------------------------------- grid fast path


@pytest.mark.parametrize("levy", ["none", "space-time"])
def test_grid_increments_equal_sequential_calls_bit_for_bit(levy):
    want_U = levy != "none"
    ts = torch.cat([torch.linspace(0.0, 0.5, 37), torch.tensor([0.5001, 0.77, 1.0])]).double()
    grid = ts.tolist()
    a = BrownianInterval(0.0, 1.0, size=(6, 4), dtype=torch.float32, entropy=31, levy_area_approximation=levy)
    b = BrownianInterval(0.0, 1.0, size=(6, 4), dtype=torch.float32, entropy=31, levy_area_approximation=levy)
    fast = a._grid_increments(ts, return_U=want_U)
    slow = [b(x, y, return_U=want_U) for x, y in zip(grid, grid[1:])]
    if want_U:
        assert torch.equal(fast[0], torch.stack([w for w, _ in slow]))
        assert torch.equal(fast[1], torch.stack([u for _, u in slow]))
    else:
        assert fast.shape == (len(grid) - 1, 6, 4)
        assert torch.equal(fast, torch.stack(slow))
    # Decreasing grid (the adjoint's order): row i is bm(ts[i+1], ts[i]), queried in that order.
    rev = grid[::-1]
    fast_rev = a._grid_increments(rev, return_U=want_U)
    slow_rev = [b(y, x, return_U=want_U) for x, y in zip(rev, rev[1:])]
    if want_U:
        assert torch.equal(fast_rev[0], torch.stack([w for w, _ in slow_rev]))
    else:
        assert torch.equal(fast_rev, torch.stack(slow_rev))
        assert torch.equal(fast_rev.flip(0), fast)  # the reverse pass sees the forward increments exactly
    assert a._grid_increments([0.3]).shape == (0, 6, 4)
    with pytest.raises(ValueError, match="ts"):
        a._grid_increments([0.0, 0.5, 0.2])
    with pytest.raises(ValueError, match="return_U"):
        BrownianInterval(0.0, 1.0, size=(2,))._grid_increments([0.0, 1.0], return_U=True)


# ---------------------------------------------------------------- BrownianPath / BrownianTree


def test_brownian_path():
    w0 = torch.full((4, 2), 3.0, dtype=torch.float64)
    bm = BrownianPath(t0=1.0, w0=w0)
    assert bm.shape == (4, 2) and bm.dtype == torch.float64 and bm.device == torch.device("cpu")
    assert bm.levy_area_approximation == "none" and bm.t0 == 1.0 and bm.t1 == 2.0
    torch.testing.assert_close(bm(1.0), w0, rtol=0, atol=0)
    torch.testing.assert_close(bm(1.8) - bm(1.3), bm(1.3, 1.8), rtol=0, atol=1e-12)
    assert torch.equal(bm(1.5), bm(1.5))
    with pytest.raises(TypeError, match="w0"):
        BrownianPath(0.0, [0.0, 1.0])


def test_brownian_tree_is_independent_of_query_order():
    w0 = torch.zeros(6, dtype=torch.float64)
    w1 = torch.arange(6, dtype=torch.float64)
    points = [0.13, 0.9, 0.5, 0.71, 0.02, 0.33]
    a = BrownianTree(t0=0.0, w0=w0, t1=1.0, w1=w1, entropy=17)
    b = BrownianTree(t0=0.0, w0=w0, t1=1.0, w1=w1, entropy=17)
    va = {t: a(t) for t in points}
    vb = {t: b(t) for t in reversed(points)}
    for t in points:
        assert torch.equal(va[t], vb[t])
    torch.testing.assert_close(a(1.0), w1, rtol=0, atol=1e-12)
    torch.testing.assert_close(a(0.33, 0.71), va[0.71] - va[0.33], rtol=0, atol=1e-12)
    assert a._interval.halfway_tree and a._interval.tol == 1e-6
    c = BrownianTree(t0=0.0, w0=w0, entropy=18)
    assert c.t1 == 1.0 and not torch.equal(c(0.5), BrownianTree(t0=0.0, w0=w0, entropy=17)(0.5))


# ---------------------------------------------------------------- the calls torchsde's solvers make


def test_torchsde_solver_calls():
    bm = BrownianInterval(t0=0.0, t1=1.0, size=(3, 2), levy_area_approximation="foster", entropy=0)
    assert bm.size() == (3, 2) and bm._start == 0.0 and bm._end == 1.0
    t0, t1 = torch.tensor(0.25), torch.tensor(0.5)
    I_k = bm(t0, t1)  # euler, milstein, heun, midpoint, reversible_heun
    I_k2, I_k0 = bm(t0, t1, return_U=True)  # srk
    I_k3, A = bm(t0, t1, return_A=True)  # log_ode
    assert torch.equal(I_k, I_k2) and torch.equal(I_k, I_k3) and I_k0.shape == (3, 2) and A.shape == (3, 2, 2)
    rev = ReverseBrownian(bm)  # the adjoint: rev(ta, tb) = bm(-tb, -ta)
    assert rev.shape == bm.shape and rev.levy_area_approximation == "foster"
    assert torch.equal(rev(-0.5, -0.25), I_k)
    W, U = rev(-t1, -t0, return_U=True)
    assert torch.equal(U, I_k0)


# ---------------------------------------------------------------- errors


def test_query_errors():
    bm = BrownianInterval(0.0, 1.0, size=(2,), entropy=0)
    with pytest.raises(ValueError, match="ta.*after the end"):
        bm(1.5, 2.0)
    with pytest.raises(ValueError, match="tb.*after the end"):
        bm(0.5, 1.01)
    with pytest.raises(ValueError, match="ta.*before the start"):
        bm(-0.1, 0.5)
    with pytest.raises(RuntimeError, match="ta <= tb"):
        bm(0.6, 0.5)
    with pytest.raises(ValueError, match="ta <= tb"):
        bm(0.6, 0.5)
    with pytest.raises(ValueError, match="return_U"):
        bm(0.0, 0.5, return_U=True)
    with pytest.raises(ValueError, match="return_A"):
        BrownianInterval(0.0, 1.0, size=(2,), levy_area_approximation="space-time")(0.0, 0.5, return_A=True)
    with pytest.raises(ValueError, match="ta"):
        bm(float("nan"), 0.5)
    with pytest.raises(ValueError, match="ta"):
        bm(torch.tensor([0.1, 0.2]), 0.5)
    with pytest.raises(TypeError, match="tb"):
        bm(0.1, "0.5")
    assert torch.equal(bm(1.0 + 1e-17, 1.0), torch.zeros(2))  # rounding slack at the end
    assert not bm(0.3, 0.3).any()


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(t0=1.0, t1=0.0), ValueError, "t0"),
    (dict(t0="0"), TypeError, "t0"),
    (dict(t1=float("inf")), ValueError, "t1"),
    (dict(dt=-0.1), ValueError, "dt"),
    (dict(dt=[0.1]), TypeError, "dt"),
    (dict(tol=-1.0), ValueError, "tol"),
    (dict(halfway_tree=True), ValueError, "tol"),
    (dict(halfway_tree=True, tol=1e-6, dt=0.1), ValueError, "dt"),
    (dict(halfway_tree=1), TypeError, "halfway_tree"),
    (dict(pool_size=0), ValueError, "pool_size"),
    (dict(pool_size=2.5), TypeError, "pool_size"),
    (dict(cache_size=-1), ValueError, "cache_size"),
    (dict(cache_size=1.5), TypeError, "cache_size"),
    (dict(levy_area_approximation="levy"), ValueError, "levy_area_approximation"),
    (dict(levy_area_approximation=None), TypeError, "levy_area_approximation"),
    (dict(entropy=-1), ValueError, "entropy"),
    (dict(entropy=1.5), TypeError, "entropy"),
    (dict(size=None), ValueError, "size"),
    (dict(size=(2, -1)), ValueError, "size"),
    (dict(size="ab"), TypeError, "size"),
    (dict(dtype=torch.int64), TypeError, "dtype"),
    (dict(dtype="float32"), TypeError, "dtype"),
    (dict(device="nodevice"), ValueError, "device"),
    (dict(W=torch.zeros(3)), ValueError, "W"),
    (dict(W=torch.zeros(2, dtype=torch.float64), dtype=torch.float32), ValueError, "W"),
    (dict(W=torch.zeros(2, dtype=torch.int64)), TypeError, "W"),
    (dict(W=[0.0, 0.0]), TypeError, "W"),
    (dict(size=None, W=torch.zeros(2), H=torch.zeros(3)), ValueError, "H"),
])
def test_constructor_errors_name_the_argument(kwargs, exc, name):
    args = dict(t0=0.0, t1=1.0, size=(2,))
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        BrownianInterval(**args)


def test_defaults_and_properties():
    import numpy as np

    np.random.seed(0)
    a = BrownianInterval(size=(2, 3))
    np.random.seed(0)
    b = BrownianInterval(size=(2, 3))
    assert a.entropy == b.entropy and torch.equal(a(0.5), b(0.5))  # entropy from numpy, as torchsde
    assert a.shape == (2, 3) and a.dtype == torch.get_default_dtype() and a.device == torch.device("cpu")
    assert a.levy_area_approximation == "none" and (a.t0, a.t1) == (0.0, 1.0) and a.cache_size == 45
    assert "BrownianInterval(" in repr(a)
    c = BrownianInterval(0.0, 1.0, size=(2,), dtype=torch.float16, entropy=0)
    assert c(0.0, 0.5).dtype == torch.float16


def test_extreme_widths_keep_their_scale():
    # Found by the fuzzer: products of widths under/overflowed in the bridge (ZeroDivisionError, NaN, lost variance).
    w = BrownianInterval(0.0, 1.0, size=(4000,), dtype=torch.float64, entropy=1)(0.0, 1e-300)
    assert torch.isfinite(w).all() and 0.9e-150 < w.std().item() < 1.1e-150
    w, u = BrownianInterval(0.0, 1.0, size=(4000,), dtype=torch.float64, entropy=2,
                            levy_area_approximation="space-time")(0.0, 1e-80, return_U=True)
    assert torch.isfinite(w).all() and 0.9e-40 < w.std().item() < 1.1e-40
    w = BrownianInterval(0.0, 1e300, size=(4000,), dtype=torch.float64, entropy=3,
                         levy_area_approximation="space-time")(0.0, 1.0)
    assert torch.isfinite(w).all() and 0.9 < w.std().item() < 1.1
    with pytest.raises(ValueError, match="wider than a float can hold"):
        BrownianInterval(-1.7e308, 1.7e308, size=(2,))
    with pytest.raises(ValueError, match="too wide for torch.float32"):
        BrownianInterval(0.0, 1e200, size=(2,))
