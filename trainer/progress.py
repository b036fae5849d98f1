"""Progress of long work: the ``progress(phase, done, total)`` callback protocol, one
overall figure for a job made of several steps (:class:`JobProgress`), and the bar that
shows it on stderr (:class:`ProgressBars`).

The protocol: ``progress(phase, done, total)`` with ``phase`` a line of text saying what
is being done now, and ``done`` / ``total`` integers.  ``bci-train fit``, ``bci-train
sweep`` and the demo's preparation report the *whole job* in ``done`` / ``total`` (a bar
over them ends when the job ends, and the average rate so far gives the time left for the
whole job) and put the detail (which layer, which epoch) in ``phase``.  Simpler producers
(:func:`trainer.synth.generate`) count the items of each phase in turn.  The same
callbacks drive the terminal bar and the desktop window's status bar.
"""

from __future__ import annotations

import sys
from typing import Callable, Mapping

__all__ = ["JobProgress", "Progress", "ProgressBars"]

Progress = Callable[[str, int, int], None]

#: integer resolution of a JobProgress report: the whole job is this many units at first
_UNITS = 10_000


class JobProgress:
    """One overall ``(done, total)`` for a job made of named steps of estimated cost.

    Parameters
    ----------
    report : callable(phase, done, total) | None
        Where the overall progress goes (``None``: nowhere).
    costs : mapping step name -> estimated cost
        In any unit, the same for all steps (e.g. seconds on some machine); only the ratios
        matter.  They shape the time-left estimate while the job is young: a bar's average
        rate is in these units, so the better the ratios, the truer the estimate.

    Each step advances from 0 to 1 through :meth:`update` (or the callback from
    :meth:`callback`); :meth:`skip` drops a step (or the part of it already done, e.g. a
    resumed layer) from the job, so the rate and the time left count only real work.
    ``done`` never goes back while steps only advance.
    """

    def __init__(self, report: Progress | None, costs: Mapping[str, float]):
        if not costs or any(not c >= 0 for c in costs.values()):
            raise ValueError(f"costs must be non-negative numbers, got {dict(costs)!r}")
        self._report = report
        self.costs = {name: float(c) for name, c in costs.items()}
        self.fraction = dict.fromkeys(self.costs, 0.0)
        total = sum(self.costs.values())
        self._scale = _UNITS / total if total > 0 else 1.0

    def update(self, step: str, done: float, total: float, phase: str) -> None:
        """Step ``step`` is ``done / total`` of the way; report the job's progress with ``phase``."""
        self.fraction[step] = max(self.fraction[step], min(1.0, done / total) if total > 0 else 1.0)
        if self._report is not None:
            self._report(phase, *self.done_total())

    def skip(self, step: str, share: float = 1.0) -> None:
        """``share`` of step ``step`` (not started yet) needs no work: take it out of the job."""
        self.costs[step] *= 1.0 - min(max(share, 0.0), 1.0)

    def done_total(self) -> tuple[int, int]:
        """The job's progress as integers ``(done, total)``."""
        done = sum(self.costs[s] * f for s, f in self.fraction.items())
        total = sum(self.costs.values())
        return round(done * self._scale), max(1, round(total * self._scale))

    def callback(self, step: str, prefix: str = "") -> Progress:
        """A ``progress(phase, done, total)`` callback for the work of step ``step`` (a
        sub-job reporting its own done/total), forwarded as ``prefix + phase``."""
        return lambda phase, done, total: self.update(step, done, total, prefix + phase)


class ProgressBars:
    """A ``progress(phase, done, total)`` callback drawing one bar on stderr: the share
    done, the time spent and left (from the average rate since the bar started), then
    ``phase``.  The bar closes when ``done`` reaches ``total``; a report whose ``done``
    goes back (a new phase counting its own items) starts a new bar.  When stderr is not a
    terminal (a log file, CI) there is no bar: a log line every 10 % says the same.  Call
    :meth:`close` at the end."""

    def __init__(self, *, terminal: bool | None = None):
        self.bar = None
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self._logged = (-1, 0.0, 0)  # (tenths logged, start time, last done) when there is no terminal

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.terminal:
            self._log(phase, done, total)
            return
        from tqdm import tqdm

        if self.bar is not None and done < self.bar.n:
            self.close()
        if self.bar is None:
            # smoothing=0: the rate is the average since the start, the right one for a
            # job whose steps were weighted by their cost
            # the detail last: a narrow terminal cuts it, never the bar or the time left
            self.bar = tqdm(total=total, desc=phase, leave=False, file=sys.stderr, disable=None,
                            dynamic_ncols=True, smoothing=0,
                            bar_format="{percentage:3.0f}%|{bar:20}| {elapsed}<{remaining}  {desc}")
        bar = self.bar
        bar.total = total
        bar.set_description_str(phase, refresh=False)
        if done > bar.n:
            bar.update(done - bar.n)  # redraws at most every 0.1 s
        else:
            bar.refresh()  # a new phase text, no progress
        if done >= total:
            self.close()

    def _log(self, phase: str, done: int, total: int) -> None:
        import logging
        import time

        tenths, started, last = self._logged
        if tenths < 0 or done < last:  # a new job, or a new phase counting its own items
            tenths, started = -1, time.monotonic()
        now = min(int(10 * done / total), 10) if total > 0 else 10
        if now > tenths:
            elapsed = time.monotonic() - started
            left = time_left(done, total, elapsed, min_elapsed=0.0)
            left = f", {left}" if left else ""
            logging.getLogger("trainer").info("%d%% done after %s%s: %s", 10 * now, _duration(elapsed), left, phase)
            tenths = now
        self._logged = (tenths, started, done) if done < total else (-1, 0.0, 0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "ProgressBars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def time_left(done: int, total: int, elapsed: float, *, min_elapsed: float = 3.0) -> str | None:
    """"about 1 min 30 s left" for a job ``done`` of ``total`` after ``elapsed`` seconds
    (the average rate since it began), or None before there is enough to tell."""
    if not 0 < done < total or elapsed < min_elapsed:
        return None
    return f"about {_duration(elapsed * (total - done) / done)} left"
