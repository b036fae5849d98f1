"""The shell commands of the documentation: fenced code blocks of Markdown files, their
logical lines (``\\`` continuations joined, comments dropped) and the simple commands in
them (split at ``&&``, ``||``, ``;``, ``|`` and a trailing ``&``; redirections and
``NAME=value`` prefixes set apart).  Used by ``tests/test_docs.py`` (every ``bci-*``
command parses) and ``tools/run_doc_commands.py`` (run them in order).

A small tokenizer of the shell's quoting rules, not a shell: enough for documentation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Block", "Command", "PROGRAMS", "SHELL_LANGUAGES", "code_blocks", "logical_lines", "split_commands"]

PROGRAMS = ("bci-train", "bci-app", "bci-replay")
SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
_OPERATORS = ("&&", "||", ";", "|", "&")
_REDIRECTION = re.compile(r"^[0-9]*(>>|>&|<&|>|<|&>)$")
_WRAPPERS = {"sudo", "time", "nohup", "exec"}


@dataclass(frozen=True)
class Block:
    """A fenced code block: its file, the line of its first content line, language, text."""

    path: Path
    line: int
    language: str
    text: str


@dataclass
class Command:
    """One simple command of a logical line."""

    line: int  # line in the Markdown file where its logical line starts
    source: str  # the logical line it came from (continuations joined, comment dropped)
    argv: list[str]  # program and arguments, quotes removed, without env prefix and redirections
    env: dict[str, str] = field(default_factory=dict)  # NAME=value prefixes
    redirections: list[tuple[str, str]] = field(default_factory=list)  # (operator, target)
    background: bool = False  # ended with '&'

    @property
    def program(self) -> str:
        """The program's name without a path prefix (``.venv/bin/bci-app`` -> ``bci-app``)."""
        return self.argv[0].rsplit("/", 1)[-1] if self.argv else ""


def code_blocks(path: str | Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    path = Path(path)
    blocks: list[Block] = []
    fence = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if fence is None:
            m = re.match(r"^(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if m:
                fence, language, start, body = m.group(1), m.group(2).lower(), number + 1, []
        elif stripped.startswith(fence) and stripped.strip(fence[0]) == "":
            blocks.append(Block(path, start, language, "\n".join(body)))
            fence = None
        else:
            body.append(line)
    if fence is not None:
        raise ValueError(f"{path}: the code block opened on line {start - 1} is never closed")
    return blocks


def _tokens(text: str) -> tuple[list[tuple[str, bool]], bool]:
    """Shell words and operators of one line: [(token, is_operator)], and whether a
    comment ended it.  Quotes are removed from words; ``#`` starts a comment at the start
    of a word."""
    out: list[tuple[str, bool]] = []
    word, in_word, i, n = [], False, 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t":
            if in_word:
                out.append(("".join(word), False))
                word, in_word = [], False
            i += 1
        elif c == "#" and not in_word:
            return out, True
        elif c == "'":
            j = text.find("'", i + 1)
            if j < 0:
                raise ValueError(f"unclosed single quote in: {text}")
            word.append(text[i + 1:j])
            in_word, i = True, j + 1
        elif c == '"':
            j, buf = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n and text[j + 1] in '"\\$`':
                    j += 1
                buf.append(text[j])
                j += 1
            if j >= n:
                raise ValueError(f"unclosed double quote in: {text}")
            word.append("".join(buf))
            in_word, i = True, j + 1
        elif c == "\\" and i + 1 < n:
            word.append(text[i + 1])
            in_word, i = True, i + 2
        elif c in "&|;<>":
            op = next(o for o in ("&&", "||", ">>", ">&", "<&", "&>", c) if text.startswith(o, i))
            i += len(op)
            if op in (">", ">>", ">&", "<", "<&") and in_word and "".join(word).isdigit():  # 2> FILE
                op, word, in_word = "".join(word) + op, [], False
            if in_word:
                out.append(("".join(word), False))
                word, in_word = [], False
            out.append((op, True))
        else:
            word.append(c)
            in_word, i = True, i + 1
    if in_word:
        out.append(("".join(word), False))
    return out, False


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """(line number, text) of each logical line: continuations joined, blank lines and
    whole-line comments left out; a trailing comment stays (the tokenizer drops it)."""
    lines: list[tuple[int, str]] = []
    pending, start = "", 0
    for offset, line in enumerate(block.text.splitlines()):
        if not pending:
            start = block.line + offset
            if not line.strip() or line.strip().startswith("#"):
                continue
        if line.rstrip().endswith("\\") and not _tokens(line)[1]:  # a '\' inside a comment continues nothing
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((start, (pending + line).strip()))
        pending = ""
    if pending:
        lines.append((start, pending.strip()))
    return lines


def _source(text: str) -> str:
    """The line without its trailing comment (for reports)."""
    if not _tokens(text)[1]:
        return text.strip()
    # cut at the first '#' that starts a word outside quotes
    quote = None
    for i, c in enumerate(text):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] in " \t"):
            return text[:i].strip()
    return text.strip()


def split_commands(line: int, text: str) -> list[Command]:
    """The simple commands of one logical line."""
    tokens, _ = _tokens(text)
    source = _source(text)
    commands: list[Command] = []
    current = Command(line, source, [])
    expect_target: str | None = None
    for token, is_op in tokens:
        if expect_target is not None:
            if is_op:
                raise ValueError(f"line {line}: a redirection without a target: {text}")
            current.redirections.append((expect_target, token))
            expect_target = None
        elif is_op and _REDIRECTION.match(token):
            expect_target = token
        elif is_op:
            if token == "&":
                current.background = True
            if current.argv:
                commands.append(current)
            current = Command(line, source, [])
        elif not current.argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token):
            name, _, value = token.partition("=")
            current.env[name] = value
        elif not current.argv and token in _WRAPPERS:
            continue
        else:
            current.argv.append(token)
    if expect_target is not None:
        raise ValueError(f"line {line}: a redirection without a target: {text}")
    if current.argv:
        commands.append(current)
    return commands
