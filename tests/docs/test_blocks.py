"""Docs that cannot lie: every ```bash and ```python block of README.md and docs/ is executed.

Each page runs in its own scratch directory whose entries link to the repository's (configs/,
docs/, benchmarks/, ...), so `ivx run configs/x.yaml` works as written and its runs/ land in the
scratch directory. Blocks of a page run in page order (a later block may read what an earlier one
wrote); consecutive ```python blocks share one interpreter, like notebook cells. Cheap blocks run
in the fast tier, forked from one server that imported torch and transformers once (zygote.py);
`<!-- ivx-docs: slow -->` blocks, and in the slow tier every page again in fresh processes, run
under `-m slow`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs import zygote
from tests.docs.blocks import ROOT, Block, all_blocks, documents, parse

PAGES = [p for p in documents() if any(b.runs for b in parse(p))]
FAST_PAGES = [p for p in PAGES if any(b.runs and not b.slow for b in parse(p))]
DRIVER = """
import json, sys
namespace = {"__name__": "__main__"}
for where, code in json.load(open(sys.argv[1])):
    print(f"--- {where}", flush=True)
    exec(compile(code, where, "exec"), namespace)
"""


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def scratch(tmp_path: Path) -> Path:
    """A directory that looks like the repository root but keeps what the blocks write."""
    work = tmp_path / "repo"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in {"runs", ".git"} and not entry.name.startswith("."):
            (work / entry.name).symlink_to(entry)
    return work


def environment(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(MPLBACKEND="Agg", HF_HUB_OFFLINE="1", TMPDIR=str(tmp_path), OMP_NUM_THREADS="1")
    env.setdefault("IVX_CACHE_DIR", str(tmp_path / "ivx-cache"))
    return env


def groups(blocks: list[Block]) -> list[list[Block]]:
    """Consecutive python blocks run in one interpreter; each bash block on its own."""
    out: list[list[Block]] = []
    for block in blocks:
        if out and block.language == "python" and out[-1][-1].language == "python":
            out[-1].append(block)
        else:
            out.append([block])
    return out


def execute(blocks: list[Block], tmp_path: Path, fork: bool = False) -> None:
    """Run the blocks in page order in one scratch directory; fail naming the block's line.

    fork: `ivx` and the python groups run in children of the docs fork server (tests/docs/zygote.py:
    torch and transformers imported once per session) instead of fresh interpreters."""
    work, env = scratch(tmp_path), environment(tmp_path)
    python = [sys.executable, "-c"]
    if fork:
        shims = zygote.shims(env)
        env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
        python = [str(shims / "python-fork")]
    for group in groups(blocks):
        if group[0].language == "bash":
            command = ["bash", "-e", "-o", "pipefail", "-c", group[0].code]
        else:
            cells = tmp_path / "cells.json"
            cells.write_text(json.dumps([[b.where, b.code] for b in group]))
            command = [*python, DRIVER, str(cells)]
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            where = ", ".join(b.where for b in group)
            pytest.fail(
                f"{where} exited {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
            )


@pytest.mark.parametrize("page", FAST_PAGES, ids=page_id)
def test_fast_blocks_run(page: Path, tmp_path: Path) -> None:
    """The page's cheap blocks (no slow marker) run and exit 0 (forked from the docs fork server;
    the slow tier runs them again in fresh processes)."""
    execute([b for b in parse(page) if b.runs and not b.slow], tmp_path, fork=zygote.enabled())


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_block_runs(page: Path, tmp_path: Path) -> None:
    """Every runnable block of the page, slow ones included, runs in page order and exits 0, each
    command in a fresh process (the fast tier forks its cheap blocks from tests/docs/zygote.py)."""
    execute([b for b in parse(page) if b.runs], tmp_path)


def test_markers_are_known_and_skips_give_a_reason() -> None:
    """Only `slow` and `skip (reason)` markers exist; a skip without a reason is an error."""
    bad = []
    for block in all_blocks():
        for marker in block.markers:
            if marker.startswith("ci:"):
                ok = block.path.name == "README.md" and marker in ("ci: setup", "ci: test")
            else:
                ok = marker == "ivx-docs: slow" or bool(re.fullmatch(r"ivx-docs: skip \(.+\)", marker))
            if not ok:
                bad.append(f"{block.where}: {marker}")
    assert not bad, bad


def test_quoted_configs_match_the_shipped_files() -> None:
    """A yaml block whose first line is `# configs/x.yaml` is a verbatim excerpt of that file."""
    quoted = [b for b in all_blocks() if b.language == "yaml" and b.code.startswith("# configs/")]
    assert quoted, "no doc quotes a shipped config"
    for block in quoted:
        first, *rest = block.code.splitlines()
        path = ROOT / first[2:].strip()
        assert path.is_file(), f"{block.where}: {path} does not exist"
        lines = path.read_text().splitlines()
        n = len(rest)
        assert any(lines[i : i + n] == rest for i in range(len(lines) - n + 1)), (
            f"{block.where} is not a verbatim excerpt of {first[2:].strip()}"
        )


def test_readme_has_one_setup_and_one_test_command() -> None:
    """.ci/run extracts these two blocks: each exactly one command; the README stays short."""
    readme = parse(ROOT / "README.md")
    for marker in ("ci: setup", "ci: test"):
        found = [b for b in readme if marker in b.markers]
        assert len(found) == 1, f"README.md needs exactly one block marked <!-- {marker} -->"
        commands = [x for x in found[0].code.splitlines() if x.strip() and not x.lstrip().startswith("#")]
        assert len(commands) == 1 and found[0].language == "bash", found[0].where
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_readme_links_resolve() -> None:
    """Every relative link and image of README.md names a file or directory of the repository."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert targets and not missing, missing
