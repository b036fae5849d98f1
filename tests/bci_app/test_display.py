"""Whether Qt can open a window here: the real probe (in a subprocess, never aborting this
process), the reading of Qt's and ldd's output captured on real machines, and the
soname -> Debian package names checked against dpkg and apt."""

from __future__ import annotations

import ctypes.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bci_app.display import (
    WindowUnavailableError,
    check_window_support,
    install_command,
    package_for_soname,
    parse_ldd_missing,
    parse_qt_messages,
    require_window_support,
)
from trainer.errors import BCIError

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11 and ldd are Linux matters")

# --- output captured on this project's Debian 12 machine (PySide6 6.11.3), in qt_output/ ----

def _captured(name: str) -> str:
    return (Path(__file__).with_name("qt_output") / name).read_text()


# `ldd PySide6/Qt/plugins/platforms/libqxcb.so` without libxcb-icccm4 and libxcb-keysyms1
LDD_QXCB = _captured("ldd_libqxcb_missing.txt")

# Qt's own stderr, then SIGABRT: `DISPLAY=:99 python -c "...QApplication([])"`, libraries missing.
# The libxcb-cursor0 hint is printed although libxcb-cursor0 was installed.
QT_STDERR_MISSING = _captured("qt_stderr_missing.txt")

# the probe's stderr (QT_DEBUG_PLUGINS=1 names the library), same machine
PROBE_STDERR_MISSING = _captured("probe_stderr_missing.txt")

# the libraries installed, no X server on :99: the same misleading hint
QT_STDERR_NO_SERVER = _captured("qt_stderr_no_server.txt")

# an Xvfb started with -auth, the client without XAUTHORITY
PROBE_STDERR_AUTH = _captured("probe_stderr_auth.txt")

PROBE_STDERR_WAYLAND = _captured("probe_stderr_wayland.txt")

# What a bare Debian 12 (debootstrap --variant=minbase bookworm, plus python3) lacks for the
# window: ldd of QtGui, QtWidgets and the xcb plugin.  `apt-get install` of exactly these
# packages there, plus an X server, made the probe say "can open" (xcb).
BARE_DEBIAN12 = {
    "libEGL.so.1": "libegl1", "libGL.so.1": "libgl1", "libX11-xcb.so.1": "libx11-xcb1", "libX11.so.6": "libx11-6",
    "libdbus-1.so.3": "libdbus-1-3", "libfontconfig.so.1": "libfontconfig1", "libfreetype.so.6": "libfreetype6",
    "libglib-2.0.so.0": "libglib2.0-0", "libgthread-2.0.so.0": "libglib2.0-0", "libxcb-cursor.so.0": "libxcb-cursor0",
    "libxcb-icccm.so.4": "libxcb-icccm4", "libxcb-image.so.0": "libxcb-image0", "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-randr.so.0": "libxcb-randr0", "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxcb-render.so.0": "libxcb-render0", "libxcb-shape.so.0": "libxcb-shape0", "libxcb-shm.so.0": "libxcb-shm0",
    "libxcb-sync.so.1": "libxcb-sync1", "libxcb-util.so.1": "libxcb-util1", "libxcb-xfixes.so.0": "libxcb-xfixes0",
    "libxcb-xkb.so.1": "libxcb-xkb1", "libxcb.so.1": "libxcb1", "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
    "libxkbcommon.so.0": "libxkbcommon0",
}


# --- names and parsing ------------------------------------------------------------------

def test_sonames_map_to_debian_packages():
    for soname, package in BARE_DEBIAN12.items():
        assert package_for_soname(soname) == package, soname
    assert package_for_soname("libwayland-cursor.so.0") == "libwayland-cursor0"
    assert package_for_soname("libxcb-xinput.so.0") == "libxcb-xinput0"  # the xcb family, by rule
    assert package_for_soname("libz.so.1") == "zlib1g" and package_for_soname("libharfbuzz.so.0") == "libharfbuzz0b"
    assert package_for_soname("libgssapi_krb5.so.2") == "libgssapi-krb5-2"
    assert package_for_soname("libQt6XcbQpa.so.6") is None  # PySide6's own: not an apt matter
    assert package_for_soname("not a library") is None
    with pytest.raises(TypeError, match="soname"):
        package_for_soname(None)


@linux_only
@pytest.mark.skipif(shutil.which("dpkg-query") is None or shutil.which("ldd") is None, reason="needs dpkg and ldd")
def test_soname_rule_agrees_with_dpkg_for_every_library_qt_loads_here():
    """The libraries Qt's xcb plugin, QtGui and QtWidgets load on this machine: the package
    dpkg says holds each one is the one package_for_soname names."""
    import PySide6

    qt = Path(PySide6.__file__).parent / "Qt"
    files = [qt / "plugins" / "platforms" / "libqxcb.so", qt / "lib" / "libQt6Gui.so.6", qt / "lib" / "libQt6Widgets.so.6"]
    resolved: dict[str, str] = {}
    for f in files:
        for line in subprocess.run(["ldd", str(f)], capture_output=True, text=True, timeout=30).stdout.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/") and "PySide6" not in parts[2]:
                resolved[parts[0]] = parts[2]
    candidates = {p for path in resolved.values() for p in (path, os.path.realpath(path), "/usr" + path)}
    out = subprocess.run(["dpkg-query", "-S", *sorted(candidates)], capture_output=True, text=True, timeout=60)
    owners = {}  # path -> package ("libxcb1:amd64: /usr/lib/x86_64-linux-gnu/libxcb.so.1")
    for line in out.stdout.splitlines():
        package, _, path = line.partition(": ")
        owners[path.strip()] = package.split(":")[0].split(",")[0].strip()
    checked = 0
    for soname, path in resolved.items():
        owner = next((owners[p] for p in (path, os.path.realpath(path), "/usr" + path) if p in owners), None)
        if owner is None:  # not from a Debian package (a library built by hand)
            continue
        assert package_for_soname(soname) == owner, (soname, path)
        checked += 1
    assert checked >= 10, resolved


def test_install_command():
    assert install_command(["libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1"], sudo=True) == \
        "sudo apt-get install libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1"
    assert install_command(["libgl1"], sudo=False) == "apt-get install libgl1"
    with pytest.raises(ValueError, match="packages"):
        install_command([])


def test_ldd_output_gives_the_missing_libraries_once_each():
    assert parse_ldd_missing(LDD_QXCB) == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]
    assert parse_ldd_missing("\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n") == []


def test_qt_messages_are_read():
    plain = parse_qt_messages(QT_STDERR_MISSING)
    assert plain.failed_platforms == ["xcb"] and plain.cursor_hint and plain.unloadable == []
    assert plain.x_display is None
    probe = parse_qt_messages(PROBE_STDERR_MISSING)
    assert probe.failed_platforms == ["xcb"] and probe.unloadable == ["libxcb-icccm.so.4"]
    no_server = parse_qt_messages(QT_STDERR_NO_SERVER)
    assert no_server.x_display == ":99" and no_server.cursor_hint and not no_server.x_authorization
    auth = parse_qt_messages(PROBE_STDERR_AUTH)
    assert auth.x_display == ":97" and auth.x_authorization
    wayland = parse_qt_messages(PROBE_STDERR_WAYLAND)
    assert wayland.failed_platforms == ["wayland"] and wayland.unloadable == ["libwayland-cursor.so.0"]
    assert wayland.last == 'Could not load the Qt platform plugin "wayland" in "" even though it was found.'


def test_messages_say_what_to_do_in_one_line():
    from bci_app.display import WindowSupport

    missing = WindowSupport(False, "xcb", "Qt's xcb platform plugin needs system libraries that are missing here "
                            "(libxcb-icccm.so.4, libxcb-keysyms.so.1)", ["libxcb-icccm4", "libxcb-keysyms1"],
                            "sudo apt-get install libxcb-icccm4 libxcb-keysyms1",
                            ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"], "missing-libraries")
    assert missing.error_message() == (
        "the window cannot open here: Qt's xcb platform plugin needs system libraries that are missing here "
        "(libxcb-icccm.so.4, libxcb-keysyms.so.1); install them with: sudo apt-get install libxcb-icccm4 "
        "libxcb-keysyms1 (or run with --headless)")
    assert missing.describe() == (
        "cannot open: Qt's xcb platform plugin needs system libraries that are missing here "
        "(libxcb-icccm.so.4, libxcb-keysyms.so.1); install them with: sudo apt-get install libxcb-icccm4 libxcb-keysyms1")
    no_server = WindowSupport(False, "xcb", "Qt cannot connect to the X display :99: no X server is running there, "
                              "or it does not accept connections", kind="cannot-connect")
    assert no_server.error_message() == (
        "the window cannot open here: Qt cannot connect to the X display :99: no X server is running there, or it "
        "does not accept connections; run with --headless, or set QT_QPA_PLATFORM=offscreen to draw the window off "
        "screen (e.g. for --screenshot)")
    assert str(WindowUnavailableError(no_server)) == no_server.error_message()
    assert WindowSupport(True, "xcb", screen="1920x1080").describe() == "can open (xcb, screen 1920x1080)"


# --- the real probe -------------------------------------------------------------------

def _x11_env(display: str | None) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY", "XDG_SESSION_TYPE", "DISPLAY", "XAUTHORITY")}
    if display is not None:
        env["DISPLAY"] = display
    return env


def _expected_missing() -> set[str]:
    """What ldd and ldconfig say the xcb plugin lacks here (the oracle for the probe)."""
    import PySide6

    qt = Path(PySide6.__file__).parent / "Qt"
    missing = set()
    for f in (qt / "plugins" / "platforms" / "libqxcb.so", qt / "lib" / "libQt6XcbQpa.so.6"):
        out = subprocess.run(["ldd", str(f)], capture_output=True, text=True, timeout=30).stdout
        missing |= {line.split()[0] for line in out.splitlines() if "=> not found" in line}
    if ctypes.util.find_library("xcb-cursor") is None:  # dlopen'ed by the plugin: ldconfig's view
        missing.add("libxcb-cursor.so.0")
    return missing


@linux_only
@pytest.mark.skipif(shutil.which("ldd") is None, reason="needs ldd")
def test_a_display_without_an_x_server_is_diagnosed_without_an_abort(free_display):
    display = f":{free_display()}"
    support = check_window_support(_x11_env(display))
    missing = _expected_missing()
    assert not support.ok and support.platform == "xcb" and support.problem
    if missing:  # this machine lacks libraries: they are named, with their packages
        assert support.kind == "missing-libraries", support
        assert set(support.missing_libraries) == missing
        assert support.missing_packages == list(dict.fromkeys(package_for_soname(so) for so in support.missing_libraries))
        if shutil.which("apt-get"):
            assert support.install_hint == install_command(support.missing_packages)
            assert support.install_hint.endswith("apt-get install " + " ".join(support.missing_packages))
        assert ", ".join(support.missing_libraries) in support.problem
    else:  # everything is there: the display is the problem, not Qt's libxcb-cursor0 hint
        assert support.kind == "cannot-connect", support
        assert f"cannot connect to the X display {display}" in support.problem
        assert support.missing_packages == [] and support.install_hint is None
        assert "xcb-cursor0 or libxcb-cursor0 is needed" in support.qt_output


@linux_only
def test_no_display_at_all_is_said_so():
    support = check_window_support(_x11_env(None))
    assert not support.ok and support.kind == "no-display"
    assert support.problem.startswith("no display (neither DISPLAY nor WAYLAND_DISPLAY is set)")
    with pytest.raises(WindowUnavailableError) as err:
        require_window_support(_x11_env(None))
    assert isinstance(err.value, BCIError) and "\n" not in str(err.value)
    assert str(err.value).startswith("the window cannot open here: no display")
    assert "--headless" in str(err.value)


def test_offscreen_is_not_probed(monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError("offscreen must not start the probe")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    support = check_window_support(dict(os.environ, QT_QPA_PLATFORM="offscreen"))
    assert support.ok and support.kind == "offscreen" and support.problem is None
    assert support.describe().startswith("drawn off screen (QT_QPA_PLATFORM=offscreen)")
    assert require_window_support(dict(os.environ, QT_QPA_PLATFORM="offscreen:fontengine=freetype")).ok


def test_bad_timeout_is_refused():
    with pytest.raises(ValueError, match="timeout"):
        check_window_support(timeout=0)


@linux_only
def test_a_display_that_never_answers_times_out(free_display):
    """An X socket that accepts the connection and never replies: the probe is given up,
    not waited for."""
    n = free_display()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(f"\0/tmp/.X11-unix/X{n}")  # the abstract socket libxcb tries first
    server.listen(4)
    try:
        support = check_window_support(_x11_env(f":{n}"), timeout=3)
    finally:
        server.close()
    if support.kind == "missing-libraries":  # the plugin does not load, so nothing connects
        pytest.skip("the xcb plugin's libraries are missing here")
    assert not support.ok and support.kind == "timeout" and "did not start within 3 s" in support.problem


@linux_only
def test_a_running_x_server_opens_the_window_or_names_the_missing_libraries(xvfb):
    display = xvfb()
    support = check_window_support(_x11_env(display))
    if _expected_missing():
        assert support.kind == "missing-libraries" and not support.ok
    else:
        assert support.ok and support.kind == "ok" and support.platform == "xcb", support
        assert support.screen == "1024x768" and support.problem is None
        assert support.describe() == "can open (xcb, screen 1024x768)"


@linux_only
@pytest.mark.skipif(shutil.which("xauth") is None, reason="needs xauth")
def test_an_x_server_that_refuses_the_user_is_named(xvfb, tmp_path):
    if _expected_missing():
        pytest.skip("the xcb plugin's libraries are missing here")
    auth = tmp_path / "auth"
    auth.touch()
    display = xvfb(auth)
    subprocess.run(["xauth", "-f", str(auth), "add", display, ".", os.urandom(16).hex()], check=True, timeout=30)
    env = _x11_env(display)
    env["HOME"] = str(tmp_path)  # no ~/.Xauthority to fall back on
    support = check_window_support(env)
    assert support.kind == "cannot-connect" and "refused this user (authorization" in support.problem
    assert check_window_support(dict(env, XAUTHORITY=str(auth))).ok


@linux_only
def test_qt_that_does_not_even_import_names_its_libraries(tmp_path):
    """PySide6 itself fails to import (a bare machine lacks libGL.so.1): the probe's import
    error names the library.  A stand-in PySide6 first on the probe's path fails as the
    real one does there."""
    fake = tmp_path / "PySide6"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "QtCore.py").write_text(
        "raise ImportError('libGL.so.1: cannot open shared object file: No such file or directory')\n")
    env = _x11_env(":0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    support = check_window_support(env)
    assert not support.ok and support.kind == "missing-libraries", support
    assert support.missing_libraries[0] == "libGL.so.1" and support.missing_packages[0] == "libgl1"
    assert support.problem.startswith("Qt (PySide6) needs system libraries that are missing here (libGL.so.1")
