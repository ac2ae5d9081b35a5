"""A small Hugging Face Hub-compatible HTTP server for offline tests (127.0.0.1 only).

It implements just the routes huggingface_hub's real client uses to create a repo, upload files in
a commit and download them: ``POST /api/repos/create``, ``POST /api/validate-yaml``,
``POST /api/<kind>/<repo>/preupload/<rev>`` (every file is "regular", so contents travel inline in the
commit), ``POST /api/<kind>/<repo>/commit/<rev>`` (NDJSON), ``GET /api/<kind>/<repo>[/revision/<rev>]``
and ``HEAD``/``GET /<repo>/resolve/<rev>/<path>`` (``/datasets/<repo>/resolve/...`` for a dataset).
``<kind>`` is ``models`` or ``datasets``: model and dataset repos are separate namespaces
(``HubState.repos`` and ``HubState.datasets``), as on the Hub. ``datasets.load_dataset`` of a repo of
data files also lists them, through HfFileSystem: ``GET /api/<kind>/<repo>/tree/<rev>[/<path>]``
(``?recursive=``; one page, without the ``expand`` details). Files live in memory; every commit gets a
new sha.

Run it in a thread with :func:`serve` (a context manager yielding the endpoint URL), or as
``python -m tests.hub_server PORT`` for manual experiments.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


def git_blob_sha1(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


REPO_TYPES = {"models": "model", "datasets": "dataset"}  # URL segment -> huggingface_hub's repo_type


class HubState:
    def __init__(self):
        # repo_id -> {"sha": str, "files": {path: bytes}, "commits": [{"summary", "files", "sha", "snapshot"}]}
        self.repos: dict[str, dict] = {}  # model repos
        self.datasets: dict[str, dict] = {}  # dataset repos, the same layout
        # File downloads to fail on purpose: path in repo -> HTTP status (e.g. 500), or "hang" to never answer.
        self.failures: dict[str, int | str] = {}
        self.downloads: list[str] = []  # "repo/rev/path" of every GET of a file, for tests to inspect
        self.lock = threading.Lock()

    def store(self, repo_type: str = "model") -> dict[str, dict]:
        """The repos of ``repo_type`` ("model" or "dataset")."""
        return {"model": self.repos, "dataset": self.datasets}[repo_type]

    def snapshot(self, repo_id: str, revision: str, repo_type: str = "model") -> dict[str, bytes] | None:
        """The files of ``repo_id`` at ``revision`` ("main" or a commit sha), or None for an unknown revision."""
        repo = self.store(repo_type)[repo_id]
        if revision in ("main", repo["sha"]):
            return repo["files"]
        for commit in repo["commits"]:
            if commit["sha"] == revision:
                return commit["snapshot"]
        return None

    def create(self, repo_id: str, repo_type: str = "model") -> bool:
        with self.lock:
            repos = self.store(repo_type)
            if repo_id in repos:
                return False
            repos[repo_id] = {"sha": hashlib.sha1(repo_id.encode()).hexdigest(), "files": {}, "commits": []}
            return True

    def commit(
        self, repo_id: str, summary: str, files: dict[str, bytes], deleted: list[str], repo_type: str = "model"
    ) -> str:
        with self.lock:
            repo = self.store(repo_type)[repo_id]
            repo["files"].update(files)
            for path in deleted:
                repo["files"].pop(path, None)
            repo["sha"] = hashlib.sha1((repo["sha"] + summary + str(sorted(files))).encode()).hexdigest()
            repo["commits"].append(
                {"summary": summary, "files": sorted(files), "sha": repo["sha"], "snapshot": dict(repo["files"])}
            )
            return repo["sha"]


REPO = r"(?P<repo>[^/]+/[^/]+|[^/]+)"
KIND = r"(?P<kind>models|datasets)"  # the API's name of a repo type


def file_entry(path: str, content: bytes) -> dict:
    """A file as the tree route describes it (no LFS: every file here is "regular")."""
    return {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha1(content)}


def folder_entry(files: dict[str, bytes], path: str) -> dict:
    """A folder as the tree route describes it; its oid changes with what it holds."""
    inside = sorted((name, git_blob_sha1(content)) for name, content in files.items() if name.startswith(path + "/"))
    return {"type": "directory", "path": path, "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest()}


def tree_entries(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict] | None:
    """What is in ``folder`` ("" for the root): its files and folders, or everything below it when
    ``recursive``; folders first, as the Hub lists them. None when there is no such folder."""
    prefix = folder + "/" if folder else ""
    folders, found = {}, []
    for path in sorted(files):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for depth in range(1, len(parts) if recursive else min(2, len(parts))):
            name = prefix + "/".join(parts[:depth])
            folders.setdefault(name, folder_entry(files, name))
        if recursive or len(parts) == 1:
            found.append(file_entry(path, files[path]))
    if not found and not folders and folder:
        return None
    return list(folders.values()) + found


class Handler(BaseHTTPRequestHandler):
    state: HubState  # set on the subclass made by ``serve``
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    # -- helpers ---------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self, status: int, payload=None, headers: dict | None = None, head: bool = False, raw: bytes | None = None
    ):
        body = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _not_found(self, code: str, message: str, head: bool = False):
        self._send(404, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message}, head=head)

    def _repo(self, match: re.Match) -> tuple[str, dict | None]:
        """(repo_type, the repo or None) of a route's ``kind`` (absent for models) and ``repo`` groups."""
        repo_type = REPO_TYPES[match["kind"] or "models"]
        return repo_type, self.state.store(repo_type).get(match["repo"])

    def _files(self, match: re.Match, head: bool = False) -> tuple[dict | None, dict[str, bytes] | None]:
        """(repo, its files at the route's ``rev``), or (None, None) once a 404 has been sent."""
        repo_type, repo = self._repo(match)
        if repo is None:
            self._not_found("RepoNotFound", "Repository not found", head)
            return None, None
        files = self.state.snapshot(match["repo"], match["rev"], repo_type)
        if files is None:
            self._not_found("RevisionNotFound", f"Invalid rev id: {match['rev']}", head)
            return None, None
        return repo, files

    # -- routes ----------------------------------------------------------------------------------
    def do_POST(self):
        path = unquote(urlparse(self.path).path)
        body = self._body()
        if path == "/api/repos/create":
            data = json.loads(body)
            repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
            repo_type = data.get("type") or "model"
            created = self.state.create(repo_id, repo_type)
            url = f"http://{self.headers['Host']}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"
            return self._send(
                200 if created else 409, {"url": url, "name": repo_id, "error": None if created else "exists"}
            )
        if path == "/api/validate-yaml":
            return self._send(200, {})
        m = re.fullmatch(rf"/api/{KIND}/{REPO}/preupload/(?P<rev>[^/]+)", path)
        if m:
            _, repo = self._repo(m)
            if repo is None:
                return self._not_found("RepoNotFound", "Repository not found")
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(repo["files"][f["path"]]) if f["path"] in repo["files"] else None,
                }
                for f in json.loads(body)["files"]
            ]
            return self._send(200, {"files": files, "commitOid": repo["sha"]})
        m = re.fullmatch(rf"/api/{KIND}/{REPO}/commit/(?P<rev>[^/]+)", path)
        if m:
            repo_type, repo = self._repo(m)
            if repo is None:
                return self._not_found("RepoNotFound", "Repository not found")
            summary, files, deleted = "", {}, []
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if item["key"] == "header":
                    summary = item["value"].get("summary", "")
                elif item["key"] == "file":
                    files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                elif item["key"] == "deletedFile":
                    deleted.append(item["value"]["path"])
                else:
                    return self._send(400, {"error": f"unsupported commit operation {item['key']}"})
            sha = self.state.commit(m["repo"], summary, files, deleted, repo_type)
            url = f"http://{self.headers['Host']}/{'datasets/' if repo_type == 'dataset' else ''}{m['repo']}"
            return self._send(200, {"commitUrl": f"{url}/commit/{sha}", "commitOid": sha})
        return self._send(404, {"error": f"no route for POST {path}"})

    def _get(self, head: bool):
        url = urlparse(self.path)
        path = unquote(url.path)
        m = re.fullmatch(rf"/api/{KIND}/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", path)
        if m:
            repo, files = self._files(m, head)
            if repo is None:
                return None
            recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() in ("1", "true")
            entries = tree_entries(files, (m["path"] or "").strip("/"), recursive)
            if entries is None:
                return self._not_found("EntryNotFound", f"{m['path']} does not exist", head)
            return self._send(200, entries, head=head)
        m = re.fullmatch(rf"/api/{KIND}/{REPO}(?:/revision/(?P<rev>[^/]+))?", path)
        if m:
            repo_type, repo = self._repo(m)
            if repo is None:
                return self._not_found("RepoNotFound", "Repository not found", head)
            info = {
                "id": m["repo"],
                "sha": repo["sha"],
                "private": False,
                "siblings": [{"rfilename": name} for name in sorted(repo["files"])],
            }
            if repo_type == "model":
                info["modelId"] = m["repo"]
            return self._send(200, info, head=head)
        m = re.fullmatch(rf"/(?:(?P<kind>datasets)/)?{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path)
        if m:
            repo, files = self._files(m, head)
            if repo is None:
                return None
            failure = self.state.failures.get(m["file"])
            if failure == "hang":
                time.sleep(3600)  # the client's timeout ends the request
                return None
            if failure is not None:
                return self._send(int(failure), {"error": "Internal Error"}, head=head)
            content = files.get(m["file"])
            if content is None:
                return self._not_found("EntryNotFound", f"{m['file']} does not exist", head)
            sha = repo["sha"] if files is repo["files"] else m["rev"]
            if not head:
                self.state.downloads.append(f"{'datasets/' if m['kind'] else ''}{m['repo']}/{m['rev']}/{m['file']}")
            headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_sha1(content)}"'}
            return self._send(200, headers=headers, head=head, raw=content)
        return self._send(404, {"error": f"no route for GET {path}"}, head=head)

    def do_GET(self):
        self._get(head=False)

    def do_HEAD(self):
        self._get(head=True)


@contextlib.contextmanager
def serve(state: HubState | None = None):
    """Serve a Hub on 127.0.0.1 (a free port) in a background thread; yields ``(endpoint, state)``."""
    state = state or HubState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # a request held open on purpose ("hang") does not block shutdown
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


if __name__ == "__main__":
    import sys
    import time

    with serve() as (endpoint, _):
        print(endpoint, flush=True)
        time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 3600)
