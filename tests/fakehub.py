"""A tiny Hub-compatible HTTP server on 127.0.0.1 for push/pull tests (no network beyond loopback).

Implements just what huggingface_hub's client uses for: create_repo, create_branch, preupload
(always "regular" uploads), NDJSON commits of small files, revision info, tree listing, and
HEAD/GET of `/{repo}/resolve/{revision}/{path}`. Writes need `Authorization: Bearer <token>`;
the token "bad" is rejected with 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse


class Store:
    """Repos → branches → commit id; commits → {path: bytes}."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, str]] = {}
        self.commits: dict[str, dict[str, bytes]] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()

    def create(self, repo: str) -> bool:
        with self.lock:
            if repo in self.repos:
                return False
            sha = hashlib.sha1(f"init {repo}".encode()).hexdigest()
            self.commits[sha] = {}
            self.repos[repo] = {"main": sha}
            return True

    def resolve(self, repo: str, rev: str) -> str | None:
        branches = self.repos.get(repo)
        if branches is None:
            return None
        if rev in branches:
            return branches[rev]
        return rev if rev in self.commits else None


def handler(store: Store) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(
            self, code: int, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
        ) -> None:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
            self.send_response(code)
            self.send_header(
                "Content-Type", "application/json" if raw is None else "application/octet-stream"
            )
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _auth(self) -> bool:
            token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not token or token == "bad":
                self._send(
                    401,
                    {"error": "Invalid credentials in Authorization header"},
                    {"X-Error-Message": "Invalid credentials"},
                )
                return False
            return True

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))

        def do_POST(self) -> None:  # noqa: N802
            path = urlparse(self.path).path
            store.requests.append(f"POST {path}")
            body = self._body()
            if not self._auth():
                return
            if path == "/api/validate-yaml":  # model-card metadata check before a commit with README.md
                self._send(200, {"errors": [], "warnings": []})
                return
            if path == "/api/repos/create":
                data = json.loads(body)
                repo = f"{data.get('organization') or 'user'}/{data['name']}"
                created = store.create(repo)
                url = f"http://{self.headers['Host']}/{repo}"
                self._send(
                    200 if created else 409,
                    {"url": url, "name": repo} if created else {"error": "exists", "url": url},
                )
                return
            m = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit|branch)/(.+)$", path)
            if not m:
                self._send(404, {"error": f"no route {path}"})
                return
            repo, action, rev = m.group(1), m.group(2), unquote(m.group(3))
            if repo not in store.repos:
                self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return
            if action == "preupload":
                files = json.loads(body)["files"]
                self._send(
                    200,
                    {
                        "files": [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                        ]
                    },
                )
            elif action == "branch":
                with store.lock:
                    if rev not in store.repos[repo]:
                        store.repos[repo][rev] = store.repos[repo]["main"]
                self._send(200, {})
            else:
                parent = store.resolve(repo, rev)
                if parent is None:
                    self._send(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
                    return
                files = dict(store.commits[parent])
                summary = ""
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "header":
                        summary = item["value"].get("summary", "")
                    elif item["key"] == "file":
                        files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                sha = hashlib.sha1(
                    json.dumps([parent, summary, sorted(files)]).encode()
                    + b"".join(files[k] for k in sorted(files))
                ).hexdigest()
                with store.lock:
                    store.commits[sha] = files
                    store.repos[repo][rev if rev in store.repos[repo] else "main"] = sha
                base = f"http://{self.headers['Host']}"
                self._send(
                    200,
                    {"commitUrl": f"{base}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None},
                )

        def _get(self) -> None:
            parsed = urlparse(self.path)
            path = unquote(parsed.path)
            store.requests.append(f"{self.command} {path}")
            m = re.match(r"^/api/models/([^/]+/[^/]+)/revision/(.+)$", path)
            if m:
                repo, rev = m.group(1), m.group(2)
                sha = store.resolve(repo, rev)
                if sha is None:
                    self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                    return
                siblings = [{"rfilename": p} for p in sorted(store.commits[sha])]
                self._send(
                    200, {"id": repo, "modelId": repo, "sha": sha, "siblings": siblings, "private": False}
                )
                return
            m = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?$", path)
            if m:
                repo, rev = m.group(1), m.group(2)
                sha = store.resolve(repo, rev)
                if sha is None:
                    self._send(404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"})
                    return
                entries = [
                    {"type": "file", "path": p, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                    for p, data in sorted(store.commits[sha].items())
                ]
                self._send(200, entries)
                return
            m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if m:
                repo, rev, file = m.group(1), m.group(2), m.group(3)
                sha = store.resolve(repo, rev)
                if sha is None or file not in store.commits[sha]:
                    self._send(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                    return
                data = store.commits[sha][file]
                etag = f'"{hashlib.sha1(data).hexdigest()}"'
                self._send(200, raw=data, headers={"X-Repo-Commit": sha, "ETag": etag})
                return
            self._send(404, {"error": f"no route {path}"})

        do_GET = _get  # noqa: N815
        do_HEAD = _get  # noqa: N815

    return Handler


class FakeHub:
    """Context manager: start the server on a random loopback port; `.url`, `.store`."""

    def __enter__(self) -> FakeHub:
        self.store = Store()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler(self.store))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
