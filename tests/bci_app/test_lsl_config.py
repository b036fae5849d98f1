"""liblsl's own log at the app's exits: quiet unless the user configured liblsl."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    if sys.argv[1] == "quiet":
        from bci_app.lsl_config import quiet_liblsl
        quiet_liblsl()
    from mne_lsl.lsl import StreamInfo, StreamInlet, StreamOutlet, resolve_streams
    name = sys.argv[2]
    outlet = StreamOutlet(StreamInfo(name, "EEG", 1, 100.0, "float32", name + "-src"))
    found = resolve_streams(timeout=15.0, name=name)  # returns as soon as the stream is seen
    if not found:
        sys.exit(f"stream {name} not found")
    # recover=False: once liblsl's data thread has dealt with the break (logged it, when its
    # log level lets it), pulling raises LostError, so this process can wait for exactly that
    inlet = StreamInlet(found[0], recover=False)
    inlet.open_stream(timeout=15.0)
    outlet.push_sample(np.zeros(1, np.float32))
    time.sleep(0.3)
    del outlet  # the other end goes away, as at a replay's or an amplifier app's exit
    # Exiting earlier would shut the inlet down first, and liblsl says nothing about a break
    # it sees while shutting down: wait until it has noticed (a moment; longer when loaded).
    deadline = time.monotonic() + 15.0
    while True:
        try:
            inlet.pull_sample(timeout=0.05)
        except RuntimeError as err:  # mne_lsl's LostError
            if type(err).__name__ != "LostError":
                raise
            break
        if time.monotonic() > deadline:
            sys.exit("liblsl did not notice within 15 s that the outlet was gone")
""")


def _run(mode, tmp_path, stream_name, **env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("LSLAPICFG", "SHALLOW_BCI_CACHE")}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"), **env_extra)
    return subprocess.run([sys.executable, "-c", SCRIPT, mode, stream_name], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_liblsl_says_nothing_when_a_stream_ends_unless_the_user_configured_it(tmp_path, stream_name):
    loud = _run("loud", tmp_path, stream_name)
    assert loud.returncode == 0, loud.stderr
    assert "ERR| Stream transmission broke off" in loud.stderr  # what users saw at every exit
    quiet = _run("quiet", tmp_path, stream_name + "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert "ERR|" not in quiet.stderr and "INFO|" not in quiet.stderr
    assert (tmp_path / "cache" / "shallow-bci" / "lsl_api.cfg").is_file()
    # a configuration of the user's own stays in charge
    own = tmp_path / "lsl_api.cfg"
    own.write_text("[log]\nlevel = 0\n")
    kept = _run("quiet", tmp_path, stream_name + "-own")
    assert kept.returncode == 0, kept.stderr
    assert "ERR| Stream transmission broke off" in kept.stderr
