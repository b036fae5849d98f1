#!/usr/bin/env python3
"""Run the shell commands of a Markdown file (the README) in order, as a new user would,
and report what each did and how long it took.

    git clone https://.../shallow-bci /tmp/docrun && cd /tmp/docrun
    python3 tools/run_doc_commands.py README.md --skip '^sudo ' --report /tmp/docrun.json

Each logical line of a ``bash`` block runs with ``bash -c`` in the working folder (default:
the current one), with a time limit:

- ``source DIR/bin/activate`` activates that environment for the lines after it;
- a line ending with ``&`` runs in the background until ``kill %N`` (the N-th background
  line) or the end of the run;
- a ``bci-app`` that opens the window and waits for the user (neither ``--headless``,
  ``--screenshot``, ``--max-epochs``, ``--duration`` nor a sub-command) is interactive: it
  passes when it is still running without having failed after ``--interactive-limit``
  seconds, and is then closed with SIGTERM, as the window's close button would;
- ``--skip REGEX`` leaves out lines (e.g. ``sudo``, or the CPU-only torch index when that
  index cannot be reached), ``--only REGEX`` runs only some (to run a step again).

The environment keeps the user's home untouched: ``XDG_CONFIG_HOME``, ``XDG_CACHE_HOME``
and ``SHALLOW_BCI_CACHE`` point into ``.doc-run/`` in the working folder, where the logs go
too.  Exit code 0 when every line passed.  Not part of the test suite (it installs
packages and trains models for an hour); ``tests/test_docs.py`` checks the commands parse.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("doc_commands", _HERE.parent / "tests" / "doc_commands.py")
doc_commands = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = doc_commands
_spec.loader.exec_module(doc_commands)

_APP_COMMANDS = ("streams", "recover", "sys-info")
_ENDS_BY_ITSELF = ("--headless", "--screenshot", "--max-epochs", "--duration", "-h", "--help")


def is_interactive(text: str, line: int = 0) -> bool:
    """Whether a line runs the window of ``bci-app`` until the user closes it."""
    for command in doc_commands.split_commands(line, text):
        if command.program != "bci-app":
            continue
        args = command.argv[1:]
        positional = [a for a in args if not a.startswith("-")]
        if positional and positional[0] in _APP_COMMANDS:
            continue
        if not any(a.split("=")[0] in _ENDS_BY_ITSELF for a in args):
            return True
    return False


def _stop(proc: subprocess.Popen, grace: float = 30.0) -> int:
    """SIGTERM to the process group, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    text = lines[-1] if lines else ""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text.split("\r")[-1])  # progress bars
    return text[:160]


def run(markdown: Path, workdir: Path, *, limit: float, interactive_limit: float, skip: list[str],
        limits: list[tuple[str, float]], env_extra: dict[str, str], only: list[str] = ()) -> list[dict]:
    state = workdir / ".doc-run"
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    active_bin = os.environ.get("VIRTUAL_ENV")
    if active_bin:  # the caller's environment must not stand in for the one the README makes
        env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not p.startswith(active_bin))
    env.update(XDG_CONFIG_HOME=str(state / "config"), XDG_CACHE_HOME=str(state / "cache"),
               SHALLOW_BCI_CACHE=str(state / "cache" / "shallow-bci"))
    env.update(env_extra)
    jobs: list[tuple[subprocess.Popen, dict]] = []
    results: list[dict] = []
    n = 0
    for block in doc_commands.code_blocks(markdown):
        if block.language not in doc_commands.SHELL_LANGUAGES:
            continue
        for line, text in doc_commands.logical_lines(block):
            n += 1
            source = doc_commands.split_commands(line, text)[0].source if doc_commands.split_commands(line, text) else text
            result = {"n": n, "line": line, "command": source, "seconds": 0.0}
            results.append(result)
            log = logs / f"{n:02d}.log"
            print(f"[{n:02d}] line {line}: {source}", flush=True)
            activation = re.fullmatch(r"(?:source|\.)\s+(\S+)/bin/activate", source)
            if any(re.search(pattern, source) for pattern in skip) or (only and not activation and
                                                                       not any(re.search(o, source) for o in only)):
                result["result"] = "skipped"
                print("     skipped", flush=True)
                continue
            if activation:
                venv = (workdir / activation.group(1)).resolve()
                env["VIRTUAL_ENV"] = str(venv)
                env["PATH"] = str(venv / "bin") + os.pathsep + env["PATH"]
                result["result"] = "ok (activated)"
                continue
            m = re.fullmatch(r"kill\s+%(\d+)", source)
            if m:
                k = int(m.group(1))
                if not 1 <= k <= len(jobs):
                    result["result"] = f"FAILED: no background job %{k}"
                    continue
                proc, started = jobs[k - 1]
                code = _stop(proc)
                started["seconds"] = round(time.monotonic() - started.pop("_t0"), 1)
                started["result"] = f"ok (background, stopped; exit {code})" if code in (0, -15) else \
                    f"FAILED: background job exit {code}"
                result["result"] = "ok"
                continue
            background = source.rstrip().endswith("&") and not source.rstrip().endswith("&&")
            command = source.rstrip()[:-1] if background else source
            interactive = is_interactive(text, line)
            own_limit = next((s for pattern, s in limits if re.search(pattern, source)),
                             interactive_limit if interactive else limit)
            t0 = time.monotonic()
            with open(log, "w") as out:
                proc = subprocess.Popen(["bash", "-c", command], cwd=workdir, env=dict(env), stdout=out,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            if background:
                result.update(result="running (background)", _t0=t0, log=str(log))
                jobs.append((proc, result))
                time.sleep(2)  # let it come up, as a user would before the next line
                if proc.poll() is not None:
                    result.pop("_t0")
                    result.update(result=f"FAILED: background job ended at once (exit {proc.returncode})",
                                  seconds=round(time.monotonic() - t0, 1))
                continue
            try:
                code = proc.wait(timeout=own_limit)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                before_close = log.read_text(errors="replace")
                last_before_close = _last_line(log)
                code = _stop(proc)
            seconds = round(time.monotonic() - t0, 1)
            last = _last_line(log)
            if timed_out and interactive:
                verdict = f"ok (interactive: still running after {own_limit:g} s, closed; exit {code})"
                errors = [ln for ln in before_close.splitlines() if re.search(r"ERROR|error:|Traceback", ln)]
                if errors:
                    verdict = f"FAILED: interactive, before it was closed: {errors[0][:120]}"
                elif code not in (0, -15):
                    verdict = f"FAILED: interactive, exit {code} on close"
                last = last_before_close
            elif timed_out:
                verdict = f"FAILED: still running after {own_limit:g} s"
            else:
                verdict = "ok" if code == 0 else f"FAILED: exit {code}"
            result.update(result=verdict, seconds=seconds, last_output=last, log=str(log))
            print(f"     {verdict} in {seconds:g} s; last output: {last}", flush=True)
    for proc, started in jobs:
        if "_t0" in started:
            code = _stop(proc)
            started["seconds"] = round(time.monotonic() - started.pop("_t0"), 1)
            started["result"] = f"ok (background, stopped at the end; exit {code})" if code in (0, -15) else \
                f"FAILED: background job exit {code}"
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run the bash blocks of a Markdown file in order and report.")
    p.add_argument("markdown", type=Path)
    p.add_argument("--workdir", type=Path, default=Path.cwd(), help="where the commands run (default: here)")
    p.add_argument("--limit", type=float, default=3600, help="seconds a line may take (default 3600)")
    p.add_argument("--interactive-limit", type=float, default=60,
                   help="seconds a window is left open before it is closed (default 60)")
    p.add_argument("--limit-for", action="append", default=[], metavar="REGEX=SECONDS",
                   help="another limit for the lines REGEX matches (repeatable)")
    p.add_argument("--skip", action="append", default=[], metavar="REGEX", help="leave out matching lines")
    p.add_argument("--only", action="append", default=[], metavar="REGEX",
                   help="run only the matching lines (and the activation of the environment)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="set for every line")
    p.add_argument("--report", type=Path, default=None, help="also write the results as JSON")
    args = p.parse_args(argv)
    limits = []
    for item in args.limit_for:
        pattern, _, seconds = item.rpartition("=")
        limits.append((pattern, float(seconds)))
    env_extra = dict(item.split("=", 1) for item in args.env)
    markdown = args.markdown.resolve()
    results = run(markdown, args.workdir.resolve(), limit=args.limit, interactive_limit=args.interactive_limit,
                  skip=args.skip, limits=limits, env_extra=env_extra, only=args.only)
    print("\n| # | line | seconds | result | command |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['n']} | {r['line']} | {r['seconds']:g} | {r['result']} | `{r['command']}` |")
    if args.report:
        args.report.write_text(json.dumps(results, indent=2))
    return 0 if all(not r["result"].startswith("FAILED") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
