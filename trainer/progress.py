"""Progress bars on stderr for ``progress(phase, done, total)`` callbacks (synthetic data
generation, fitting, the demo's preparation)."""

from __future__ import annotations

import sys

__all__ = ["ProgressBars"]


class ProgressBars:
    """A ``progress(phase, done, total)`` callback drawing one tqdm bar per phase on stderr
    (hidden when stderr is not a terminal); a bar closes when its phase is done.  Call
    :meth:`close` at the end."""

    def __init__(self):
        self.bars: dict = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(phase)
        if bar is None:
            bar = self.bars[phase] = tqdm(total=total, desc=phase, unit="", leave=False, file=sys.stderr,
                                          disable=None, dynamic_ncols=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
