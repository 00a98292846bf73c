"""User errors: the base class every user-facing error subclasses, and config problems.

A user error means the input is wrong (a config problem, an unknown model, a bad bundle, vector
or run directory), not that ivx failed: the command line prints it as one line per problem and
exits 2 (`ivx.cli.errors`). `Problem` is one thing wrong with a config (where: file:line and
dotted path; what); `ConfigError` carries all of them at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class UserError(Exception):
    """The input is wrong, not ivx: reported as one line (or one per problem), exit code 2."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where it is and what is wrong."""

    file: str
    line: int | None
    path: str
    message: str

    def format(self) -> str:
        """Render as `file:line  dotted.path  message`."""
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}  {self.path or '<root>'}  {self.message}"


_PROMPT = re.compile(r"\bprompt (\d+)")
_TOKENS = re.compile(r"\((\d+) tokens\)")


def collapse(problems: list[Problem]) -> list[Problem]:
    """One problem per distinct (place, message) where messages differ only in the prompt:
    `position 9 is outside the prompt (7 tokens)` in 50 prompts is one line with the count."""
    groups: dict[tuple[str, int | None, str, str], list[Problem]] = {}
    for p in problems:
        shape = _TOKENS.sub("(# tokens)", _PROMPT.sub("prompt #", p.message))
        groups.setdefault((p.file, p.line, p.path, shape), []).append(p)
    out: list[Problem] = []
    for (file, line, path, shape), members in groups.items():
        ids = list(dict.fromkeys(m.group(1) for p in members for m in [_PROMPT.search(p.message)] if m))
        if len(members) == 1 or len(ids) < 2:
            out.append(members[0])
            continue
        lengths = sorted({int(m) for p in members for m in _TOKENS.findall(p.message)})
        span = f"{lengths[0]}–{lengths[-1]}" if len(lengths) > 1 else str(lengths[0]) if lengths else "#"
        listed = ", ".join(ids[:5]) + (", …" if len(ids) > 5 else "")
        message = shape.replace("prompt #", f"{len(ids)} prompts ({listed})", 1).replace("prompt #", "each")
        out.append(Problem(file, line, path, message.replace("(# tokens)", f"({span} tokens)")))
    return out


class ConfigError(UserError):
    """Raised with every problem found in a config (never just the first); problems that differ
    only in the prompt they occur in are collapsed into one with a count."""

    def __init__(self, problems: list[Problem]) -> None:
        problems = collapse(list(dict.fromkeys(problems)))
        super().__init__("\n".join(p.format() for p in problems))
        self.problems = problems


def dotted(path: tuple) -> str:
    """A YAML path as `interventions[0].layer`."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
