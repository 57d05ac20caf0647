"""Neural-network building blocks on fastdiffeq's solvers.

    ConcatSquashLinear(in_features, out_features)        -- FFJORD's time-gated linear layer, forward(t, x)
    ConcatSquashMLP(dim, hidden=(64, 64, 64), activation) -- FFJORD's dynamics network, forward(t, z) -> dz
    CNF(dynamics, *, trace, noise, T, train_T, kinetic, jacobian, method, rtol, atol, gradient, base, ...)
        -- a continuous normalizing flow: forward, inverse, log_prob, sample, regularization
    ACTIVATIONS -- the activation names the networks accept
"""

from ._cnf import CNF
from ._layers import ACTIVATIONS, ConcatSquashLinear, ConcatSquashMLP

__all__ = ["CNF", "ConcatSquashLinear", "ConcatSquashMLP", "ACTIVATIONS"]
