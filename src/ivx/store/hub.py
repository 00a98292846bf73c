"""Publish bundles and finished runs to the Hugging Face Hub, and fetch them back.

The token comes from the usual Hugging Face environment (`HF_TOKEN`, `hf auth login`); ivx
never writes it anywhere. `HF_ENDPOINT` is read at call time, so a mirror or a local test
server works without re-importing anything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Protocol

from ivx.core.errors import UserError

SKIP_SUFFIXES = (".tmp",)
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
SKIP_DIRS = ("tensors.parts", "checkpoints", "__pycache__")


class HubError(UserError):
    """One clear, user-facing problem talking to the Hub."""


class HubPathError(HubError):
    """The path to push is neither a bundle nor a run directory: a user error (exit 2)."""


class HubClient(Protocol):
    """The part of `huggingface_hub.HfApi` ivx uses (a seam for tests and mirrors)."""

    def create_repo(self, repo_id: str, *, private: bool, exist_ok: bool) -> Any: ...
    def create_branch(self, repo_id: str, *, branch: str, exist_ok: bool) -> Any: ...
    def create_commit(
        self, repo_id: str, *, operations: list, commit_message: str, revision: str | None
    ) -> Any: ...


def endpoint() -> str:
    """The Hub endpoint in force now (HF_ENDPOINT or huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


CONNECT_TIMEOUT = 10.0  # seconds to open a connection
READ_TIMEOUT = 60.0  # seconds without a byte from the server; IVX_HUB_TIMEOUT overrides
_TIMEOUTS_SET: list[tuple[float, float]] = []


def timeouts() -> tuple[float, float]:
    """(connect, read) timeouts in seconds; `IVX_HUB_TIMEOUT` sets both (a server that never
    answers then fails with a clear error instead of hanging)."""
    text = os.environ.get("IVX_HUB_TIMEOUT")
    try:
        value = float(text) if text else None
    except ValueError:
        raise HubError(f"IVX_HUB_TIMEOUT={text!r} must be a number of seconds") from None
    if value is not None and value > 0:
        return min(CONNECT_TIMEOUT, value), value
    return CONNECT_TIMEOUT, READ_TIMEOUT


def use_timeouts() -> None:
    """Give huggingface_hub's shared HTTP client connect and read timeouts (its default has none)."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import hf_request_event_hook

    connect, read = timeouts()
    if _TIMEOUTS_SET == [(connect, read)]:
        return

    def factory() -> httpx2.Client:
        return httpx2.Client(
            event_hooks={"request": [hf_request_event_hook]},
            follow_redirects=True,
            timeout=httpx2.Timeout(read, connect=connect),
        )

    set_client_factory(factory)
    _TIMEOUTS_SET[:] = [(connect, read)]


def _client(token: str | None) -> HubClient:
    from huggingface_hub import HfApi

    use_timeouts()
    return HfApi(endpoint=endpoint(), token=token)


def files_of(path: Path) -> list[tuple[str, int]]:
    """(path in repo, bytes) of everything `ivx push` would upload from a bundle, run or SAE directory."""
    path = Path(path)
    if (path / "ivx_bundle.json").is_file():
        pass
    elif (path / "manifest.json").is_file():
        status = json.loads((path / "manifest.json").read_text()).get("status")
        if status != "complete":
            raise HubError(f"run {path} has status {status!r}; only complete runs can be pushed")
    elif (path / "cfg.json").is_file() and (path / "sae_weights.safetensors").is_file():
        pass  # an SAE directory in SAELens's layout (e.g. a bundled one)
    else:
        raise HubPathError(
            f"{path} is neither an ivx bundle (ivx_bundle.json), a run directory (manifest.json) nor an "
            "SAE directory (cfg.json + sae_weights.safetensors)"
        )
    out = []
    for file in sorted(path.rglob("*")):
        rel = file.relative_to(path)
        skipped = file.name.endswith(SKIP_SUFFIXES) or file.name == ".lock"
        if file.is_dir() or skipped or any(p in SKIP_DIRS for p in rel.parts):
            continue
        out.append((rel.as_posix(), file.stat().st_size))
    return out


def _explain(exc: Exception, repo: str) -> HubError:
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code == 401:
            return HubError(
                "the Hugging Face token was rejected (401): run `hf auth login` or set a valid HF_TOKEN"
            )
        if code == 403:
            return HubError(
                f"the token may not write to {repo} (403): check the repository name and token scope"
            )
        return HubError(f"the Hub answered {code} for {repo}: {str(exc).splitlines()[0]}")
    if isinstance(exc, httpx2.TimeoutException | TimeoutError):
        connect, read = timeouts()
        return HubError(
            f"the Hub at {endpoint()} did not answer in time (connect {connect:g} s, read {read:g} s; "
            "IVX_HUB_TIMEOUT sets them): check the network or HF_ENDPOINT"
        )
    if isinstance(exc, httpx2.TransportError | ConnectionError):
        return HubError(
            f"cannot reach the Hub at {endpoint()} ({type(exc).__name__}); check the network or HF_ENDPOINT"
        )
    return HubError(f"{type(exc).__name__}: {exc}")


def push(
    path: Path,
    repo: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    message: str | None = None,
    client: HubClient | None = None,
) -> str | list[tuple[str, int]]:
    """Upload a bundle or complete run in one commit; returns the URL (or, dry run, the file list)."""
    from huggingface_hub import CommitOperationAdd, get_token

    repo_id(repo)  # the same check as pull, before anything else (also for --dry-run)
    files = files_of(path)
    if dry_run:
        return files
    token = get_token()
    if client is None:
        if not token:
            raise HubError("no Hugging Face token found: run `hf auth login` or set HF_TOKEN")
        client = _client(token)
    operations = [
        CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(Path(path) / rel)) for rel, _ in files
    ]
    try:
        client.create_repo(repo, private=private, exist_ok=True)
        if revision:
            client.create_branch(repo, branch=revision, exist_ok=True)
        client.create_commit(
            repo,
            operations=operations,
            commit_message=message or f"ivx push {Path(path).name}",
            revision=revision,
        )
    except Exception as exc:  # noqa: BLE001 - every client failure becomes one message
        raise _explain(exc, repo) from None
    return f"{endpoint()}/{repo}" + (f"/tree/{revision}" if revision else "")


def repo_id(repo: str) -> str:
    """Check a Hub repository id (user/name; letters, digits, '.', '_', '-'); return it."""
    if not REPO_ID.match(repo) or ".." in repo or len(repo) > 96:
        raise HubError(
            f"{repo!r} is not a Hub repository id: expected user/name (letters, digits, '.', '_', '-')"
        )
    return repo


def parse_ref(ref: str) -> tuple[str, str | None]:
    """`hf://user/name@rev` or `user/name@rev` → (repo id, revision or None)."""
    text = ref.removeprefix("hf://")
    repo, _, revision = text.partition("@")
    return repo_id(repo), revision or None


def pull(ref: str, out: Path | None = None) -> Path:
    """Download a repository snapshot (through the HF cache); optionally copy it to `out`."""
    from huggingface_hub import snapshot_download

    repo, revision = parse_ref(ref)
    use_timeouts()
    try:
        local = Path(snapshot_download(repo, revision=revision, endpoint=endpoint()))
    except Exception as exc:  # noqa: BLE001
        cause = exc.__cause__ or exc.__context__
        raise _explain(cause if isinstance(cause, Exception) else exc, repo) from None
    if out is None:
        return local
    out = Path(out)
    shutil.copytree(local, out, dirs_exist_ok=True)
    return out


def explain(exc: Exception, repo: str) -> HubError:
    """One clear HubError for a failed Hub call on `repo` (the cause's status, timeout or network)."""
    cause = exc.__cause__ or exc.__context__
    return _explain(cause if isinstance(cause, Exception) else exc, repo)
