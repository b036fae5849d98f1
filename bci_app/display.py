"""Can Qt open a window here, and if not, why?

Qt does not fail politely.  On a Linux machine without some of the system libraries its
xcb platform plugin links against (a bare Debian or Ubuntu lacks ``libxcb-cursor0``,
``libxcb-icccm4``, ``libxcb-keysyms1``, ...), creating the application prints a hint that
is often wrong ("From 6.5.0, xcb-cursor0 or libxcb-cursor0 is needed", also when that one
is installed and another library is missing), "Reinstalling the application may fix this
problem" (it does not), and aborts the process (SIGABRT, exit code 134).  With ``DISPLAY``
naming a display where no X server runs, it aborts the same way.

So the window is first tried in a subprocess: a tiny probe creates a ``QGuiApplication``
with the caller's environment, with a Qt message handler that turns Qt's fatal error into
a plain exit.  When the probe fails, its messages, ``ldd`` of the platform plugin and a
``dlopen`` of the libraries Qt loads at run time tell which system libraries are missing,
and :func:`package_for_soname` names the Debian/Ubuntu packages that hold them, so the
user gets one line with the exact ``apt-get install`` command instead of an abort.

No Qt import here: the caller's process never loads Qt to find out.  The probe is skipped
for ``QT_QPA_PLATFORM=offscreen`` (or ``minimal``), which draws in memory and needs no
display and no platform libraries beyond those of QtGui itself.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from trainer.errors import BCIError

__all__ = ["WindowSupport", "WindowUnavailableError", "check_window_support", "require_window_support",
           "package_for_soname", "install_command", "parse_ldd_missing", "parse_qt_messages", "QtMessages"]

# what a result says, in one word (WindowSupport.kind)
KINDS = ("ok", "offscreen", "missing-libraries", "no-display", "cannot-connect", "no-qt", "timeout", "failed")

# platforms that draw in memory: nothing to connect to, nothing to probe
_IN_MEMORY = ("offscreen", "minimal")

# The probe: run with ``python -c`` in the caller's environment.  Its stdout is
# ``key=value`` lines; Qt's messages go to stderr as ``qt: ...`` and the fatal one as
# ``qt-fatal: ...``, after which it exits with code 3 instead of aborting.
_PROBE = r"""
import os, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file, whatever happens
except Exception:
    pass
try:
    from PySide6 import QtCore
    from PySide6.QtCore import QLibraryInfo, QtMsgType, qInstallMessageHandler
except Exception as err:
    print(f"import-error={type(err).__name__}: {err}", flush=True)
    sys.exit(4)
print("qt=" + QtCore.qVersion(), flush=True)
print("plugins=" + QLibraryInfo.path(QLibraryInfo.LibraryPath.PluginsPath), flush=True)
print("libraries=" + QLibraryInfo.path(QLibraryInfo.LibraryPath.LibrariesPath), flush=True)
if sys.platform.startswith("linux"):
    import ctypes
    for soname in ("libxcb-cursor.so.0",):  # dlopen'ed by the xcb plugin (Qt >= 6.5): ldd cannot see it
        try:
            ctypes.CDLL(soname)
        except OSError:
            print("unloadable=" + soname, flush=True)

def handler(kind, context, message):
    if kind == QtMsgType.QtDebugMsg and "cannot" not in message.lower():
        return  # QT_DEBUG_PLUGINS chatter
    fatal = kind == QtMsgType.QtFatalMsg
    sys.stderr.write(("qt-fatal: " if fatal else "qt: ") + message.replace("\n", " ").strip() + "\n")
    sys.stderr.flush()
    if fatal:
        os._exit(3)

qInstallMessageHandler(handler)
try:
    from PySide6 import QtWidgets  # noqa: F401  (the window needs it: its libraries must load too)
    from PySide6.QtGui import QGuiApplication
except Exception as err:
    print(f"import-error={type(err).__name__}: {err}", flush=True)
    sys.exit(4)
app = QGuiApplication(["bci-app-display-check"])
print("platform=" + app.platformName(), flush=True)
screen = app.primaryScreen()
if screen is not None:
    size = screen.size()
    print(f"screen={size.width()}x{size.height()}", flush=True)
sys.stderr.flush()
os._exit(0)  # no teardown: the message handler must not run while Python is shutting down
"""

# Debian/Ubuntu package names that do not follow the soname rule of package_for_soname
_PACKAGES = {
    "libglib-2.0.so.0": "libglib2.0-0",
    "libgobject-2.0.so.0": "libglib2.0-0",
    "libgio-2.0.so.0": "libglib2.0-0",
    "libgmodule-2.0.so.0": "libglib2.0-0",
    "libgthread-2.0.so.0": "libglib2.0-0",
    "libharfbuzz.so.0": "libharfbuzz0b",
    "libz.so.1": "zlib1g",
    "libbrotlicommon.so.1": "libbrotli1",
    "libbrotlidec.so.1": "libbrotli1",
    "libbrotlienc.so.1": "libbrotli1",
    "libgcc_s.so.1": "libgcc-s1",
    "libGLdispatch.so.0": "libglvnd0",
    "libxml2.so.2": "libxml2",
    "libcrypto.so.3": "libssl3",
    "libpcre.so.3": "libpcre3",
    "libc.so.6": "libc6",
    "libm.so.6": "libc6",
    "libdl.so.2": "libc6",
    "librt.so.1": "libc6",
    "libpthread.so.0": "libc6",
    "libresolv.so.2": "libc6",
}

# libraries that come with PySide6 itself: missing means a broken install, not apt
_OWN_LIBRARIES = re.compile(r"^lib(Qt6|pyside6|shiboken6)", re.IGNORECASE)


def package_for_soname(soname: str) -> str | None:
    """The Debian/Ubuntu package that holds the shared library ``soname``.

    Debian names a library package after the soname: ``libfoo.so.N`` is in ``libfooN``,
    or ``libfoo-N`` when the name ends with a digit (``libxcb-icccm.so.4`` ->
    ``libxcb-icccm4``, ``libxkbcommon-x11.so.0`` -> ``libxkbcommon-x11-0``,
    ``libdbus-1.so.3`` -> ``libdbus-1-3``), lower case, ``_`` as ``-``; a table holds the
    exceptions (``libglib-2.0.so.0`` -> ``libglib2.0-0``, ``libz.so.1`` -> ``zlib1g``, ...).
    Ubuntu 24.04 renamed some of them with a ``t64`` suffix; the old names still install
    them.  ``None`` for PySide6's own libraries and for names that are not sonames.
    """
    if not isinstance(soname, str):
        raise TypeError(f"soname must be a str, got {type(soname).__name__}")
    soname = soname.strip()
    if soname in _PACKAGES:
        return _PACKAGES[soname]
    if _OWN_LIBRARIES.match(soname):
        return None
    m = re.fullmatch(r"lib([A-Za-z0-9_+.-]+?)\.so\.([0-9][0-9.]*)", soname)
    if m is None:
        return None
    name, version = m.group(1).lower().replace("_", "-"), m.group(2)
    return f"lib{name}{'-' if name[-1].isdigit() else ''}{version}"


def install_command(packages: list[str] | tuple[str, ...], *, sudo: bool | None = None) -> str:
    """``sudo apt-get install PKG...`` (``sudo`` left out for root unless ``sudo=True``)."""
    if not packages:
        raise ValueError("packages must name at least one package, got none")
    if sudo is None:
        sudo = not (hasattr(os, "geteuid") and os.geteuid() == 0)
    return ("sudo " if sudo else "") + "apt-get install " + " ".join(packages)


def parse_ldd_missing(text: str) -> list[str]:
    """The sonames ``ldd`` reports as ``not found``, in order, each once."""
    found: list[str] = []
    for line in text.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+not found", line)
        if m and m.group(1) not in found:
            found.append(m.group(1))
    return found


@dataclass
class QtMessages:
    """What Qt's messages (the probe's stderr, or Qt's own on a failed start) say."""

    failed_platforms: list[str] = field(default_factory=list)  # 'Could not load the Qt platform plugin "xcb"'
    unloadable: list[str] = field(default_factory=list)  # sonames from "...: cannot open shared object file"
    cursor_hint: bool = False  # Qt's "xcb-cursor0 or libxcb-cursor0 is needed" (printed whenever xcb fails)
    x_display: str | None = None  # "could not connect to display :99" (the name; "" when none was given)
    x_authorization: bool = False  # "Authorization required" / "No protocol specified"
    wayland_display_failed: bool = False  # "Failed to create wl_display"
    last: str = ""  # the last message that is not Qt's generic fatal one


def parse_qt_messages(text: str) -> QtMessages:
    """Read Qt's start-up messages (plain, or the probe's ``qt:`` / ``qt-fatal:`` lines)."""
    out = QtMessages()
    for raw in text.splitlines():
        line = re.sub(r"^(qt-fatal|qt): ", "", raw.strip())
        if not line:
            continue
        m = re.search(r'Could not load the Qt platform plugin "([^"]+)"', line)
        if m and m.group(1) not in out.failed_platforms:
            out.failed_platforms.append(m.group(1))
        for so in re.findall(r"(lib[\w.+-]+?\.so(?:\.[0-9]+)*): cannot open shared object file", line):
            if so not in out.unloadable:
                out.unloadable.append(so)
        if "xcb-cursor0 or libxcb-cursor0 is needed" in line:
            out.cursor_hint = True
        m = re.search(r"could not connect to display\s*(\S*)", line)
        if m:
            out.x_display = m.group(1)
        if "Authorization required" in line or "No protocol specified" in line:
            out.x_authorization = True
        if "Failed to create wl_display" in line:
            out.wayland_display_failed = True
        if not (line.startswith("This application failed to start") or line.startswith("Available platform plugins")
                or line.startswith("Found metadata") or line.startswith("Got keys")):
            out.last = line
    return out


@dataclass(frozen=True)
class WindowSupport:
    """Whether Qt can open a window here (:func:`check_window_support`).

    ``kind`` is one of ``ok``, ``offscreen`` (drawn in memory: works, shows nothing),
    ``missing-libraries``, ``no-display``, ``cannot-connect``, ``no-qt``, ``timeout``,
    ``failed``.  ``problem`` says what is wrong in one line (``None`` when ``ok``);
    ``missing_libraries`` are sonames, ``missing_packages`` the Debian/Ubuntu packages that
    hold them, ``install_hint`` the command that installs them (on apt systems).
    """

    ok: bool
    platform: str
    problem: str | None = None
    missing_packages: list[str] = field(default_factory=list)
    install_hint: str | None = None
    missing_libraries: list[str] = field(default_factory=list)
    kind: str = "ok"
    screen: str | None = None
    qt_output: str = ""  # the probe's stderr, for debugging

    def describe(self) -> str:
        """One line for ``bci-app sys-info``."""
        if self.kind == "offscreen":
            return (f"drawn off screen (QT_QPA_PLATFORM={self.platform}): works, shows nothing "
                    "(--screenshot saves it)")
        if self.ok:
            return f"can open ({self.platform}" + (f", screen {self.screen}" if self.screen else "") + ")"
        text = f"cannot open: {self.problem}"
        if self.install_hint:
            text += f"; install them with: {self.install_hint}"
        return text

    def error_message(self) -> str:
        """The one-line error of ``bci-app`` when the window cannot open."""
        text = f"the window cannot open here: {self.problem}"
        if self.install_hint:
            text += f"; install them with: {self.install_hint}"
            if self.kind != "no-display":
                return text + " (or run with --headless)"
        return text + ("; or" if self.install_hint else ";") + " run with --headless, or set QT_QPA_PLATFORM=offscreen " \
            "to draw the window off screen (e.g. for --screenshot)"


class WindowUnavailableError(BCIError, RuntimeError):
    """Qt cannot open a window on this machine; the message says why and what to do."""

    def __init__(self, support: WindowSupport):
        self.support = support
        super().__init__(support.error_message())


def require_window_support(env: Mapping[str, str] | None = None, timeout: float = 10.0) -> WindowSupport:
    """:func:`check_window_support`, raising :class:`WindowUnavailableError` unless ``ok``."""
    support = check_window_support(env, timeout=timeout)
    if not support.ok:
        raise WindowUnavailableError(support)
    return support


def _requested_platform(env: Mapping[str, str]) -> str:
    """The platform Qt will try first (its rules: QT_QPA_PLATFORM, else the session type)."""
    requested = env.get("QT_QPA_PLATFORM", "").strip()
    if requested:
        return requested.split(";")[0].split(":")[0].strip()
    if sys.platform == "darwin":
        return "cocoa"
    if sys.platform == "win32":
        return "windows"
    if env.get("XDG_SESSION_TYPE") == "wayland" and env.get("WAYLAND_DISPLAY"):
        return "wayland"
    return "xcb"


def _pyside_dirs() -> tuple[Path | None, Path | None]:
    """PySide6's Qt plugin and library folders (wheel layout), found without importing it."""
    spec = importlib.util.find_spec("PySide6")
    if spec is None or not spec.submodule_search_locations:
        return None, None
    qt = Path(list(spec.submodule_search_locations)[0]) / "Qt"
    return (qt / "plugins" if qt.is_dir() else None), (qt / "lib" if qt.is_dir() else None)


def _plugin_files(platform: str, plugins: Path | None, libraries: Path | None) -> list[Path]:
    """The platform plugin's file (and, for xcb and wayland, Qt's support library)."""
    if plugins is None:
        return []
    base = "wayland" if platform.startswith("wayland") else platform
    files = [plugins / "platforms" / f"libq{base}.so"]
    extra = {"xcb": "libQt6XcbQpa.so.6", "wayland": "libQt6WaylandClient.so.6"}.get(base)
    if extra and libraries is not None:
        files.append(libraries / extra)
    return [f for f in files if f.is_file()]


def _ldd_missing(files: list[Path], env: Mapping[str, str]) -> list[str]:
    ldd = shutil.which("ldd", path=env.get("PATH") or os.defpath)
    missing: list[str] = []
    if ldd is None:
        return missing
    for f in files:
        try:
            out = subprocess.run([ldd, str(f)], capture_output=True, text=True, timeout=10, env=dict(env))
        except (OSError, subprocess.SubprocessError):
            continue
        missing += [so for so in parse_ldd_missing(out.stdout) if so not in missing]
    return missing


def _key_values(stdout: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values.setdefault(key.strip(), []).append(value.strip())
    return values


def check_window_support(env: Mapping[str, str] | None = None, timeout: float = 10.0) -> WindowSupport:
    """Tell, without risking the calling process, whether Qt can open a window here.

    Parameters
    ----------
    env : mapping | None
        The environment the window would run in (default ``os.environ``).
    timeout : float
        Seconds the probe may take (it needs well under one; a display that does not
        answer in time is reported as ``timeout``).

    Returns
    -------
    WindowSupport
        ``ok`` with the platform (and screen) Qt opened, or ``ok=False`` with the problem
        in one line, the missing libraries and the ``apt-get install`` line that adds them.
        With ``QT_QPA_PLATFORM=offscreen`` (or ``minimal``) nothing is probed: the window
        is drawn in memory (``kind="offscreen"``).
    """
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    env = dict(os.environ if env is None else env)
    platform = _requested_platform(env)
    if importlib.util.find_spec("PySide6") is None:
        return WindowSupport(False, platform, "Qt for Python (PySide6) is not installed", kind="no-qt")
    if platform in _IN_MEMORY:
        return WindowSupport(True, platform, kind="offscreen")

    probe_env = dict(env, QT_DEBUG_PLUGINS="1")  # names the library a plugin could not load
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=probe_env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        return WindowSupport(False, platform, f"Qt did not start within {timeout:g} s (a display that does not answer?)",
                             kind="timeout", qt_output=stderr)
    values = _key_values(proc.stdout)
    if values.get("platform"):  # the application was created: what happens after is not the window's concern
        return WindowSupport(True, values["platform"][-1], screen=(values.get("screen") or [None])[-1],
                             qt_output=proc.stderr)
    return _diagnose(proc.returncode, values, proc.stderr, platform, env)


def _unloadable_libraries(values: dict[str, list[str]], messages: QtMessages, platforms: list[str],
                          env: Mapping[str, str]) -> list[str]:
    """Every library that will not load, once each: from Qt's messages, the probe's import
    error and dlopen checks, and ldd of the platform plugins (and of QtGui and QtWidgets
    when those did not import), so one install line covers all of them."""
    import_error = (values.get("import-error") or [None])[-1]
    plugins = Path(values["plugins"][-1]) if values.get("plugins") else None
    libraries = Path(values["libraries"][-1]) if values.get("libraries") else None
    default_plugins, default_libraries = _pyside_dirs()
    plugins, libraries = plugins or default_plugins, libraries or default_libraries
    files: list[Path] = []
    for name in platforms:
        files += _plugin_files(name, plugins, libraries)
    if import_error is not None and libraries is not None:
        files += [f for f in (libraries / "libQt6Gui.so.6", libraries / "libQt6Widgets.so.6") if f.is_file()]
    candidates = list(messages.unloadable)
    if import_error:
        candidates += re.findall(r"(lib[\w.+-]+?\.so(?:\.[0-9]+)*): cannot open shared object file", import_error)
    candidates += values.get("unloadable", []) if "xcb" in platforms else []
    candidates += _ldd_missing(files, env) if sys.platform.startswith("linux") else []
    return list(dict.fromkeys(candidates))


def _diagnose(returncode: int, values: dict[str, list[str]], stderr: str, platform: str,
              env: Mapping[str, str]) -> WindowSupport:
    """Why the probe failed: missing libraries, no display, a display that refuses, ..."""
    messages = parse_qt_messages(stderr)
    import_error = (values.get("import-error") or [None])[-1]
    platforms = messages.failed_platforms or [platform]
    missing = _unloadable_libraries(values, messages, platforms, env)
    packages = list(dict.fromkeys(pkg for pkg in map(package_for_soname, missing) if pkg is not None))
    hint = install_command(packages) if packages and shutil.which("apt-get", path=env.get("PATH") or os.defpath) else None
    shown = ", ".join(platforms)

    no_display = (sys.platform.startswith("linux") and not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY")
                  and platform in ("xcb", "wayland"))
    parts = []
    if no_display:
        parts.append("no display (neither DISPLAY nor WAYLAND_DISPLAY is set)")
    if missing:
        own = [so for so in missing if package_for_soname(so) is None]
        text = (f"Qt's {shown} platform plugin needs system libraries that are missing here "
                f"({', '.join(missing)})" if import_error is None else
                f"Qt (PySide6) needs system libraries that are missing here ({', '.join(missing)})")
        if own:
            text += "; PySide6's own libraries are incomplete: reinstall it (pip install --force-reinstall PySide6-Essentials)"
        parts.append(text)
        kind = "no-display" if no_display else "missing-libraries"
        return WindowSupport(False, platform, "; ".join(parts), packages, hint, missing, kind, qt_output=stderr)
    if no_display:
        return WindowSupport(False, platform, parts[0], kind="no-display", qt_output=stderr)
    if import_error is not None:
        return WindowSupport(False, platform, f"Qt (PySide6) does not load: {import_error}", kind="no-qt",
                             qt_output=stderr)
    if messages.x_display is not None:
        display = messages.x_display or env.get("DISPLAY", "")
        why = ("the X server refused this user (authorization: check XAUTHORITY, or xhost)" if messages.x_authorization
               else "no X server is running there, or it does not accept connections")
        return WindowSupport(False, "xcb", f"Qt cannot connect to the X display {display}: {why}",
                             kind="cannot-connect", qt_output=stderr)
    if messages.wayland_display_failed:
        display = env.get("WAYLAND_DISPLAY") or "wayland-0"
        return WindowSupport(False, "wayland", f"Qt cannot connect to the Wayland display {display} "
                             "(no compositor there; XDG_RUNTIME_DIR and WAYLAND_DISPLAY must name its socket)",
                             kind="cannot-connect", qt_output=stderr)
    detail = messages.last or f"the probe exited with code {returncode} without a message"
    return WindowSupport(False, platform, f"Qt cannot start its {shown} platform: {detail}", kind="failed",
                         qt_output=stderr)
