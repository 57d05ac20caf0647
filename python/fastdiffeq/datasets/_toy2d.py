"""The 2-D toy distributions of FFJORD's experiments, generated with torch's RNG (seeded, reproducible).

Each generator draws the same distribution as FFJORD's (Grathwohl et al. 2019, its toy-data module, which
uses numpy and scikit-learn's make_moons / make_circles / make_swiss_roll); ours is written in torch, so the
draws differ but the distributions are the same. Exactly n points are returned (FFJORD's pinwheel and
2spirals round n down to a multiple of their arm count); structured sets are shuffled.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Optional

import torch

__all__ = ["toy_2d", "TOY_2D", "TOY_2D_ENTROPY"]

# Differential entropy of each distribution in nats: the lowest test NLL any model can reach. 8gaussians and
# checkerboard in closed form (well-separated equal Gaussians: ln 8 + ln(2 pi e sigma^2); a uniform density on
# area 32: ln 32); the others are Monte-Carlo / kernel estimates (the values FFJORD-style papers quote).
TOY_2D_ENTROPY: Dict[str, float] = {
    "8gaussians": math.log(8) + math.log(2 * math.pi * math.e * (0.5 / 1.414) ** 2),
    "checkerboard": math.log(32.0),
    "2spirals": 2.65,
    "pinwheel": 2.32,
    "moons": 2.39,
    "circles": 3.27,
    "rings": 2.63,
    "swissroll": 2.67,
}


def _uniform(n: int, g: Optional[torch.Generator]) -> torch.Tensor:
    return torch.rand(n, dtype=torch.float64, generator=g)


def _normal(shape, g: Optional[torch.Generator]) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64, generator=g)


def _shuffle(x: torch.Tensor, g: Optional[torch.Generator]) -> torch.Tensor:
    return x[torch.randperm(x.shape[0], generator=g)]


def _eight_gaussians(n: int, g: Optional[torch.Generator]) -> torch.Tensor:
    # Centres at radius 4 on the compass points and diagonals, std 0.5, all divided by 1.414 (as FFJORD).
    angles = torch.randint(0, 8, (n,), generator=g).to(torch.float64) * (math.pi / 4)
    centres = 4.0 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return (centres + 0.5 * _normal((n, 2), g)) / 1.414


def _checkerboard(n: int, g: Optional[torch.Generator]) -> torch.Tensor:
    # x1 uniform on [-2, 2); x2 uniform on one of the two unit cells of its column that alternate with x1's.
    x1 = 4.0 * _uniform(n, g) - 2.0
    x2 = _uniform(n, g) - 2.0 * torch.randint(0, 2, (n,), generator=g).to(torch.float64)
    x2 = x2 + torch.remainder(torch.floor(x1), 2.0)
    return 2.0 * torch.stack([x1, x2], dim=1)


def _two_spirals(n: int, g: Optional[torch.Generator]) -> torch.Tensor:
    # Arc-length-uniform angle up to 540 degrees, jittered, the second arm the first's mirror through 0.
    angle = torch.sqrt(_uniform(n, g)) * (540.0 * 2 * math.pi / 360.0)
    x = -torch.cos(angle) * angle + 0.5 * _uniform(n, g)
    y = torch.sin(angle) * angle + 0.5 * _uniform(n, g)
    sign = torch.ones(n, dtype=torch.float64)
    sign[n - n // 2:] = -1.0
    pts = torch.stack([x, y], dim=1) * sign[:, None] / 3.0
    return _shuffle(pts + 0.1 * _normal((n, 2), g), g)


def _pinwheel(n: int, g: Optional[torch.Generator]) -> torch.Tensor:
    # 5 arms; radial std 0.3 around 1, tangential std 0.1, each arm's angle grows with exp(radius) at rate 0.25.
    arms, rate = 5, 0.25
    labels = torch.arange(n) % arms
    feats = _normal((n, 2), g) * torch.tensor([0.3, 0.1], dtype=torch.float64)
    feats[:, 0] += 1.0
    angles = labels.to(torch.float64) * (2 * math.pi / arms) + rate * torch.exp(feats[:, 0])
    c, s = torch.cos(angles), torch.sin(angles)
    rotated = torch.stack([feats[:, 0] * c + feats[:, 1] * s, -feats[:, 0] * s + feats[:, 1] * c], dim=1)
    return _shuffle(2.0 * rotated, g)


def _moons(n: int, g: Optional[torch.Generator]) -> torch.Tensor:
    # Two interleaved half circles (scikit-learn's make_moons, noise 0.1), then scaled by 2 and shifted.
    n_out = n // 2
    n_in = n - n_out
    a_out = torch.linspace(0, math.pi, n_out, dtype=torch.float64)
    a_in = torch.linspace(0, math.pi, n_in, dtype=torch.float64)
    outer = torch.stack([torch.cos(a_out), torch.sin(a_out)], dim=1)
    inner = torch.stack([1.0 - torch.cos(a_in), 1.0 - torch.sin(a_in) - 0.5], dim=1)
    pts = torch.cat([outer, inner]) + 0.1 * _normal((n, 2), g)
    return _shuffle(2.0 * pts + torch.tensor([-1.0, -0.2], dtype=torch.float64), g)


def _circle(count: int, radius: float) -> torch.Tensor:
    a = torch.arange(count, dtype=torch.float64) * (2 * math.pi / max(count, 1))
    return radius * torch.stack([torch.cos(a), torch.sin(a)], dim=1)


def _circles(n: int, g: Optional[torch.Generator]) -> torch.Tensor:
    # Two concentric circles, radii 1 and 0.5 (make_circles, factor 0.5, noise 0.08), scaled by 3.
    n_out = n // 2
    pts = torch.cat([_circle(n_out, 1.0), _circle(n - n_out, 0.5)]) + 0.08 * _normal((n, 2), g)
    return _shuffle(3.0 * pts, g)


def _rings(n: int, g: Optional[torch.Generator]) -> torch.Tensor:
    # Four concentric circles, radii 3, 2.25, 1.5, 0.75, noise std 0.08; the innermost takes the remainder.
    q = n // 4
    pts = torch.cat([_circle(q, 1.0), _circle(q, 0.75), _circle(q, 0.5), _circle(n - 3 * q, 0.25)]) * 3.0
    return _shuffle(pts, g) + 0.08 * _normal((n, 2), g)


def _swissroll(n: int, g: Optional[torch.Generator]) -> torch.Tensor:
    # make_swiss_roll (noise 1.0) projected on its (x, z) plane (the height is projected out), divided by 5.
    t = 1.5 * math.pi * (1.0 + 2.0 * _uniform(n, g))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) + _normal((n, 2), g)
    return pts / 5.0


_GENERATORS: Dict[str, Callable[[int, Optional[torch.Generator]], torch.Tensor]] = {
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "2spirals": _two_spirals,
    "pinwheel": _pinwheel,
    "moons": _moons,
    "circles": _circles,
    "rings": _rings,
    "swissroll": _swissroll,
}

TOY_2D = tuple(_GENERATORS)


def toy_2d(name: str, n: int, *, seed: Optional[int] = None, dtype: torch.dtype = torch.float32,
           device: Optional[torch.device | str] = None) -> torch.Tensor:
    """Draw ``n`` points ``[n, 2]`` from one of FFJORD's 2-D toy distributions.

    Args:
        name: one of :data:`TOY_2D` ('8gaussians', 'checkerboard', '2spirals', 'pinwheel', 'moons', 'circles',
            'rings', 'swissroll').
        n: number of points (>= 1).
        seed: an int makes the draw reproducible and independent of torch's global RNG; None draws from the
            global RNG (reproducible under ``torch.manual_seed``).
        dtype, device: of the returned tensor (drawn in float64 on the CPU, then converted).

    Returns:
        A tensor ``[n, 2]``. :data:`TOY_2D_ENTROPY` holds each distribution's entropy (the NLL floor).
    """
    if name not in _GENERATORS:
        raise ValueError(f"`name` must be one of {list(TOY_2D)}, got {name!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`n` must be a positive int, got {n!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"`seed` must be an int or None, got {type(seed).__name__}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"`dtype` must be a floating torch.dtype, got {dtype!r}")
    g = None
    if seed is not None:
        g = torch.Generator()
        g.manual_seed(seed)
    return _GENERATORS[name](n, g).to(dtype=dtype, device=device)
