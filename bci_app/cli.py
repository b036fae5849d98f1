"""Command lines: ``bci-app`` (live decoder, stream listing, recovery, versions) and
``bci-replay`` (a recorded session as LSL streams).

Errors print one line and exit 2; Ctrl-C stops cleanly (exit 0 for the live app after its
summary, 0 for the replay)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from typing import Sequence

from trainer.config import ADAPT_PARTS
from trainer.errors import BCIError, UsageError, run_command

from .live_loop import decoding_threads
from .summary import report_summary

__all__ = ["build_parser", "build_replay_parser", "main", "replay_main"]

logger = logging.getLogger("bci_app")



def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s: %(message)s",
                        stream=sys.stderr)
    # mne-lsl logs every connection at INFO; keep its warnings only
    logging.getLogger("mne_lsl").setLevel(logging.WARNING)
    if not verbose:
        from .lsl_config import quiet_liblsl

        quiet_liblsl()  # before liblsl loads (see bci_app/lsl_config.py)


def build_parser() -> argparse.ArgumentParser:
    """The ``bci-app`` command line: the live decoder's options, and the other commands."""
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="store_true", help="debug logging (and tracebacks with errors)")
    # the commands' own -v: SUPPRESS keeps a -v given before the command ('bci-app -v streams')
    sub_verbose = argparse.ArgumentParser(add_help=False)
    sub_verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="debug logging (and tracebacks with errors)")
    p = argparse.ArgumentParser(
        prog="bci-app", parents=[verbose],
        usage="bci-app [options]                  the live decoder (window, --headless, --demo)\n"
              "       bci-app present|calibrate|streams|recover|sys-info [options]",
        description="Decode a live EEG stream with a model bundle: epochs on stimulus markers, retrieves the "
                    "seen image among the bundle's gallery, in a window (default) or --headless. 'bci-app --demo' "
                    "runs everything on synthetic data with no amplifier. 'bci-app COMMAND --help' describes "
                    "each of the other commands.",
    )
    p.add_argument("--bundle", default=None,
                   help="model bundle folder (a bci-train fit run); the window can also open one")
    p.add_argument("--stream", default=None,
                   help="name of the EEG LSL stream; with --bundle the window connects at once")
    p.add_argument("--source-id", default=None, help="source id of the EEG stream, when several share its name")
    p.add_argument("--markers", default=None,
                   help="name of the marker stream (numeric or string); default: STREAM-markers, or the only "
                        "marker stream on the network")
    p.add_argument("--device", default=None, help="auto (GPU when present), cpu, cuda or cuda:N (default auto)")
    p.add_argument("--top-k", type=int, default=None, help="candidates reported per epoch (default 5)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for decoding, torch's and numpy's (default 1: the lowest latency for the few "
                        "epochs decoded at a time; more for large encoders on CPU)")
    p.add_argument("--headless", action="store_true",
                   help="no window: one JSON line per decoded epoch on stdout, logs and the summary on stderr")
    p.add_argument("--demo", nargs="?", const="closed-loop", choices=("closed-loop", "replay"), default=None,
                   help="the demo: make (first time, a few minutes) or reuse synthetic data and a demo bundle, then "
                        "decode, live, a simulated participant watching the presenter show the test images "
                        "(closed-loop, the default), or a replay of a recorded session (--demo replay)")
    p.add_argument("--demo-dir", default=None, metavar="DIR",
                   help="where the demo keeps its data and bundle (default $BCI_DEMO_DIR or "
                        "~/.cache/shallow-bci/demo)")
    p.add_argument("--screenshot", default=None, metavar="FILE",
                   help="window only: save the window as PNG once --max-epochs epochs (default 1) are decoded, "
                        "then exit (exit code 2 on an error)")
    p.add_argument("--max-epochs", type=int, default=None, help="stop after N decoded epochs")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--idle-exit", type=float, default=None,
                   help="headless: stop when the stream has sent nothing for this many seconds (e.g. a replay that ended)")
    p.add_argument("--record", default=None, metavar="DIR",
                   help="record the raw EEG, markers and predictions into DIR (a new folder)")
    p.add_argument("--summary", default=None, metavar="FILE", help="also write the summary as JSON to FILE")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the streams at start (default 5)")
    p.set_defaults(run=_cmd_live, command=None)

    sub = p.add_subparsers(title="other commands", metavar="COMMAND")
    s = sub.add_parser("streams", prog="bci-app streams", parents=[sub_verbose], help="list the LSL streams on the network",
                       description="List the LSL streams on the network.")
    s.add_argument("--timeout", type=float, default=2.0, help="seconds to look (default 2)")
    s.add_argument("--json", action="store_true", help="one JSON object per stream")
    s.set_defaults(run=_cmd_streams, command="streams")
    s = sub.add_parser("recover", prog="bci-app recover", parents=[sub_verbose], help="finish a recording left by a crash",
                       description="Make recording-raw.fif from the journal of a recording that did not finish.")
    s.add_argument("folder", help="the recording folder (bci-app --record DIR)")
    s.set_defaults(run=_cmd_recover, command="recover")
    s = sub.add_parser(
        "present", prog="bci-app present", parents=[sub_verbose], help="show images in RSVP and send their markers",
        description="The stimulus presenter: images in the THINGS-EEG2 RSVP paradigm (100 ms on, 100 ms blank, "
                    "sequences of 20), each onset's marker sent on an LSL marker stream stamped with the time the "
                    "frame reached the screen. Space (or return) starts a sequence and answers a catch target, P "
                    "pauses, Esc aborts. Exits when the list is done; writes a timing log and prints a timing report.")
    s.add_argument("--images", required=True, metavar="SRC",
                   help="a data folder (THINGS-EEG2 layout, real or synthetic), a bundle folder (its gallery) or a "
                        "folder of image files")
    s.add_argument("--set", choices=("train", "test"), default="test",
                   help="data folders: the training or the test images (default test)")
    s.add_argument("--repetitions", type=int, default=1, help="times each image is shown (default 1)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random order (default 0)")
    s.add_argument("--markers", default="bci-presenter", metavar="NAME",
                   help="name of the marker stream (default bci-presenter)")
    s.add_argument("--labels", action="store_true",
                   help="send 'concept/file' string markers instead of numeric image ids")
    s.add_argument("--screen", type=int, default=0, help="screen to show the images on (default 0)")
    s.add_argument("--windowed", action="store_true", help="a window instead of full screen")
    s.add_argument("--no-vsync", action="store_true",
                   help="time frames with a timer instead of the display's refresh (where swap control does not work)")
    s.add_argument("--refresh", type=float, default=None, metavar="HZ",
                   help="the display's refresh rate (default: what the screen reports; vsync measures it)")
    s.add_argument("--duration", type=float, default=None, metavar="MIN",
                   help="show only the sequences that fit in this many minutes")
    s.add_argument("--pause", type=float, default=None, metavar="S",
                   help="start the next sequence by itself after S seconds (default: wait for the space key)")
    s.add_argument("--sequence-length", type=int, default=20, help="images per sequence (default 20)")
    s.add_argument("--on-ms", type=float, default=100.0, help="image duration (default 100 ms, whole frames)")
    s.add_argument("--off-ms", type=float, default=100.0, help="blank between images (default 100 ms, whole frames)")
    s.add_argument("--catch", default=None, metavar="IMAGE",
                   help="a catch target image, to which the participant answers with the space key")
    s.add_argument("--catch-rate", type=float, default=0.3,
                   help="share of the sequences with one catch target (default 0.3, with --catch)")
    s.add_argument("--photodiode", choices=("top-left", "top-right", "bottom-left", "bottom-right"), default=None,
                   help="a square in this corner that turns white and black at alternate onsets")
    s.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="image side in pixels (default 500, at most 80%% of the screen)")
    s.add_argument("--log", default=None, metavar="FILE",
                   help="the timing log (default presentation-DATE-TIME.json in the current folder)")
    s.add_argument("--no-receiver-check", action="store_true",
                   help="start even when no program receives the markers (they are lost then)")
    s.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)  # the demo's presenter
    s.set_defaults(run=_cmd_present, command="present")
    _add_calibrate_parser(sub, sub_verbose)
    s = sub.add_parser("sys-info", prog="bci-app sys-info", parents=[sub_verbose], help="versions of the parts this app runs on",
                       description="Versions of the parts this app runs on, and whether the window can open here.")
    s.set_defaults(run=_cmd_sys_info, command="sys-info")
    return p


def _add_calibrate_parser(sub, sub_verbose: argparse.ArgumentParser) -> None:
    s = sub.add_parser(
        "calibrate", prog="bci-app calibrate", parents=[sub_verbose],
        help="calibrate a bundle to a new person: present, record, adapt",
        description="One calibration block for a new person: the presenter (bci-app present --set train --labels) "
                    "shows training-concept images for --minutes while the EEG stream and the presenter's markers "
                    "are recorded, then the bundle is adapted to the person on that recording (bci-train adapt) "
                    "and written to --out. Decode with it: bci-app --bundle OUT --stream NAME. Each block keeps its "
                    "recording, the presenter's log and timing log in a new folder under --folder; when the "
                    "adaptation fails or is interrupted, the message gives the bci-train adapt command that adapts "
                    "the recording by hand. Calibrating an adapted bundle continues from it.")
    s.add_argument("--bundle", required=True, help="the bundle to adapt (an inter-subject bundle, or an adapted one)")
    s.add_argument("--stream", required=True, help="name of the EEG LSL stream (the person's amplifier)")
    s.add_argument("--source-id", default=None, help="source id of the EEG stream, when several share its name")
    s.add_argument("--out", required=True, metavar="NEW", help="the adapted bundle's folder (new or empty)")
    s.add_argument("--images", default=None, metavar="DIR",
                   help="the data folder whose training images are shown (THINGS layout) or a folder of images "
                        "(default: the data folder the bundle was trained on, when it holds image_set/)")
    s.add_argument("--minutes", type=float, default=5.0, help="length of the block (default 5)")
    s.add_argument("--markers", default=None, metavar="NAME",
                   help="name of the presenter's marker stream (default: a new bci-calibrate-... name)")
    s.add_argument("--screen", type=int, default=None, help="screen to show the images on (default 0)")
    s.add_argument("--windowed", action="store_true", help="the presenter in a window instead of full screen")
    s.add_argument("--pause", type=float, default=None, metavar="S",
                   help="start the next sequence by itself after S seconds (default: the space bar starts it)")
    s.add_argument("--folder", default=None, metavar="DIR",
                   help="calibration folder: each block goes into a new DIR/<date-time> folder "
                        "(default ~/bci-recordings/calibration)")
    s.add_argument("--adapt", choices=ADAPT_PARTS, default="all",
                   help="what of the brain side to train: all of it, its last layer and projector (head), the "
                        "projector, or a re-mixing of the input channels (input); as bci-train adapt (default all)")
    s.add_argument("--epochs", type=int, default=40, help="at most this many adaptation epochs (default 40)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    s.add_argument("--timeout", type=float, default=30.0,
                   help="seconds to wait for the EEG stream and the presenter at the start (default 30)")
    s.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)  # the images' order (tests)
    s.set_defaults(run=_cmd_calibrate, command="calibrate")


def _interrupt(signum, frame) -> None:
    """A SIGTERM handler that stops like Ctrl-C."""
    raise KeyboardInterrupt


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from .calibrate import Calibration, CalibrationError, default_image_folder, record_block

    _check_limits(args, counts=("epochs",), positive=("minutes", "timeout"), non_negative=("screen", "pause"))
    images = args.images or default_image_folder(args.bundle)
    if images is None:
        raise UsageError(f"--images: give the folder of the images to show (the bundle {args.bundle} names no data "
                         "folder with image_set/ in its provenance)")
    cal = Calibration(args.bundle, images, minutes=args.minutes, root=args.folder, out=args.out, markers=args.markers,
                      screen=args.screen, windowed=args.windowed, pause=args.pause, adapt=args.adapt,
                      epochs=args.epochs, device=args.device, seed=args.seed)
    print(f"bci-app calibrate: {cal.planned_seconds / 60:.1f} min of training images from {cal.images} "
          f"(markers {cal.markers!r}) while {args.stream!r} is recorded into {cal.recording_dir}"
          + ("" if args.pause is not None else "; the space bar starts each sequence"), file=sys.stderr, flush=True)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        try:
            record_block(cal, args.stream, source_id=args.source_id, timeout=args.timeout, device=args.device)
        except KeyboardInterrupt:
            cal.cancel()
            if cal.presenter is not None:
                cal.presenter_ended()  # stopped by now: says what is kept
            print(f"bci-app calibrate: interrupted while presenting; {cal.error or f'see {cal.folder}'}", file=sys.stderr)
            return 130
        print(f"bci-app calibrate: recorded {cal.presented.get('onsets', 0)} images; adapting {cal.base} "
              f"(--adapt {cal.adapt})", file=sys.stderr, flush=True)
        from trainer.progress import ProgressBars

        with ProgressBars() as progress:
            cal.start_adapting()
            last = None
            try:
                while not cal.wait(0.1):
                    if cal.progress != last and cal.progress[0]:
                        last = cal.progress
                        progress(*last)
            except KeyboardInterrupt:
                cal.cancel()
                cal.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    try:
        result = cal.result()
    except CalibrationError as err:
        if cal.phase == "cancelled":
            print(f"bci-app calibrate: interrupted: {err}", file=sys.stderr)
            return 130
        raise
    s = result.summary
    print(f"wrote {result.bundle}: adapted ({s.get('adapt', cal.adapt)}) on {s.get('n_trials', '?')} trials "
          f"({s.get('minutes', 0):.1f} min) in {s.get('seconds', 0):.0f} s; the block's files are in {result.folder}")
    before, after = s.get("before") or {}, s.get("after") or {}
    if before and after:
        chance = f", chance {s['val_chance_top1']:.3f}" if "val_chance_top1" in s else ""
        print(f"  validation top-1 on held-out calibration concepts ({s.get('n_val', '?')} trials{chance}): "
              f"before {before['top1']:.3f}, after {after['top1']:.3f} (epoch {s.get('best_epoch', '?')})")
        if s.get("best_epoch") == 0:
            print("  no epoch beat the starting model on the held-out concepts: the new bundle keeps its weights")
    print(f"  decode with it: bci-app --bundle {result.bundle} --stream {args.stream}")
    return 0


def _check_limits(args: argparse.Namespace, *, counts=(), positive=(), non_negative=()) -> None:
    """Options given (not None) must be >= 1 (``counts``), > 0 or >= 0; else a UsageError
    naming the option."""
    for names, ok, rule in ((counts, lambda v: v >= 1, ">= 1"), (positive, lambda v: v > 0, "> 0"),
                            (non_negative, lambda v: v >= 0, ">= 0")):
        for name in names:
            value = getattr(args, name)
            if value is not None and not ok(value):
                raise UsageError(f"--{name.replace('_', '-')} must be {rule}, got {value}")


def _check_args(args: argparse.Namespace) -> None:
    _check_limits(args, counts=("max_epochs", "top_k", "threads"), positive=("duration", "idle_exit", "timeout"))
    if args.demo and (args.bundle or args.stream):
        raise UsageError("--demo makes its own bundle and stream; leave out --bundle and --stream")
    if args.screenshot and args.headless:
        raise UsageError("--screenshot needs the window; leave out --headless")
    if args.screenshot and not (args.demo or (args.bundle and args.stream)):
        raise UsageError("--screenshot needs something to decode: --demo, or --bundle and --stream")
    if args.headless and not args.demo and not (args.bundle and args.stream):
        raise UsageError("--headless needs --bundle and --stream (or --demo)")


def _cmd_live(args: argparse.Namespace) -> int:
    _check_args(args)
    if not args.headless:
        run_window = _window_entry()
        import torch

        args.training_threads = torch.get_num_threads()  # torch's own choice, for the demo's first fit
        decoding_threads(args.threads)
        return run_window(args)
    return _run_headless(args)


def _run_headless(args: argparse.Namespace) -> int:
    replay = None
    if args.demo:
        from trainer.progress import ProgressBars

        from .demo import prepare_demo, start_closed_loop, start_replay

        with ProgressBars() as progress:
            files = prepare_demo(args.demo_dir, progress=progress)
        if args.demo == "replay":
            replay = start_replay(files)
            print(f"bci-app: demo: replaying {files.session} as {replay.name!r}", file=sys.stderr, flush=True)
        else:
            replay = start_closed_loop(files, offscreen=True)
            print(f"bci-app: demo: a simulated participant (subject 1 of {files.data}) watches the presenter "
                  f"(offscreen) as {replay.name!r}", file=sys.stderr, flush=True)
        args.bundle, args.stream = str(files.bundle), replay.name
        args.markers, args.source_id = f"{replay.name}-markers", f"{replay.name}-src"
        args.timeout = max(args.timeout, 30.0)
    try:
        return _decode_headless(args)
    except BCIError as err:
        if replay is not None and replay.ended_text():  # the cause is the demo process that ended
            raise BCIError(f"{err} ({replay.ended_text()})") from None
        raise
    finally:
        if replay is not None:
            replay.stop()


def _decode_headless(args: argparse.Namespace) -> int:
    from mne_lsl.lsl import local_clock

    from trainer.bundle import load_bundle

    from .pipeline import LiveSession

    bundle = load_bundle(args.bundle)
    decoding_threads(args.threads)
    session = LiveSession(bundle, args.stream, markers=args.markers, device=args.device or "auto",
                          top_k=args.top_k or 5, record=args.record, timeout=args.timeout, source_id=args.source_id)
    session.start()
    stop = {"flag": False}

    def on_term(signum, frame):  # SIGTERM: finish like Ctrl-C
        stop["flag"] = True

    previous = signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    reason, failure = "stopped", None
    try:
        while not stop["flag"]:
            for record in session.step():
                sys.stdout.write(json.dumps(record, allow_nan=False) + "\n")
                sys.stdout.flush()
                if args.max_epochs is not None and session.stats.epochs >= args.max_epochs:
                    stop["flag"], reason = True, f"{args.max_epochs} epochs decoded"
                    break
            if stop["flag"]:
                break
            if args.duration is not None and time.monotonic() - t0 >= args.duration:
                reason = f"{args.duration:g} s elapsed"
                break
            if args.idle_exit is not None and session.source.last_arrival is not None:
                if local_clock() - session.source.last_arrival > args.idle_exit:
                    reason = f"no data for {args.idle_exit:g} s"
                    break
            session.wait(0.05)
    except KeyboardInterrupt:
        reason = "interrupted"
    except BCIError as err:  # the session cannot go on (e.g. the stream changed): summary first, then the error
        reason, failure = f"error: {err}", err
    finally:
        signal.signal(signal.SIGTERM, previous)
        summary = session.close()
    summary["stopped_because"] = reason
    report_summary(summary, args.summary)
    if failure is not None:
        raise failure
    return 0


def _window_entry():
    """The window's entry point, or a one-line error when the window cannot open here (no
    display, or Qt's system libraries missing: then the exact install line; see
    :mod:`bci_app.display`).  Qt itself is loaded only once that is known to work."""
    from .display import require_window_support

    require_window_support()
    try:
        import importlib

        importlib.import_module("PySide6.QtWidgets")
        from .gui import run_window
    except ImportError as err:
        raise BCIError(f"the window needs Qt (PySide6), which does not load here: {err}; "
                       "--headless works without it") from None
    return run_window


def _cmd_present(args: argparse.Namespace) -> int:
    _check_limits(args, counts=("repetitions", "sequence_length", "image_size"),
                  positive=("refresh", "duration", "on_ms"), non_negative=("pause", "off_ms"))
    if not 0.0 <= args.catch_rate <= 1.0:
        raise UsageError(f"--catch-rate must lie in 0..1, got {args.catch_rate}")
    from .display import require_window_support

    require_window_support()
    if args.exit_with_parent:
        _exit_with_parent()
    from .gui.presenter import run_presenter

    return run_presenter(args)


def _cmd_streams(args: argparse.Namespace) -> int:
    from .streams import list_streams

    streams = list_streams(timeout=args.timeout)
    if args.json:
        from dataclasses import asdict

        for s in streams:
            print(json.dumps(asdict(s)))
        return 0
    if not streams:
        print(f"no LSL stream found within {args.timeout:g} s")
    eeg = [s for s in streams if not s.is_marker]
    markers = [s for s in streams if s.is_marker]
    for title, group in (("signal streams", eeg), ("marker streams", markers)):
        if group:
            print(f"{title}:")
            for s in group:
                print("  " + s.describe())
    return 0


def _cmd_sys_info(args: argparse.Namespace) -> int:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    print(f"Python {platform.python_version()} on {platform.platform()}")
    for dist in ("shallow-bci", "torch", "timm", "mne", "mne-lsl", "pylsl", "PySide6-Essentials", "pyqtgraph", "numpy",
                 "scipy", "pyxdf"):
        try:
            print(f"{dist}: {version(dist)}")
        except PackageNotFoundError:
            print(f"{dist}: not installed")
    import torch

    print(f"CUDA: {'available, ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'}")
    try:
        from mne_lsl.lsl import library_version

        print(f"liblsl: {library_version()}")
    except Exception as err:  # a missing or broken liblsl is exactly what this should show
        print(f"liblsl: not loadable ({err})")
    try:
        from PySide6 import QtCore

        print(f"Qt: {QtCore.qVersion()}")
    except Exception as err:
        print(f"Qt: not loadable ({err})")
    from .display import check_window_support

    print(f"window: {check_window_support().describe()}")
    return 0


def _cmd_recover(args: argparse.Namespace) -> int:
    from .recording import finalize_recording

    print(f"wrote {finalize_recording(args.folder)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bci-app``; returns the exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    prog = "bci-app" + (f" {args.command}" if args.command else "")
    return run_command(prog, lambda: args.run(args), verbose=args.verbose, interrupted=0)


def build_replay_parser() -> argparse.ArgumentParser:
    """The ``bci-replay`` command line."""
    p = argparse.ArgumentParser(
        prog="bci-replay",
        usage="bci-replay PATH [options]                 play a recorded session\n"
              "       bci-replay --simulate --data DIR --subject N --markers-from NAME [options]",
        description="Play a recorded session as LSL streams: the EEG as NAME, the stimulus markers as NAME-markers. "
                    "PATH: a THINGS-EEG2 raw .npy session, any file MNE reads (.fif, .vhdr, .edf, ...; stim channel "
                    "or annotations give the markers), an .xdf recording, or a bci-app --record folder. "
                    "With --simulate instead: a simulated participant, a subject of a synthetic data set who "
                    "answers the markers of a presenter with EEG streamed as NAME.",
    )
    p.add_argument("path", nargs="?", default=None, help="the recorded session to play (not with --simulate)")
    p.add_argument("--name", default=None, help="EEG stream name (default bci-replay; with --simulate bci-simulate)")
    p.add_argument("--source-id", default=None, help="LSL source id (default: unique per run)")
    p.add_argument("--chunk-size", type=int, default=10, help="samples per pushed chunk (default 10)")
    p.add_argument("--loop", action="store_true", help="start again at the end, forever")
    p.add_argument("--markers", choices=("numeric", "string", "none"), default=None,
                   help="numeric: int32 codes (THINGS image numbers); string: text labels (image file or code); "
                        "none: no marker stream (default numeric)")
    p.add_argument("--xdf-stream", default=None, help="XDF only: name of the signal stream to play")
    p.add_argument("--xdf-markers", default=None, help="XDF only: name of the marker stream to use")
    p.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)  # the demo's replay
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    s = p.add_argument_group(
        "a simulated participant (--simulate)",
        "Subject N of the synthetic set in DIR (bci-train synth), or a new person with --subject-seed, streams "
        "the set's 63-channel EEG at 1000 Hz and adds its response to each image the marker stream names, at the "
        "marker's time plus the set's trigger delay. It stops when the marker stream has been gone for "
        "--marker-timeout seconds, or on Ctrl-C.")
    s.add_argument("--simulate", action="store_true", help="simulate a participant instead of playing PATH")
    s.add_argument("--data", default=None, metavar="DIR", help="the synthetic data set (made by bci-train synth)")
    s.add_argument("--subject", type=int, default=None, metavar="N", help="the subject (1-based)")
    s.add_argument("--subject-seed", type=int, default=None, metavar="S",
                   help="a new person instead, in no data set (S >= 0; with N, one person of the set's population)")
    s.add_argument("--markers-from", default=None, metavar="NAME", help="the marker stream to answer (the presenter's)")
    s.add_argument("--set", dest="image_set", choices=("test", "train"), default=None,
                   help="the images numeric markers count in (default: what the marker stream announces, else test)")
    s.add_argument("--snr", type=float, default=None, help="scale of the informative responses (default: the set's)")
    s.add_argument("--no-noise", action="store_true", help="the responses alone, without background EEG (for checks)")
    s.add_argument("--seed", type=int, default=None, help="seed of the noise and the trial gains (default 0)")
    s.add_argument("--delay", type=float, default=None, metavar="SECONDS",
                   help="from a marker to its response's onset (default: minus the set's trigger delay, -0.011: "
                        "each marker plays the set's trigger, and epochs are the set's; 0: the marker is the moment "
                        "the image is seen)")
    s.add_argument("--latency", type=float, default=None, metavar="SECONDS",
                   help="push each chunk this long after its samples' time, as an amplifier's buffer does (default "
                        "0.05; delay + latency must be at least 0.005)")
    s.add_argument("--marker-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop once the marker stream has been gone this long (default 5)")
    s.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="wait this long for the marker stream at the start (default 10)")
    return p


_REPLAY_ONLY = ("loop", "markers", "xdf_stream", "xdf_markers")
_SIMULATE_ONLY = ("data", "subject", "subject_seed", "markers_from", "image_set", "snr", "no_noise", "seed", "delay",
                  "latency", "marker_timeout", "timeout")


def _option(name: str) -> str:
    return "--set" if name == "image_set" else "--" + name.replace("_", "-")


def _check_replay_args(args: argparse.Namespace) -> None:
    """PATH or --simulate, each with its own options; fills in the defaults that depend
    on which."""
    import math

    if args.path is not None and args.simulate:
        raise UsageError("give either PATH (a recorded session to play) or --simulate, not both")
    if args.path is None and not args.simulate:
        raise UsageError("give PATH (a recorded session to play) or --simulate (a simulated participant)")
    if args.chunk_size < 1:
        raise UsageError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    given = [n for n in (_SIMULATE_ONLY if args.path is not None else _REPLAY_ONLY) if getattr(args, n) not in (None, False)]
    if given:
        options = ", ".join(_option(n) for n in given)
        raise UsageError(f"{options}: only with --simulate" if args.path is not None
                         else f"{options}: only for playing a recorded session, not with --simulate")
    if not args.simulate:
        args.name, args.markers = args.name or "bci-replay", args.markers or "numeric"
        return
    missing = [o for o, v in (("--data DIR", args.data), ("--subject N", args.subject),
                              ("--markers-from NAME", args.markers_from)) if v is None]
    if missing:
        raise UsageError(f"--simulate needs {', '.join(missing)}")
    for name in ("subject_seed", "seed"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise UsageError(f"{_option(name)} must be >= 0, got {getattr(args, name)}")
    for name in ("snr", "marker_timeout", "timeout"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{_option(name)} must be > 0, got {value}")
    if args.latency is not None and not (math.isfinite(args.latency) and args.latency >= 0):
        raise UsageError(f"--latency must be >= 0 seconds, got {args.latency}")
    if args.delay is not None and not math.isfinite(args.delay):
        raise UsageError(f"--delay must be a number of seconds, got {args.delay}")
    args.name = args.name or "bci-simulate"
    args.seed = 0 if args.seed is None else args.seed
    if args.latency is None:
        from .simulate import DEFAULT_LATENCY

        args.latency = DEFAULT_LATENCY
    args.marker_timeout = 5.0 if args.marker_timeout is None else args.marker_timeout
    args.timeout = 10.0 if args.timeout is None else args.timeout


def _exit_with_parent() -> None:
    """Stop (as on SIGTERM) when the process that started this one is gone, so a demo
    replay never outlives a crashed app."""
    import os
    import threading

    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def replay_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bci-replay``; returns the exit code: 0 when the session was played
    to its end (or stopped by Ctrl-C / SIGTERM), 2 on an error, including one that stops
    the player part way."""
    args = build_replay_parser().parse_args(argv)
    _setup_logging(args.verbose)

    signal.signal(signal.SIGTERM, _interrupt)
    if args.exit_with_parent:
        _exit_with_parent()
    return run_command("bci-replay", lambda: _replay_command(args), verbose=args.verbose, interrupted=0)


def _replay_command(args: argparse.Namespace) -> int:
    _check_replay_args(args)
    return _simulate(args) if args.simulate else _replay(args)


def _replay(args: argparse.Namespace) -> int:
    import warnings

    from .replay import SessionPlayer
    from .sessions import read_session

    # mne-lsl 1.14 warns at the end of every session whose length is a multiple of the
    # chunk size ("End of file reached with an empty chunk"); nothing is wrong then
    warnings.filterwarnings("ignore", message=".*End of file reached with an empty chunk")

    session = read_session(args.path, xdf_stream=args.xdf_stream, xdf_markers=args.xdf_markers)
    player = SessionPlayer(session, name=args.name, chunk_size=args.chunk_size, loop=args.loop,
                           markers=args.markers, source_id=args.source_id)
    markers = (f" and {player.marker_stream_name!r} ({args.markers}, {player.marker_count} markers)"
               if player.marker_stream_name else "")
    print(f"bci-replay: streaming {args.name!r} ({len(session.ch_names)} channels, {session.sfreq:g} Hz, "
          f"{session.duration / 60:.1f} min{', looping' if args.loop else ''}){markers}; Ctrl-C stops",
          file=sys.stderr, flush=True)
    player.start()
    try:
        player.wait()
    except KeyboardInterrupt:
        print("bci-replay: stopped", file=sys.stderr)
        return 0
    finally:
        if player.running:
            player.stop()
    print(f"bci-replay: done ({player.markers_sent} markers sent)", file=sys.stderr)
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from trainer.progress import ProgressBars
    from trainer.synth.live import SimulatedSubject

    from .simulate import Simulator

    with ProgressBars() as progress:  # the set's images are rendered again for their features
        subject = SimulatedSubject.open(args.data, args.subject, person=args.subject_seed, snr=args.snr,
                                        progress=lambda _, done, total: progress("rendering the set's images again, "
                                                                                 "for their features", done, total))
    sim = Simulator(subject, name=args.name, markers=args.markers_from, source_id=args.source_id,
                    image_set=args.image_set, chunk_size=args.chunk_size, noise=not args.no_noise, seed=args.seed,
                    delay=args.delay, latency=args.latency, marker_timeout=args.marker_timeout, timeout=args.timeout)
    sim.start()
    try:
        noise = "no noise" if args.no_noise else f"noise seed {args.seed}"
        latency = f", samples pushed {1000 * sim.latency:g} ms after their time" if sim.latency else ""
        print(f"bci-replay: simulating {subject.describe()} (snr {subject.config.snr:g}, {noise}) as {args.name!r} "
              f"({len(subject.model.ch_names)} EEG channels, {sim.sfreq:g} Hz, source id {sim.source_id!r}), "
              f"answering the markers of {args.markers_from!r} (looked for up to {args.timeout:g} s; responses "
              f"{1000 * sim.delay:g} ms after their marker{latency}); Ctrl-C stops", file=sys.stderr, flush=True)
        try:
            reason = sim.run()
        except KeyboardInterrupt:
            reason = "stopped"
    finally:
        sim.close()
    print(f"bci-replay: done ({reason}): {sim.stats.describe()}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
