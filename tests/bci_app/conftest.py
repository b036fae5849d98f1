"""Fixtures for the live side: a small fitted bundle and players with unique stream names."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def lead_session(tiny_dataset):
    """The tiny set's first raw test session (subject 1) with 4 s of its own first samples
    played before it, so the live side has connected before the first marker (epochs are
    cut from windows around markers: what comes before them changes nothing).  Shared:
    tests copy ``raw`` before changing it."""
    import mne

    from bci_app.sessions import Marker, ReplaySession, read_session

    base = read_session(tiny_dataset / "raw_data" / "sub-01" / "ses-01" / "raw_eeg_test.npy")
    n = int(4.0 * base.sfreq)
    head = mne.io.RawArray(base.raw.get_data(stop=n), base.raw.info, verbose="error")
    raw = mne.concatenate_raws([head, base.raw.copy()], verbose="error")
    return ReplaySession(raw=raw, markers=[Marker(m.sample + n, m.code, m.label) for m in base.markers],
                         source=base.source)


@pytest.fixture
def stream_name(request):
    """A stream name no other test uses."""
    return f"test-{request.node.name[:30]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def play(stream_name):
    """play(session, **kw) starts a SessionPlayer named after the test (stopped at teardown)."""
    from bci_app.replay import SessionPlayer

    players = []

    def start(session, name=None, **kwargs):
        name = name or stream_name
        kwargs.setdefault("source_id", f"{name}-src")
        player = SessionPlayer(session, name=name, **kwargs)
        player.start()
        players.append(player)
        return player

    yield start
    for p in players:
        if p.running:
            p.stop()


@pytest.fixture
def run_until():
    """run_until(live, n_epochs, timeout) steps a LiveSession until n epochs are decoded;
    returns (records, ready epochs)."""

    def run(live, n_epochs, timeout=60.0):
        records, epochs = [], []
        deadline = time.monotonic() + timeout
        while len(records) < n_epochs and time.monotonic() < deadline:
            out = live.step()
            records += out
            epochs += live.last_epochs if out else []
            time.sleep(0.002)
        return records, epochs

    return run


class CounterOutlet:
    """A real LSL EEG outlet pushing, in real time, samples whose first channel ``CNT``
    counts them (sample k carries k microvolts, exact in the journal's float32), the
    others small noise, each stamped with its own time (``t0 + k / sfreq``).

    ``markers`` (optional): a marker outlet ``{name}-markers`` whose ``mark(k, value)``
    pushes ``value`` stamped with the time of sample ``k``."""

    def __init__(self, name, source_id, ch_names, sfreq, *, chunk=10, dtype="float32", scale=1e-5, markers=None,
                 t0=None):
        from mne_lsl.lsl import StreamInfo, StreamOutlet, local_clock

        self.ch_names, self.sfreq, self.chunk, self.scale = list(ch_names), float(sfreq), int(chunk), scale
        info = StreamInfo(name, "EEG", len(self.ch_names), self.sfreq, dtype, source_id)
        info.set_channel_names(self.ch_names)
        info.set_channel_types("eeg")
        info.set_channel_units("volts")
        self.dtype = np.dtype(dtype)
        self.outlet = StreamOutlet(info, self.chunk)
        self.marker_outlet = None
        if markers is not None:
            minfo = StreamInfo(f"{name}-markers", "Markers", 1, 0.0, markers, f"{source_id}-markers")
            self.marker_outlet = StreamOutlet(minfo)
        self.marker_dtype = markers
        self.t0 = local_clock() + 0.05 if t0 is None else t0
        self.sent = 0
        self.stamp_offset = 0.0  # added to the stamps from now on (a clock jump)
        self.limit = None  # when set: samples from this one on are not sent (the sender pauses)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._rng = np.random.default_rng(0)

    def samples(self, first, n):
        data = self._rng.normal(size=(n, len(self.ch_names))) * self.scale
        data[:, 0] = np.arange(first, first + n) * 1e-6
        return data.astype(self.dtype) if self.dtype.kind == "f" else np.round(data).astype(self.dtype)

    def time_of(self, k):
        return self.t0 + k / self.sfreq + self.stamp_offset

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        from mne_lsl.lsl import local_clock

        while not self._stop.is_set():
            due = int((local_clock() - self.t0) * self.sfreq) + 1
            if self.limit is not None:
                due = min(due, self.limit)
            while self.sent + self.chunk <= due and not self._stop.is_set():
                k = self.sent
                stamps = self.time_of(k) + np.arange(self.chunk) / self.sfreq
                if self.chunk == 1:
                    self.outlet.push_sample(self.samples(k, 1)[0], timestamp=float(stamps[0]))
                else:
                    self.outlet.push_chunk(self.samples(k, self.chunk), timestamp=stamps)
                self.sent += self.chunk
            time.sleep(min(0.001, self.chunk / self.sfreq / 2))

    def mark(self, k, value):
        sample = [value] if self.marker_dtype == "string" else np.array([value], dtype=self.marker_dtype)
        self.marker_outlet.push_sample(sample, timestamp=self.time_of(k))

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for outlet in (self.outlet, self.marker_outlet):
            if outlet is not None:
                outlet._del()  # gone from the network now, as an amplifier app that quits


@pytest.fixture
def counter_outlet(stream_name):
    """counter_outlet(ch_names, sfreq, **kw) starts a CounterOutlet named after the test
    (stopped at teardown)."""
    outlets = []

    def start(ch_names, sfreq, *, name=None, **kwargs):
        name = name or stream_name
        outlet = CounterOutlet(name, kwargs.pop("source_id", f"{name}-src"), ch_names, sfreq, **kwargs).start()
        outlets.append(outlet)
        return outlet

    yield start
    for o in outlets:
        o.stop()


@pytest.fixture
def free_display():
    """free_display() -> a display number no X server uses (no socket file, no lock, no
    abstract socket)."""
    from pathlib import Path

    def find() -> int:
        try:
            unix = Path("/proc/net/unix").read_text()
        except OSError:
            unix = ""
        for n in range(170, 400):
            if not (Path(f"/tmp/.X11-unix/X{n}").exists() or Path(f"/tmp/.X{n}-lock").exists()
                    or f"@/tmp/.X11-unix/X{n}\n" in unix):
                return n
        pytest.skip("no free X display number")

    return find


@pytest.fixture
def xvfb(tmp_path, free_display):
    """start(auth=False) runs Xvfb on a free display; returns the display name."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (apt-get install xvfb)")
    procs = []

    def start(auth: Path | None = None) -> str:
        n = free_display()
        cmd = ["Xvfb", f":{n}", "-nolisten", "tcp", "-screen", "0", "1024x768x24"]
        if auth is not None:
            cmd += ["-auth", str(auth)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(proc)
        deadline = time.monotonic() + 20
        while not Path(f"/tmp/.X11-unix/X{n}").exists():
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
            assert time.monotonic() < deadline, "Xvfb did not start"
            time.sleep(0.05)
        return f":{n}"

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()
