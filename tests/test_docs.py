"""The documentation's commands are real commands: every ``bci-train``, ``bci-app`` and
``bci-replay`` command line in a shell code block of README.md and docs/*.md parses with
that command's own parser (``parse_args`` only, nothing runs), so a literal ``...``, an
option that does not exist or a missing required argument fails here.  Synopses with
``[optional]`` parts belong in ``text`` blocks.  (``tools/run_doc_commands.py`` runs the
README's commands for real.)"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_spec = importlib.util.spec_from_file_location("doc_commands", Path(__file__).with_name("doc_commands.py"))
doc_commands = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = doc_commands  # its dataclasses look their module up
_spec.loader.exec_module(doc_commands)


def _parser(program: str):
    if program == "bci-train":
        from trainer.cli import build_parser
    elif program == "bci-app":
        from bci_app.cli import build_parser
    else:
        from bci_app.cli import build_replay_parser as build_parser
    return build_parser()


def parse_error(program: str, args: list[str]) -> str | None:
    """argparse's complaint about ``program args``, or None when they parse."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            _parser(program).parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return (err.getvalue().strip().splitlines() or [f"exit {exc.code}"])[-1]
    return None


def documented_commands() -> list[tuple[str, object]]:
    """(``file:line``, Command) of every bci-* command in the shell blocks of the docs."""
    found = []
    for path in DOCS:
        for block in doc_commands.code_blocks(path):
            if block.language not in doc_commands.SHELL_LANGUAGES:
                continue
            for line, text in doc_commands.logical_lines(block):
                for command in doc_commands.split_commands(line, text):
                    if command.program in doc_commands.PROGRAMS:
                        found.append((f"{path.relative_to(ROOT)}:{line}", command))
    return found


def test_every_documented_command_parses():
    commands = documented_commands()
    # the extraction found the documentation's commands, of all three tools
    assert len(commands) >= 25, [where for where, _ in commands]
    assert {c.program for _, c in commands} == set(doc_commands.PROGRAMS)
    assert any(where.startswith("README.md") for where, _ in commands)
    failures = []
    for where, command in commands:
        problem = parse_error(command.program, command.argv[1:])
        if problem is not None:
            failures.append(f"{where}: {command.source}\n    -> {problem}")
    assert not failures, "commands in the docs that do not parse:\n" + "\n".join(failures)


def test_the_readme_commands_end_by_themselves():
    """The README's commands are run as written, in order: a headless decoder needs a stop
    condition (a replay without --loop ends, and a decoder waiting for more epochs than it
    sent would wait forever), and a process sent to the background is stopped later on."""
    background, problems = 0, []
    for block in doc_commands.code_blocks(ROOT / "README.md"):
        if block.language not in doc_commands.SHELL_LANGUAGES:
            continue
        for line, text in doc_commands.logical_lines(block):
            for command in doc_commands.split_commands(line, text):
                args = command.argv[1:]
                if command.background:
                    background += 1
                elif command.argv[:1] == ["kill"] and args:
                    background -= 1
                if command.program == "bci-app" and "--headless" in args and not {
                        "--max-epochs", "--duration", "--idle-exit"} & set(args):
                    problems.append(f"README.md:{line}: a headless decoder without a stop condition: {command.source}")
    assert background == 0, "a background process of the README is never stopped (kill %N)"
    assert not problems, "\n".join(problems)


def test_commands_are_in_shell_or_text_blocks():
    """A command line in an untagged (or other) block would escape the check above: tag it
    ``bash`` (checked) or, for a synopsis, ``text``."""
    untagged = []
    for path in DOCS:
        for block in doc_commands.code_blocks(path):
            if block.language in (*doc_commands.SHELL_LANGUAGES, "text"):
                continue
            for offset, line in enumerate(block.text.splitlines()):
                if line.strip().split(" ")[0].rsplit("/", 1)[-1] in doc_commands.PROGRAMS:
                    untagged.append(f"{path.relative_to(ROOT)}:{block.line + offset} ({block.language or 'no language'}): "
                                    f"{line.strip()}")
    assert not untagged, "\n".join(untagged)


def test_the_checker_catches_what_it_is_for():
    assert parse_error("bci-train", ["sweep", "--data", "d", "--out", "o", "--layers", "all", "..."]) is not None
    assert "--out" in parse_error("bci-train", ["fit", "--data", "d"])  # a required option missing
    assert "--loop-forever" in parse_error("bci-replay", ["f.npy", "--loop-forever"])
    assert parse_error("bci-app", ["--bundle", "RUN", "[--stream", "NAME]"]) is not None  # a synopsis
    assert parse_error("bci-app", ["--max-epochs", "N"]) is not None
    assert parse_error("bci-app", ["--help"]) is None
    assert parse_error("bci-app", ["streams", "--timeout", "2"]) is None


def test_the_extraction_follows_the_shell(tmp_path):
    md = tmp_path / "x.md"
    md.write_text(
        "text\n"
        "```bash\n"
        "# a comment line\n"
        "bci-train fit --data d --out 'runs/a b' \\\n"
        "    --epochs 3          # trailing comment with a \\\n"
        "bci-replay s.npy --name x --loop &   # background\n"
        "QT_QPA_PLATFORM=offscreen .venv/bin/bci-app --demo 2>&1 > log.txt && bci-app streams | grep x\n"
        "sudo apt-get install libxcb1; kill %1\n"
        "```\n"
        "```text\n"
        "bci-app [--bundle RUN]\n"
        "```\n")
    blocks = doc_commands.code_blocks(md)
    assert [(b.language, b.line) for b in blocks] == [("bash", 3), ("text", 11)]
    lines = doc_commands.logical_lines(blocks[0])
    assert [n for n, _ in lines] == [4, 6, 7, 8]
    commands = [c for n, t in lines for c in doc_commands.split_commands(n, t)]
    assert [c.argv for c in commands] == [
        ["bci-train", "fit", "--data", "d", "--out", "runs/a b", "--epochs", "3"],
        ["bci-replay", "s.npy", "--name", "x", "--loop"],
        [".venv/bin/bci-app", "--demo"],
        ["bci-app", "streams"],
        ["grep", "x"],
        ["apt-get", "install", "libxcb1"],
        ["kill", "%1"],
    ]
    assert commands[0].source == "bci-train fit --data d --out 'runs/a b'      --epochs 3"
    assert commands[1].background and not commands[0].background
    assert commands[2].program == "bci-app" and commands[2].env == {"QT_QPA_PLATFORM": "offscreen"}
    assert commands[2].redirections == [("2>&", "1"), (">", "log.txt")]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_code_blocks_are_closed(path):
    doc_commands.code_blocks(path)  # raises on a block that is never closed
