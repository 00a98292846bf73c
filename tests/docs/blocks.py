"""Fenced code blocks of README.md and docs/**/*.md, with the markers that say how to run them.

A ```bash or ```python block is executed by tests/docs/test_blocks.py; ```text (and any other
language) is not. The line before a block may say how:

    <!-- ivx-docs: skip (reason) -->   not executed; the reason is required
    <!-- ivx-docs: slow -->            executed in the slow tier (`pytest -m slow`)
    <!-- ci: setup -->  <!-- ci: test -->   README's commands that .ci/run extracts (never run here)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_LANGUAGES = ("bash", "python")
FENCE = re.compile(r"^(\s*)```([\w+-]*)\s*$")
MARKER = re.compile(r"^\s*<!--\s*(ivx-docs|ci):\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its code and its markers."""

    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    markers: tuple[str, ...]  # e.g. ("ivx-docs: slow", "ci: setup")

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        for marker in self.markers:
            if marker.startswith("ivx-docs: skip"):
                return marker[len("ivx-docs: skip") :].strip()
        return None

    @property
    def slow(self) -> bool:
        return "ivx-docs: slow" in self.markers

    @property
    def runs(self) -> bool:
        return self.language in RUN_LANGUAGES and self.skip_reason is None


def documents() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse(path: Path) -> list[Block]:
    """Every fenced block of one Markdown file, with the marker comments right above it."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, language = opening.group(1), opening.group(2)
        markers: list[str] = []
        j = i - 1
        while j >= 0 and (m := MARKER.match(lines[j])):
            markers.insert(0, f"{m.group(1)}: {m.group(2)}")
            j -= 1
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{i + 1}: unclosed ``` fence")
        body = [x[len(indent) :] if x.startswith(indent) else x for x in lines[i + 1 : end]]
        blocks.append(Block(path, i + 1, language, "\n".join(body) + "\n", tuple(markers)))
        i = end + 1
    return blocks


def all_blocks() -> list[Block]:
    """Blocks of every documented page, in page order."""
    return [block for path in documents() for block in parse(path)]
