"""Neural-network building blocks on fastdiffeq's solvers.

    MLP(in_features, hidden=(64, 64), out_features=None, activation='tanh') -- a vector field the solvers
        evaluate natively in C++ (no Python call per evaluation)
    ConcatSquashLinear(in_features, out_features)        -- FFJORD's time-gated linear layer, forward(t, x)
    ConcatSquashMLP(dim, hidden=(64, 64, 64), activation) -- FFJORD's dynamics network, forward(t, z) -> dz
    CNF(dynamics, *, trace, noise, T, train_T, kinetic, jacobian, method, rtol, atol, gradient, base, ...)
        -- a continuous normalizing flow: forward, inverse, log_prob, sample, regularization
    SDEBNN(in_features, out_features, *, width, augment_dim, sigma, steps, stl, gradient, backend, readout, ...)
        -- an SDE-BNN (weights follow a posterior SDE): forward(x) -> (prediction, kl)
    LatentSDE(data_size, latent_size, context_size, hidden_size, *, likelihood, noise_std, method, dt, ...)
        -- torchsde's latent SDE as a module: forward(xs, ts) -> (log_likelihood, kl), sample_posterior/prior
    ResidualODE(blocks, *, scheme='euler'|'heun', gradient='backprop'|'reconstruct') -- ResNet / HeunNet as a
        discretised neural ODE, with the memory-free reconstruct gradient (Sander, Ablin, Peyre 2022)
    ACTIVATIONS -- the activation names the networks accept
"""

from ._cnf import CNF
from ._layers import ACTIVATIONS, MLP, ConcatSquashLinear, ConcatSquashMLP
from ._residual import ResidualODE
from ._sde_models import SDEBNN, LatentSDE, LatentSDEOutput

__all__ = ["CNF", "ConcatSquashLinear", "ConcatSquashMLP", "MLP", "ACTIVATIONS", "ResidualODE", "SDEBNN",
           "LatentSDE", "LatentSDEOutput"]
