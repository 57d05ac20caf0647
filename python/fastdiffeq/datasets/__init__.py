"""Toy datasets for density estimation.

    toy_2d(name, n, *, seed=None, dtype=torch.float32, device=None) -> Tensor[n, 2]
    TOY_2D          -- the names: 8gaussians, checkerboard, 2spirals, pinwheel, moons, circles, rings, swissroll
    TOY_2D_ENTROPY  -- each distribution's differential entropy in nats (the best test NLL a model can reach)
"""

from ._toy2d import TOY_2D, TOY_2D_ENTROPY, toy_2d

__all__ = ["toy_2d", "TOY_2D", "TOY_2D_ENTROPY"]
