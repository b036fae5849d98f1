"""The live pipeline: streams -> online epochs -> decoder -> results (+ recording).

:class:`LiveSession` is what the headless app runs in its main loop and what the desktop
app runs in its decoding process (:mod:`bci_app.live_loop`): call :meth:`LiveSession.step`
after each :meth:`LiveSession.wait` (which returns when the chunk completing the next epoch
arrives); it returns the decoded epochs as plain dicts (the JSON lines of ``bci-app
--headless``).
It waits on the network only while the EEG stream is gone: once a second it looks the
stream up again by name (0.2 s).  It notices a stream that stops (``stalled``), keeps
what it recorded, and goes on when the stream comes back (liblsl reconnects to the same
source id by itself; a stream that was torn down is subscribed to again).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.bundle import Bundle

from .decoder import Decoder, StimulusMap
from .epochs import MarkerEvent, OnlineEpocher
from .recording import RecorderFeed, SessionRecorder
from .streams import ConnectCancelled, EEGSource, StreamChanged, StreamError, list_streams, open_markers

__all__ = ["LiveSession", "SessionStats", "default_marker_stream", "json_marker", "marker_label"]

logger = logging.getLogger("bci_app")


def default_marker_stream(eeg_name: str, timeout: float = 2.0, cancel=None) -> str:
    """``{eeg}-markers`` when it exists (bci-replay's naming), else the only irregular
    stream on the network."""
    from mne_lsl.lsl import resolve_streams

    conventional = f"{eeg_name}-markers"
    if any(s.sfreq == 0 for s in resolve_streams(timeout=min(timeout, 1.0), name=conventional)):
        return conventional
    if cancel is not None and cancel():
        raise ConnectCancelled(f"stopped looking for the marker stream of {eeg_name!r}")
    streams = list_streams(timeout=timeout)
    markers = [s for s in streams if s.is_marker]
    if len({s.name for s in markers}) == 1:
        return markers[0].name
    if not markers:
        raise StreamError(f"no marker stream found (streams seen: {', '.join(s.name for s in streams) or 'none'}); "
                          "give --markers NAME")
    raise StreamError("several marker streams: " + ", ".join(sorted({s.name for s in markers})) + "; give --markers NAME")


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    v = np.asarray(values) * 1000.0
    return {"p50_ms": round(float(np.percentile(v, 50)), 3), "p99_ms": round(float(np.percentile(v, 99)), 3),
            "max_ms": round(float(v.max()), 3), "n": len(v)}


@dataclass
class SessionStats:
    epochs: int = 0
    markers: int = 0
    unknown_markers: int = 0
    catch_markers: int = 0
    unknown_values: dict = field(default_factory=dict)
    hits1: int = 0
    hits5: int = 0
    scored: int = 0
    decision_latency: list = field(default_factory=list)
    decision_wait: list = field(default_factory=list)  # per epoch: window complete -> taken up (shed beyond max_delay)
    decision_compute: list = field(default_factory=list)  # per batch: taken up -> decided (preprocessing and model)
    marker_latency: list = field(default_factory=list)
    last_avg: dict = field(default_factory=dict)  # stimulus id -> (topk, n)
    stalls: int = 0
    stages: dict = field(default_factory=dict)  # provisional window end -> [decided, scored, hits1, hits5]
    stage_latency: dict = field(default_factory=dict)  # provisional window end -> marker-to-decision seconds


class LiveSession:
    """Decode a live stream with a bundle.

    Parameters
    ----------
    bundle : Bundle
    stream : str
        EEG stream name.
    markers : str | None
        Marker stream name (default: see :func:`default_marker_stream`).
    device : str
    top_k : int
    record : path-like | None
        Folder for the recording (see :mod:`bci_app.recording`).
    stall_timeout : float
        Seconds without samples before the stream is reported stalled.
    no_data_timeout : float
        Seconds a marker waits for its samples before it is rejected ("no data").
    timeout : float
        Seconds to wait for the streams when connecting.
    buffer_seconds : float
        Seconds of the stream kept in memory (the raw window of every epoch, and what the
        recording may fall behind, must fit).
    """

    def __init__(self, bundle: Bundle, stream: str, *, markers: str | None = None, device: str = "auto",
                 top_k: int = 5, record: str | Path | None = None, stall_timeout: float = 2.0,
                 timeout: float = 5.0, source_id: str | None = None, no_data_timeout: float = 5.0,
                 buffer_seconds: float = 30.0):
        self.bundle = bundle
        self.stream_name = stream
        self.marker_name = markers
        self.stall_timeout = float(stall_timeout)
        self.no_data_timeout = float(no_data_timeout)
        self.timeout = float(timeout)
        self.decoder = Decoder(bundle, device=device, top_k=top_k)
        self.stimuli = StimulusMap(bundle)
        self.source = EEGSource(stream, source_id=source_id, bufsize=buffer_seconds)
        self.record_dir = Path(record) if record is not None else None
        self.recorder = None
        self.feed: RecorderFeed | None = None
        self.markers = None
        self.epocher: OnlineEpocher | None = None
        self.stats = SessionStats()
        self.status = "idle"
        self.problems: list[str] = []  # what went wrong but did not stop decoding (in the summary)
        self._last_reconnect = 0.0
        self.events: list[str] = []  # status messages for the GUI / log
        self.last_epochs: list = []
        self.last_markers: list[MarkerEvent] = []  # the markers received in the last step

    # -- lifecycle --------------------------------------------------------------------
    def start(self, cancel=None) -> "LiveSession":
        """Connect to the streams (waiting up to ``timeout`` for each).  ``cancel``: a
        callable; when it turns true while streams are looked for, :class:`ConnectCancelled`
        is raised within about half a second."""
        self.source.connect(timeout=self.timeout, cancel=cancel)
        self.epocher = OnlineEpocher(self.bundle.spec, self.source,  # checks channels, rate and buffer first
                                     no_data_timeout=self.no_data_timeout,
                                     stages=[w["end"] for w in self.bundle.windows])
        name = self.marker_name or default_marker_stream(self.stream_name, timeout=min(self.timeout, 2.0),
                                                         cancel=cancel)
        self.markers = open_markers(name, timeout=self.timeout, cancel=cancel)
        self.marker_name = name
        if self.record_dir is not None:
            self.start_recording(self.record_dir, from_start=True)
        self.status = "connected"
        logger.info("decoding stream %r with markers %r on %s; raw window %.3f..%.3f s around each marker",
                    self.stream_name, name, self.decoder.device, *self.epocher.window_seconds)
        return self

    def start_recording(self, folder: str | Path, *, from_start: bool = False) -> None:
        """Record into ``folder`` (a new folder; see :mod:`bci_app.recording`) from the next
        sample on, or with ``from_start`` from the oldest sample still buffered."""
        if self.recorder is not None:
            raise RuntimeError(f"already recording into {self.recorder.folder}")
        if self.epocher is None:
            raise RuntimeError("start the session before recording")
        recorder = SessionRecorder(folder, self.source.ch_names, self.source.sfreq, info={
            "stream": self.stream_name, "source_id": self.source.source_id, "markers": self.marker_name,
            "bundle": str(self.bundle.path), "device": str(self.decoder.device),
            # the part numeric markers count in, as the marker stream announces it (bci-train adapt reads it)
            **({"image_set": self.markers.image_set} if getattr(self.markers, "image_set", None) else {})})
        self.recorder = recorder
        self.record_dir = Path(folder)
        self.feed = RecorderFeed(self.source, recorder, self.source.oldest if from_start else self.source.n_total)

    def stop_recording(self) -> Path | None:
        """Finish the recording (the journal becomes ``recording-raw.fif``); returns that
        file (None when nothing was recorded, or the recording failed: see ``problems``)."""
        if self.recorder is None:
            return None
        self._record(lambda rec: self.feed.feed())
        return self._finish_recording(self.summary())

    def _finish_recording(self, summary: dict) -> Path | None:
        rec, self.recorder = self.recorder, None
        if rec is None:
            return None
        try:
            return rec.close(summary)
        except OSError as err:
            rec.abort()
            self.note(f"recording: could not finish {rec.folder} ({err}); its journal holds what was recorded: "
                      f"'bci-app recover {rec.folder}' makes recording-raw.fif from it")
            self.problems.append(f"recording not finished: {err}")
            return None

    def _record(self, write: Callable[[SessionRecorder], Any]) -> None:
        """``write(recorder)`` when recording; a write that fails (a full disk) stops the
        recording, not the session (and later writes of the same step are skipped)."""
        rec = self.recorder
        if rec is None:
            return
        try:
            write(rec)
        except OSError as err:
            rec.abort()
            self.recorder = None
            message = (f"recording stopped: {err}; decoding goes on. {rec.folder} keeps what reached the disk "
                       f"({rec.n_written} samples); 'bci-app recover {rec.folder}' makes recording-raw.fif from it "
                       "once there is room")
            self.note(message, logging.ERROR)
            self.problems.append(f"recording stopped after {rec.n_written} samples: {err}")

    def _record_marker(self, m: MarkerEvent) -> None:
        if self.recorder is not None:
            sample = self._marker_sample(m)
            self._record(lambda rec: rec.add_marker(m.t, m.label, sample))

    def _marker_sample(self, m: MarkerEvent) -> int | None:
        """The recording sample of marker ``m`` (its onset; or, for a marker rejected before
        it was placed, the sample at its time), None when that sample is not recorded."""
        onset = m.onset
        if onset is None:
            found = self.source.find_sample(m.t)
            if found is not None and abs(found[1]) <= 1.0 / self.source.sfreq:
                onset = found[0]
        return self.feed.recording_sample(onset)

    def close(self) -> dict:
        """Stop, finish the recording, return the summary."""
        # stop acquisition first, so the recording holds every sample the summary counts
        if self.markers is not None:
            self.markers.close()
        self.source.disconnect()
        if self.recorder is not None:
            self.source.finish()  # samples still held back after a gap: checked, then recorded
        self.status = "closed"
        self._record(lambda rec: self.feed.feed())
        if self.epocher is not None:
            for m in self.epocher.pending:  # their windows were not complete: not decoded, but recorded
                self._record_marker(m)
        summary = self.summary()
        if self.recorder is not None:
            path = self._finish_recording(summary)
            if path is not None:
                summary["recording"] = str(path)
            summary["problems"] = list(self.problems)
        return summary

    # -- one step ---------------------------------------------------------------------
    def wait(self, timeout: float = 0.05) -> bool:
        """Sleep until the chunk that completes the next pending epoch's window is in (any
        chunk while a marker is not placed yet), at most ``timeout`` s; markers, the
        recording and the stream checks are taken care of by the next :meth:`step`.  The
        live loop is ``while ...: session.wait(); session.step()``: an epoch is decided as
        soon as its last chunk arrives, and between epochs the loop wakes ``1 / timeout``
        times a second, not at every chunk."""
        until = self.epocher.next_complete() if self.epocher is not None else None
        return self.source.wait(timeout, until)

    def note(self, text: str, level: int = logging.WARNING) -> None:
        """Log ``text`` and keep it for the window's event log."""
        logger.log(level, text)
        self.events.append(text)

    def _check_stream(self, now: float) -> None:
        src = self.source
        src.raise_if_changed()  # a check found the stream back with other channels or rate
        src.check_identity()  # after a gap (no-op otherwise)
        if src.connected and src.last_arrival is not None:
            silent = now - src.last_arrival
            if self.status != "stalled" and silent > self.stall_timeout:
                self.status = "stalled"
                self.stats.stalls += 1
                self.note(f"stream {self.stream_name!r}: no data for {silent:.1f} s; waiting for it to come back "
                          f"(recorded so far is kept)")
            elif self.status == "stalled" and silent < self.stall_timeout:
                self.status = "connected"
                self.note(f"stream {self.stream_name!r}: data again", logging.INFO)
            if self.status == "stalled":
                src.check_identity(stalled=True)  # a restart with other channels never reconnects by itself
        if not src.connected and now - self._last_reconnect > 1.0:
            self._last_reconnect = now
            if self.status != "lost":
                self.status = "lost"
                self.note(f"stream {self.stream_name!r} is gone; looking for it again")
            try:
                src.connect(timeout=0.2)
                self.status = "connected"
                self.note(f"stream {self.stream_name!r} is back", logging.INFO)
            except StreamChanged:
                raise
            except StreamError:
                pass
            except Exception as err:  # liblsl/mne-lsl errors while the network is in flux: try again later
                logger.debug("reconnect failed: %s", err)

    def _take_markers(self, now: float) -> list[MarkerEvent]:
        try:
            incoming = self.markers.poll() if self.markers is not None else []
        except Exception as err:  # a marker stream that broke: say so, keep decoding what is pending
            if self.status != "markers lost":
                self.note(f"marker stream {self.marker_name!r}: {type(err).__name__}: {err}")
            self.status = "markers lost"
            incoming = []
        received = []
        for t, value in incoming:
            sid = self.stimuli(value)
            self.stats.markers += 1
            label = marker_label(value)
            if sid is None:
                if self.stimuli.is_catch(value):
                    self.stats.catch_markers += 1
                else:
                    self.stats.unknown_markers += 1
                    if label not in self.stats.unknown_values and len(self.stats.unknown_values) < 20:
                        logger.warning("marker %r is not a stimulus of this bundle's gallery (decoded, no stimulus id)",
                                       label)
                    self.stats.unknown_values[label] = self.stats.unknown_values.get(label, 0) + 1
            event = MarkerEvent(t=t, value=value, stimulus_id=sid, label=label, received=now)
            self.epocher.add(event)
            received.append(event)
        return received

    def step(self) -> list[dict[str, Any]]:
        """Take new markers and samples; return the epochs decoded now."""
        from mne_lsl.lsl import local_clock

        now = local_clock()
        self._check_stream(now)
        self.last_markers = self._take_markers(now)
        ready, rejected = self.epocher.poll(now)
        provisional = self.epocher.take_provisional()
        for text in self.epocher.take_notes():
            self.note(text)
        self.last_epochs = ready  # the preprocessed epochs behind this step's results
        self._record(lambda rec: self.feed.feed())
        for m, reason in rejected:
            self._record_marker(m)
            logger.info("epoch at marker %s (t=%.3f) rejected: %s", m.label, m.t, reason)
        out = self._provisional(provisional) if provisional else []
        if not ready:
            return out
        preds = self.decoder.decode(np.stack([r.epoch for r in ready]), [r.marker.stimulus_id for r in ready])
        t_decided = local_clock()
        self.stats.decision_compute.append(t_decided - now)
        for r, p in zip(ready, preds):
            m = r.marker
            self.stats.epochs += 1
            rec = self._line(m, p, self.stats.epochs, float(self.bundle.spec.tmax), r.t_ready, t_decided)
            if m.stimulus_id is not None:
                self.stats.scored += 1
                self.stats.hits1 += p.topk[0] == m.stimulus_id
                self.stats.hits5 += m.stimulus_id in p.topk[:5]
                self.stats.last_avg[m.stimulus_id] = p.avg_topk
            self.stats.decision_latency.append(t_decided - r.t_ready)
            self.stats.decision_wait.append(now - r.t_ready)
            self.stats.marker_latency.append(t_decided - m.t)
            self._record_marker(m)
            self._record(lambda recorder: recorder.add_prediction(rec))  # noqa: B023 (called now)
            out.append(rec)
        return out

    def _line(self, m: MarkerEvent, p, epoch: int | None, window: float, t_ready: float, t_decided: float) -> dict[str, Any]:
        """The JSON line of a decision: of a whole epoch (its count ``epoch``), or provisional
        (``epoch`` None) on the epoch's first ``window`` seconds."""
        return {
            "epoch": epoch,
            "marker": json_marker(m.value),
            "stimulus_id": m.stimulus_id,
            "topk": p.topk,
            "confidence": [round(c, 6) for c in p.confidence],
            "calibrated": self.decoder.calibrated,
            "window": window,
            "provisional": epoch is None,
            "averaged": None if p.avg_topk is None else {
                "topk": p.avg_topk, "confidence": [round(c, 6) for c in p.avg_confidence], "n": p.n_averaged},
            "t_marker": m.t,
            "t_ready": t_ready,
            "t_decided": t_decided,
        }

    def _provisional(self, epochs: list) -> list[dict[str, Any]]:
        """Records of provisional decisions (``--windows`` bundles), stage by stage; scored
        per stage, but neither counted as decoded epochs nor averaged (the whole epoch is)."""
        from mne_lsl.lsl import local_clock

        out = []
        for stage in sorted({e.stage for e in epochs}):
            group = [e for e in epochs if e.stage == stage]
            preds = self.decoder.decode_stage(np.stack([e.epoch for e in group]), stage)
            t_decided = local_clock()
            for e, p in zip(group, preds):
                m = e.marker
                counts = self.stats.stages.setdefault(e.end, [0, 0, 0, 0])
                counts[0] += 1
                if m.stimulus_id is not None:
                    counts[1] += 1
                    counts[2] += p.topk[0] == m.stimulus_id
                    counts[3] += m.stimulus_id in p.topk[:5]
                self.stats.stage_latency.setdefault(e.end, []).append(t_decided - m.t)
                rec = self._line(m, p, None, e.end, e.t_ready, t_decided)
                self._record(lambda recorder: recorder.add_prediction(rec))  # noqa: B023 (called now)
                out.append(rec)
        return out

    # -- summary ----------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        s = self.stats
        avg = [(sid, topk) for sid, topk in s.last_avg.items() if topk]
        rejected = dict(self.epocher.rejected) if self.epocher is not None else {}
        return {
            "stream": self.stream_name,
            "markers_stream": self.marker_name,
            "device": str(self.decoder.device),
            "epochs_decoded": s.epochs,
            "markers_seen": s.markers,
            "markers_unknown": s.unknown_markers,
            "unknown_values": dict(list(s.unknown_values.items())[:20]),
            "catch_markers": s.catch_markers,
            "epochs_rejected": rejected,
            "epochs_pending": len(self.epocher.pending) if self.epocher is not None else 0,
            "samples_received": self.source.n_total,
            "samples_lost": self.source.samples_lost,
            "gaps": len(self.source.gaps),
            "stalls": s.stalls,
            "single_trial": {"n": s.scored, "top1": s.hits1 / s.scored if s.scored else None,
                             "top5": s.hits5 / s.scored if s.scored else None},
            "averaged": {"n_stimuli": len(avg),
                         "top1": float(np.mean([t[0] == sid for sid, t in avg])) if avg else None,
                         "top5": float(np.mean([sid in t[:5] for sid, t in avg])) if avg else None},
            # provisional decisions (--windows bundles), per window end
            "provisional": {f"{end:g}": {"decided": c[0], "n": c[1], "top1": c[2] / c[1] if c[1] else None,
                                         "top5": c[3] / c[1] if c[1] else None,
                                         "marker_to_decision_latency": _percentiles(s.stage_latency.get(end, []))}
                            for end, c in sorted(s.stages.items())},
            "decision_latency": _percentiles(s.decision_latency),
            # its two parts: waiting to be taken up (at most the epocher's max_delay: older
            # epochs are shed), and the step's preprocessing and model, per batch
            "decision_wait": _percentiles(s.decision_wait),
            "decision_compute": _percentiles(s.decision_compute),
            "marker_to_decision_latency": _percentiles(s.marker_latency),
            "problems": list(self.problems),
        }


def marker_label(value: Any) -> str:
    """The text a marker value is logged and recorded under."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def json_marker(value: Any) -> int | float | str:
    """A marker value as it goes into a JSON line: numbers stay numbers (integral floats
    as ints), strings stay strings, and what strict JSON has no number for (NaN, Inf)
    becomes its text."""
    if isinstance(value, (bool, np.bool_)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return str(value)
        return int(value) if value.is_integer() else value
    return str(value)
