"""Read the Dockerfile as a list of instructions, so tests can replay and check it."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ENV, …
    args: str

    @property
    def words(self) -> list[str]:
        """The arguments as a list: exec form (JSON array) or shell words."""
        if self.args.startswith("["):
            return [str(word) for word in json.loads(self.args)]
        return shlex.split(self.args)


def instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions in order, continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        result.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return result


def stages(path: Path = DOCKERFILE) -> list[list[Instruction]]:
    """The instructions of each stage, each list starting with its FROM."""
    result: list[list[Instruction]] = []
    for instruction in instructions(path):
        if instruction.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def env(stage: list[Instruction]) -> dict[str, str]:
    """ENV values set in a stage (`KEY=value` form)."""
    values: dict[str, str] = {}
    for instruction in stage:
        if instruction.keyword == "ENV":
            for word in instruction.words:
                key, _, value = word.partition("=")
                values[key] = value
    return values


def exposed_ports(path: Path = DOCKERFILE) -> set[int]:
    return {
        int(word.split("/")[0])
        for instruction in stages(path)[-1]
        if instruction.keyword == "EXPOSE"
        for word in instruction.words
    }
