"""liblsl's own log, kept quiet unless the user configured liblsl.

liblsl prints ``ERR| Stream transmission broke off (Input stream error.);
re-connecting...`` whenever the other end of a stream goes away: when a replay ends, when
the amplifier app quits, and at every clean exit of the app itself (closing an inlet ends
its transmission).  The app reports what matters in its own words (a stream that stalls,
comes back, or came back changed), so by default liblsl logs only fatal errors.  A liblsl
configuration of the user's own (``$LSLAPICFG``, ``./lsl_api.cfg``,
``~/lsl_api/lsl_api.cfg`` or ``/etc/lsl_api/lsl_api.cfg``, in liblsl's order) is left in
charge, and so is ``-v``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["quiet_liblsl", "user_liblsl_config"]

QUIET_CONFIG = "; written by bci-app: liblsl logs fatal errors only\n[log]\nlevel = -3\n"


def user_liblsl_config() -> Path | None:
    """The liblsl configuration file liblsl would read, or None."""
    env = os.environ.get("LSLAPICFG")
    if env:
        return Path(env)
    for path in (Path.cwd() / "lsl_api.cfg", Path.home() / "lsl_api" / "lsl_api.cfg", Path("/etc/lsl_api/lsl_api.cfg")):
        if path.is_file():
            return path
    return None


def quiet_liblsl() -> Path | None:
    """Point liblsl at a configuration that logs fatal errors only, unless the user has a
    configuration of their own or liblsl is already loaded.  Returns the file used."""
    if user_liblsl_config() is not None or "mne_lsl.lsl" in sys.modules or "pylsl" in sys.modules:
        return None
    from trainer.config import default_cache_dir
    from trainer.files import atomic_write_text

    path = default_cache_dir() / "lsl_api.cfg"
    try:
        if not path.is_file() or path.read_text() != QUIET_CONFIG:
            atomic_write_text(path, QUIET_CONFIG)
    except OSError:  # a read-only home: liblsl keeps its default log
        return None
    os.environ["LSLAPICFG"] = str(path)  # read when liblsl loads; inherited by bci-replay processes
    return path
