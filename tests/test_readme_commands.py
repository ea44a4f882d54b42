"""Every command the README shows works as written, in order, with only Python and make.

The README's `sh` blocks (and the `make …` / `.venv/bin/…` commands it quotes in the
text) are read in document order and each command is checked without running it: what it
runs is on a PATH of only Python's and make's directories, or is a tool the README tells
you to install; a `make` target is defined in the Makefile; a `.venv/bin/` program exists
by then (an earlier target made `.venv`) and the `voicebridge` command line accepts the
arguments; a module run with `python -m` exists; and every file a command reads is in the
repository or written by an earlier command. So the README cannot drift from the code.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
import shlex
import shutil
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.dockerfile import ROOT
from tests.fixtures import load
from voicebridge.audio import read_audio_as_ulaw
from voicebridge.cli import build_parser

# Tools the README asks you to install where it uses them (the deploy section links
# flyctl's installer; curl stands for any HTTP client against your deployment).
INSTALLED_BY_THE_READER = {"fly", "curl"}
BUILTINS = {"cd", "echo", "export"}
BLOCK_LANGUAGES = {"sh", "dotenv", "json", "python", "text"}
SEPARATORS = {"|", "||", "&&", ";", "&"}
OUTPUT_OPTIONS = {"--out", "-o"}
INPUT_SUFFIXES = {".wav", ".txt", ".json", ".example", ".ulaw", ".raw"}
INLINE_COMMAND = re.compile(r"`((?:make |uv |\.venv/bin/)[^`\n]+)`")
ELLIPSIS = "…"  # a quoted command with a bare `…` for its arguments names it, it isn't one


def minimal_path() -> str:
    """Only the directories of the base Python (not the venv's) and make."""
    make = shutil.which("make")
    assert make, "make is not installed"
    python = Path(getattr(sys, "_base_executable", sys.executable))
    return os.pathsep.join(dict.fromkeys([str(python.parent), str(Path(make).parent)]))


@dataclass(frozen=True)
class Makefile:
    """Targets and what each depends on, from the Makefile's rule lines."""

    deps: dict[str, list[str]]

    @classmethod
    def read(cls, text: str) -> Makefile:
        deps: dict[str, list[str]] = {}
        for line in text.splitlines():
            rule = re.match(r"^([A-Za-z0-9_.\-/]+):(?!=)([^#]*)", line)
            if rule:
                deps[rule.group(1)] = rule.group(2).split()
        return cls(deps)

    def makes_venv(self, target: str) -> bool:
        """Whether running `target` runs `sync` (which creates .venv) first."""
        return target == "sync" or any(self.makes_venv(dep) for dep in self.deps.get(target, []))


@dataclass
class Reader:
    """A newcomer following the README: what exists so far, and what went wrong."""

    makefile: Makefile
    path: str
    scripts: set[str]
    venv: bool = False
    created: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    def run(self, where: str, words: list[str]) -> None:
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            words = words[1:]  # VAR=value before the command
        if not words:
            return
        program, args = words[0], words[1:]
        if program == "make":
            self.make(where, args)
        elif program.startswith(".venv/bin/"):
            self.venv_program(where, program.removeprefix(".venv/bin/"), args)
        elif program not in BUILTINS | INSTALLED_BY_THE_READER and not shutil.which(
            program, path=self.path
        ):
            self.problems.append(f"{where}: `{program}` is not on a PATH of Python and make")
        self.files(where, program, args)

    def make(self, where: str, args: list[str]) -> None:
        for target in args:
            if target.startswith("-") or "=" in target:
                continue
            if target not in self.makefile.deps:
                self.problems.append(f"{where}: the Makefile has no target `{target}`")
            self.venv = self.venv or self.makefile.makes_venv(target)

    def venv_program(self, where: str, name: str, args: list[str]) -> None:
        if not self.venv:
            self.problems.append(f"{where}: .venv/bin/{name} before a make target created .venv")
        if name in ("python", "python3"):
            module = ROOT / args[args.index("-m") + 1].replace(".", "/") if "-m" in args else None
            if module and not (
                module.with_suffix(".py").exists() or (module / "__main__.py").exists()
            ):
                self.problems.append(
                    f"{where}: no module `{args[args.index('-m') + 1]}` in the repository"
                )
        elif name not in self.scripts:
            self.problems.append(f"{where}: .venv/bin/{name} is not a script of pyproject.toml")
        elif name == "voicebridge":
            complaint = io.StringIO()
            with contextlib.redirect_stderr(complaint), contextlib.suppress(SystemExit):
                build_parser().parse_args(args)
            if complaint.getvalue():
                last = complaint.getvalue().strip().splitlines()[-1]
                self.problems.append(f"{where}: `voicebridge` refuses its arguments: {last}")

    def files(self, where: str, program: str, args: list[str]) -> None:
        """Outputs become available to later commands; inputs must exist by now."""
        outputs = {b for a, b in itertools.pairwise(args) if a in OUTPUT_OPTIONS | {">"}}
        if program == "cp" and args:
            outputs.add(args[-1])
        for word in args:
            name = word.removeprefix("@")
            if word in outputs or "://" in name or Path(name).suffix not in INPUT_SUFFIXES:
                continue
            if not (ROOT / name).exists() and name not in self.created:
                self.problems.append(f"{where}: reads {name}, which nothing has made")
        self.created |= outputs


def parts(markdown: str) -> Iterator[tuple[int, str | None, list[str]]]:
    """(line number, language, lines) in order: a fenced block, or a line of prose (None)."""
    lines = markdown.splitlines()
    fence: tuple[int, str] | None = None
    for number, line in enumerate(lines, 1):
        if line.startswith("```"):
            if fence is None:
                fence = (number, line[3:].strip())
            else:
                yield fence[0], fence[1], lines[fence[0] : number - 1]
                fence = None
        elif fence is None:
            yield number, None, [line]


def commands(first_line: int, lines: list[str]) -> Iterator[tuple[str, list[str]]]:
    """Simple commands of a shell block, with heredoc bodies skipped."""
    joined: list[tuple[int, str]] = []
    for number, line in enumerate(lines, first_line + 1):
        if joined and joined[-1][1].endswith("\\"):
            joined[-1] = (joined[-1][0], joined[-1][1][:-1] + " " + line)
        else:
            joined.append((number, line))
    heredoc_end: str | None = None
    for number, line in joined:
        if heredoc_end is not None:
            heredoc_end = None if line.strip() == heredoc_end else heredoc_end
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        if "<<" in words:
            heredoc_end = words[words.index("<<") + 1]
            words = words[: words.index("<<")]
        command: list[str] = []
        for word in [*words, ";"]:
            if word in SEPARATORS:
                if command:
                    yield f"README.md:{number}", command
                command = []
            else:
                command.append(word)


def problems(markdown: str) -> list[str]:
    """What a newcomer following `markdown` word for word would run into."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reader = Reader(
        Makefile.read((ROOT / "Makefile").read_text()),
        minimal_path(),
        set(pyproject["project"]["scripts"]),
    )
    for number, language, lines in parts(markdown):
        if language is None:
            for span in INLINE_COMMAND.findall(lines[0]):
                if ELLIPSIS not in shlex.split(span):
                    reader.run(f"README.md:{number}", shlex.split(span))
        elif language == "sh":
            for where, words in commands(number, lines):
                reader.run(where, words)
        elif language not in BLOCK_LANGUAGES:
            reader.problems.append(f"README.md:{number}: a block needs a known language")
    return reader.problems


def test_every_readme_command_runs_as_written_with_only_python_and_make() -> None:
    assert problems((ROOT / "README.md").read_text()) == []


def test_the_check_catches_a_drifting_readme() -> None:
    drifted = """
```sh
.venv/bin/voicebridge transcripts list
make sync
uv run voicebridge simulate --wav hello.wav
make serve
.venv/bin/voicebridge simulate --wav samples/book-a-table.wav --loud
.venv/bin/python -m infra.nowhere
```
Then `voicebridge call +15551234567` (prose, not a command) and `make nothing`.
"""
    found = problems(drifted)
    expected = [
        ".venv/bin/voicebridge before a make target created .venv",
        "`uv` is not on a PATH of Python and make",
        "reads hello.wav, which nothing has made",
        "the Makefile has no target `serve`",
        "refuses its arguments: ",
        "no module `infra.nowhere`",
        "the Makefile has no target `nothing`",
    ]
    assert len(found) == len(expected), found
    for problem, want in zip(found, expected, strict=True):
        assert want in problem, (problem, want)


@pytest.mark.parametrize("language", ["bash", "console"])
def test_a_block_in_another_shell_language_is_not_skipped_silently(language: str) -> None:
    assert problems(f"```{language}\nmake sync\n```\n") == [
        "README.md:1: a block needs a known language"
    ]


def test_the_arguments_are_checked_with_the_parser_the_console_script_runs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["voicebridge"] == "voicebridge.cli:main"


def test_the_sample_caller_is_speech_simulate_can_send() -> None:
    """samples/book-a-table.wav is the caller fixture as 16-bit PCM: any player opens it."""
    assert read_audio_as_ulaw(ROOT / "samples" / "book-a-table.wav") == load("caller_book_table")
