"""``progress=True``: a tqdm bar of integration time for long solves (as diffrax's progress meter).

The C++ loops call a :class:`ProgressBar` with ``(fraction, t)`` -- the fraction of the integration span done
and the time reached -- at most every ``interval`` seconds (``ProgressSink`` in csrc/solver/progress.h); with
progress off no callback exists and the loops compute nothing for it. One bar per solve: odeint's forward
solve, and odeint_adjoint's forward and backward (reverse-time) solves. tqdm is an optional dependency (the
``examples`` extra): it is imported only when a bar is asked for.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

__all__ = ["ProgressBar", "progress_bar", "check_progress"]

_RESOLUTION = 1000  # bar units: tenths of a percent of the integration span


def check_progress(progress: object) -> bool:
    if not isinstance(progress, bool):
        raise TypeError(f"`progress` must be True or False, got {type(progress).__name__}")
    return progress


def _tqdm():
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError(
            "fastdiffeq: progress=True draws its bar with tqdm, which is not installed: "
            "`pip install tqdm` (or `pip install 'fastdiffeq[examples]'`)"
        ) from e
    return tqdm


class ProgressBar:
    """A tqdm bar over the integration span [t0, t1]; called as ``bar(fraction, t)`` by the solver."""

    interval = 0.1  # seconds between updates from the C++ loop (tqdm's own default refresh interval)

    def __init__(self, t0: float, t1: float, desc: str) -> None:
        self.t0, self.t1 = t0, t1
        # e.g. "odeint:  42%|████▏     | [00:03<00:04, t=2.1/5]"
        self._bar = _tqdm()(total=_RESOLUTION, desc=desc, leave=True, dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]")
        self._set(0.0, t0)

    def _set(self, fraction: float, t: float) -> None:
        n = int(round(min(max(fraction, 0.0), 1.0) * _RESOLUTION))
        self._t = t
        self._bar.set_postfix_str(f"t={t:.4g}/{self.t1:.4g}", refresh=False)
        if n > self._bar.n:
            self._bar.update(n - self._bar.n)
        else:
            self._bar.refresh()

    def __call__(self, fraction: float, t: float) -> None:
        self._set(fraction, t)

    def close(self, done: bool, t: Optional[float] = None) -> None:
        """Finish the bar: at 100% and t1 after a successful solve, else where the solve stopped (at ``t``
        when known, else at the last reported time)."""
        if done:
            self._set(1.0, self.t1)
        else:
            t = self._t if t is None else t
            self._bar.set_postfix_str(f"t={t:.4g}/{self.t1:.4g}, stopped", refresh=False)
        self._bar.close()


def progress_bar(enabled: bool, t: torch.Tensor, desc: str, reverse: bool = False):
    """A context manager giving a :class:`ProgressBar` for one solve over the span of the 1-D CPU tensor ``t``
    (``reverse``: from t[-1] to t[0]), or None when ``enabled`` is False (then nothing is read or imported).
    The bar is completed when the block exits normally and left where the solve stopped when it raises."""
    if not enabled:
        return contextlib.nullcontext()
    t0, t1 = float(t[0]), float(t[-1])
    return _bar_context(ProgressBar(t1, t0, desc) if reverse else ProgressBar(t0, t1, desc))


@contextlib.contextmanager
def _bar_context(bar: ProgressBar) -> Iterator[ProgressBar]:
    try:
        yield bar
    except BaseException as e:
        bar.close(done=False, t=getattr(e, "t", None))  # a SolverError carries the time the solve reached
        raise
    bar.close(done=True)
