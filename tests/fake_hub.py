"""A minimal Hugging Face Hub over loopback HTTP, for offline tests of ``hf:`` sources.

Serves what ``datasets`` and ``huggingface_hub`` ask for when a dataset repo is loaded:
repo info, tree listings and file resolution (HEAD and GET, with ETag and commit headers).
A repo is a local directory; its files are the repo's files at one fixed commit.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "c0ffee" + "0" * 34


class FakeHub:
    def __init__(self, repos: dict[str, Path]) -> None:
        self.repos = repos
        self.downloads: Counter[str] = Counter()  # whole-file GETs (not ranges), by path
        self.requests: Counter[str] = Counter()  # every request, by path
        self.down_with: int | None = None  # answer every request with this HTTP status
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._answer(self, head=True)

            def do_GET(self) -> None:
                hub._answer(self, head=False)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        serving = {"poll_interval": 0.05}  # shut down at once, not in 0.5 s
        threading.Thread(target=self.server.serve_forever, kwargs=serving, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, h: http.server.BaseHTTPRequestHandler, head: bool) -> None:
        url = urlsplit(h.path)
        path = unquote(url.path)
        self.requests[path] += 1
        if self.down_with is not None:
            return self._send(h, self.down_with, b'{"error": "unavailable"}', head)
        for repo, root in self.repos.items():
            api = f"/api/datasets/{repo}"
            if path in (api, f"{api}/revision/main", f"{api}/revision/{COMMIT}"):
                files = sorted(p for p in root.rglob("*") if p.is_file())
                info = {
                    "id": repo,
                    "sha": COMMIT,
                    "siblings": [{"rfilename": str(p.relative_to(root))} for p in files],
                    "private": False,
                    "disabled": False,
                    "gated": False,
                    "tags": [],
                    "cardData": {},
                    "lastModified": "2026-01-01T00:00:00.000Z",
                }
                return self._send(h, 200, json.dumps(info).encode(), head)
            if path.startswith(f"{api}/tree/"):
                _, _, sub = path[len(f"{api}/tree/") :].partition("/")
                base = root / sub
                listed = sorted(
                    base.rglob("*") if "recursive=true" in url.query else base.iterdir()
                )
                entries = [
                    {"type": "directory", "path": str(p.relative_to(root)), "oid": "0" * 40}
                    if p.is_dir()
                    else {
                        "type": "file",
                        "path": str(p.relative_to(root)),
                        "size": p.stat().st_size,
                        "oid": hashlib.sha1(p.read_bytes()).hexdigest(),
                    }
                    for p in listed
                ]
                return self._send(h, 200, json.dumps(entries).encode(), head)
            resolve = f"/datasets/{repo}/resolve/"
            if path.startswith(resolve):
                _, _, relative = path[len(resolve) :].partition("/")
                file = root / relative
                if not file.is_file():
                    headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}
                    return self._send(h, 404, b'{"error": "Entry not found"}', head, headers)
                data = file.read_bytes()
                headers = {
                    "Content-Type": "application/octet-stream",
                    "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
                    "X-Repo-Commit": COMMIT,
                    "Accept-Ranges": "bytes",
                }
                wanted = h.headers.get("Range", "")
                if wanted.startswith("bytes="):  # streaming reads parquet footers by range
                    first, _, last = wanted[6:].partition("-")
                    start = int(first) if first else max(0, len(data) - int(last))
                    end = min(int(last), len(data) - 1) if first and last else len(data) - 1
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    return self._send(h, 206, data[start : end + 1], head, headers)
                if not head:
                    self.downloads[relative] += 1
                return self._send(h, 200, data, head, headers)
        return self._send(h, 404, b'{"error": "Repository not found"}', head)

    @staticmethod
    def _send(
        h: http.server.BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        head: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        h.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)
