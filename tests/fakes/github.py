"""A stand-in GitHub: the REST subset the forge uses (Starlette, in-memory) and git's smart HTTP (http-backend).

`FakeGitHub.app` answers with GitHub's JSON shapes and status codes and checks the `Authorization` header
of every request (401 "Bad credentials" without it). Tests script failures with `fail()` and delays with
`delay()`. `GitHttpServer` is a real HTTP server on 127.0.0.1 running `git http-backend` as a CGI behind a
check of the header git must send, so pushes travel over a real git transport.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import itertools
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DOCS = "https://docs.github.com/rest"
NOW = "2026-01-01T00:00:00Z"


@dataclass
class Recorded:
    method: str
    path: str
    authorization: str | None
    authorized: bool


@dataclass
class Scripted:
    method: str
    path: str
    status: int = 500
    body: dict[str, Any] = field(default_factory=lambda: {"message": "Server Error"})
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1
    delay: float = 0.0


class FakeGitHub:
    """One repository's worth of GitHub: pull requests, comments and merges, in memory."""

    def __init__(
        self,
        token: str,
        repository: str = "octo/bot",
        *,
        default_branch: str = "main",
        git_dir: Path | None = None,
    ) -> None:
        self.token = token
        self.repository = repository
        self.owner = repository.split("/")[0]
        self.default_branch = default_branch
        self.git_dir = git_dir
        self.branches: dict[str, str] = {}
        self.pulls: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.merges: list[int] = []
        self.requests: list[Recorded] = []
        self.scripted: list[Scripted] = []
        self._ids = itertools.count(1001)
        base = "/repos/{owner}/{repo}"
        self.app = Starlette(
            routes=[
                Route(base, self._repo, methods=["GET"]),
                Route(base + "/pulls", self._pulls, methods=["GET", "POST"]),
                Route(base + "/pulls/{number:int}", self._pull, methods=["GET", "PATCH"]),
                Route(base + "/pulls/{number:int}/merge", self._merge, methods=["PUT"]),
                Route(base + "/issues/{number:int}/comments", self._comments, methods=["GET", "POST"]),
            ],
        )
        self.app.add_middleware(_Gate, fake=self)

    # -- scripting ---------------------------------------------------------------------------------

    def fail(
        self,
        method: str,
        path: str,
        status: int,
        body: dict[str, Any] | None = None,
        *,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next `times` requests to `method path` (path after /repos/o/r) with this response."""
        self.scripted.append(
            Scripted(
                method,
                path,
                status,
                body or {"message": "Error", "documentation_url": DOCS},
                headers or {},
                times,
            )
        )

    def delay(self, method: str, path: str, seconds: float, *, times: int = 1) -> None:
        """Hold the next `times` requests to `method path` for `seconds` before answering them."""
        self.scripted.append(Scripted(method, path, 0, {}, {}, times, seconds))

    def set_mergeable(self, number: int, mergeable: bool | None) -> None:
        pr = self.pulls[number]
        pr["mergeable"] = mergeable
        pr["mergeable_state"] = {True: "clean", False: "dirty", None: "unknown"}[mergeable]

    def head_of(self, branch: str) -> str | None:
        if self.git_dir is not None:
            out = subprocess.run(
                [
                    "git",
                    "--git-dir",
                    str(self.git_dir),
                    "rev-parse",
                    "--verify",
                    "-q",
                    f"refs/heads/{branch}",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            return out.stdout.strip() or None
        return self.branches.get(branch)

    # -- shapes ------------------------------------------------------------------------------------

    def _url(self, suffix: str) -> str:
        return f"https://api.github.com/repos/{self.repository}{suffix}"

    def _html(self, suffix: str) -> str:
        return f"https://github.com/{self.repository}{suffix}"

    def _user(self, login: str = "agent-runner[bot]") -> dict[str, Any]:
        return {"login": login, "id": 41898282, "type": "Bot"}

    def _view(self, pr: dict[str, Any], *, full: bool) -> dict[str, Any]:
        view = dict(pr)
        head_sha = self.head_of(pr["head"]["ref"]) or pr["head"]["sha"]
        if pr["state"] == "open":
            view["head"] = {**pr["head"], "sha": head_sha}
        if not full:  # list items carry no merge fields, as on GitHub
            for key in ("merged", "mergeable", "mergeable_state", "merged_by", "comments", "commits"):
                view.pop(key, None)
        return view

    # -- routes ------------------------------------------------------------------------------------

    def _check_repo(self, request: Request) -> JSONResponse | None:
        if f"{request.path_params['owner']}/{request.path_params['repo']}" != self.repository:
            return _error(404, "Not Found")
        return None

    async def _repo(self, request: Request) -> Response:
        if (missing := self._check_repo(request)) is not None:
            return missing
        name = self.repository.split("/")[1]
        return JSONResponse(
            {
                "id": 1296269,
                "name": name,
                "full_name": self.repository,
                "owner": {"login": self.owner, "type": "Organization"},
                "private": True,
                "html_url": self._html(""),
                "default_branch": self.default_branch,
                "permissions": {"admin": False, "push": True, "pull": True},
            }
        )

    async def _pulls(self, request: Request) -> Response:
        if (missing := self._check_repo(request)) is not None:
            return missing
        if request.method == "GET":
            state = request.query_params.get("state", "open")
            head = request.query_params.get("head")
            items = [p for n, p in sorted(self.pulls.items(), reverse=True) if state in ("all", p["state"])]
            if head is not None:
                items = [p for p in items if p["head"]["label"] == head]
            per_page = int(request.query_params.get("per_page", "30"))
            page = int(request.query_params.get("page", "1"))
            chunk = items[(page - 1) * per_page : page * per_page]
            return JSONResponse([self._view(p, full=False) for p in chunk])
        data = await request.json()
        for key in ("title", "head", "base"):
            if not isinstance(data.get(key), str) or not data[key]:
                return _error(
                    422,
                    "Validation Failed",
                    [{"resource": "PullRequest", "field": key, "code": "missing_field"}],
                )
        head, base = data["head"], data["base"]
        head_sha = self.head_of(head)
        if head_sha is None:
            return _error(422, "Validation Failed", [{"resource": "PullRequest", "field": "head", "code": "invalid"}])
        if base != self.default_branch and self.head_of(base) is None:
            return _error(422, "Validation Failed", [{"resource": "PullRequest", "field": "base", "code": "invalid"}])
        for pr in self.pulls.values():
            if pr["state"] == "open" and pr["head"]["ref"] == head:
                message = f"A pull request already exists for {self.owner}:{head}."
                return _error(
                    422,
                    "Validation Failed",
                    [{"resource": "PullRequest", "code": "custom", "message": message}],
                )
        number = len(self.pulls) + 1
        repo = {"full_name": self.repository, "name": self.repository.split("/")[1]}
        self.pulls[number] = {
            "url": self._url(f"/pulls/{number}"),
            "id": next(self._ids),
            "html_url": self._html(f"/pull/{number}"),
            "number": number,
            "state": "open",
            "locked": False,
            "title": data["title"],
            "user": self._user(),
            "body": data.get("body"),
            "created_at": NOW,
            "updated_at": NOW,
            "closed_at": None,
            "merged_at": None,
            "merge_commit_sha": hashlib.sha1(f"test-merge-{number}".encode()).hexdigest(),
            "head": {"label": f"{self.owner}:{head}", "ref": head, "sha": head_sha, "repo": repo},
            "base": {
                "label": f"{self.owner}:{base}",
                "ref": base,
                "sha": self.head_of(base) or "0" * 40,
                "repo": repo,
            },
            "draft": False,
            "merged": False,
            "mergeable": True,
            "mergeable_state": "clean",
            "merged_by": None,
            "comments": 0,
            "commits": 1,
        }
        return JSONResponse(self._view(self.pulls[number], full=True), status_code=201)

    async def _pull(self, request: Request) -> Response:
        if (missing := self._check_repo(request)) is not None:
            return missing
        pr = self.pulls.get(request.path_params["number"])
        if pr is None:
            return _error(404, "Not Found")
        if request.method == "PATCH":
            data = await request.json()
            if data.get("state") == "closed" and pr["state"] == "open":
                pr["head"]["sha"] = self.head_of(pr["head"]["ref"]) or pr["head"]["sha"]
                pr.update(state="closed", closed_at=NOW, updated_at=NOW)
            if "title" in data:
                pr["title"] = data["title"]
            if "body" in data:
                pr["body"] = data["body"]
        return JSONResponse(self._view(pr, full=True))

    async def _merge(self, request: Request) -> Response:
        if (missing := self._check_repo(request)) is not None:
            return missing
        number = request.path_params["number"]
        pr = self.pulls.get(number)
        if pr is None:
            return _error(404, "Not Found")
        data = await request.json()
        method = data.get("merge_method", "merge")
        if method not in ("merge", "squash", "rebase"):
            return _error(
                422,
                "Validation Failed",
                [{"resource": "PullRequest", "field": "merge_method", "code": "invalid"}],
            )
        head_sha = self.head_of(pr["head"]["ref"]) or pr["head"]["sha"]
        if pr["state"] != "open" or pr["mergeable"] is False:
            return _error(405, "Pull Request is not mergeable")
        if data.get("sha") is not None and data["sha"] != head_sha:
            return _error(409, "Head branch was modified. Review and try the merge again.")
        if self.git_dir is not None:  # land it for real, as GitHub does: the merge commit is on the base branch
            landed = self._land(pr["base"]["ref"], head_sha, f"{pr['title']} (#{number})", method)
            if landed is None:
                return _error(405, "Pull Request is not mergeable")
            merge_sha = landed
        else:
            merge_sha = hashlib.sha1(f"{method}-{number}-{head_sha}".encode()).hexdigest()
        pr["head"]["sha"] = head_sha
        pr.update(
            state="closed",
            merged=True,
            merged_at=NOW,
            closed_at=NOW,
            merge_commit_sha=merge_sha,
            merged_by=self._user(),
        )
        self.merges.append(number)
        return JSONResponse({"sha": merge_sha, "merged": True, "message": "Pull Request successfully merged"})

    def _land(self, base: str, head_sha: str, title: str, method: str) -> str | None:
        """Merge `head_sha` into `base` in the bare repository (one parent for squash and rebase, two for a
        merge commit); None when it does not merge cleanly."""
        assert self.git_dir is not None

        def git(*args: str) -> subprocess.CompletedProcess[str]:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
                   "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "GitHub",
                   "GIT_AUTHOR_EMAIL": "noreply@github.com", "GIT_COMMITTER_NAME": "GitHub",
                   "GIT_COMMITTER_EMAIL": "noreply@github.com"}
            return subprocess.run(["git", "--git-dir", str(self.git_dir), *args], env=env, capture_output=True,
                                  text=True, check=False)

        base_sha = self.head_of(base)
        assert base_sha is not None
        tree = git("merge-tree", "--write-tree", base_sha, head_sha)
        if tree.returncode != 0:
            return None
        parents = ["-p", base_sha] + (["-p", head_sha] if method == "merge" else [])
        commit = git("commit-tree", tree.stdout.split()[0], *parents, "-m", title).stdout.strip()
        if git("update-ref", f"refs/heads/{base}", commit, base_sha).returncode != 0:
            return None
        return commit

    async def _comments(self, request: Request) -> Response:
        if (missing := self._check_repo(request)) is not None:
            return missing
        number = request.path_params["number"]
        if number not in self.pulls:
            return _error(404, "Not Found")
        thread = self.comments.setdefault(number, [])
        if request.method == "GET":
            per_page = int(request.query_params.get("per_page", "30"))
            page = int(request.query_params.get("page", "1"))
            return JSONResponse(thread[(page - 1) * per_page : page * per_page])
        data = await request.json()
        if not isinstance(data.get("body"), str):
            return _error(
                422,
                "Validation Failed",
                [{"resource": "IssueComment", "field": "body", "code": "missing_field"}],
            )
        comment_id = next(self._ids)
        comment = {
            "id": comment_id,
            "node_id": f"IC_{comment_id}",
            "url": self._url(f"/issues/comments/{comment_id}"),
            "html_url": self._html(f"/pull/{number}#issuecomment-{comment_id}"),
            "issue_url": self._url(f"/issues/{number}"),
            "body": data["body"],
            "user": self._user(),
            "created_at": NOW,
            "updated_at": NOW,
            "author_association": "NONE",
        }
        thread.append(comment)
        self.pulls[number]["comments"] += 1
        return JSONResponse(comment, status_code=201)


class _Gate:
    """ASGI middleware: records every request, enforces the bearer token, plays scripted answers."""

    def __init__(self, app: Any, fake: FakeGitHub) -> None:
        self.app = app
        self.fake = fake

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        auth = request.headers.get("authorization")
        authorized = auth == f"Bearer {self.fake.token}"
        self.fake.requests.append(Recorded(request.method, request.url.path, auth, authorized))
        if not authorized:
            await _error(401, "Bad credentials")(scope, receive, send)
            return
        prefix = f"/repos/{self.fake.repository}"
        path = request.url.path.removeprefix(prefix)
        for script in self.fake.scripted:
            if script.times > 0 and script.method == request.method and script.path == path:
                script.times -= 1
                if script.delay:
                    import asyncio

                    await asyncio.sleep(script.delay)
                    break
                await JSONResponse(script.body, status_code=script.status, headers=script.headers)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error(status: int, message: str, errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"message": message, "documentation_url": DOCS}
    if errors is not None:
        body["errors"] = errors
        body["status"] = str(status)
    return JSONResponse(body, status_code=status)


# -- git smart HTTP ----------------------------------------------------------------------------------


class GitHttpServer:
    """`git http-backend` behind a real HTTP server on 127.0.0.1 that demands `Authorization`.

    Serves every bare repository under `root` at `http://127.0.0.1:<port>/<name>.git`. The expected header
    is GitHub's for git over HTTPS: `Basic base64("x-access-token:<token>")`.
    """

    def __init__(self, root: Path, token: str) -> None:
        self.root = root
        self.expected = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
        self.requests: list[Recorded] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server._handle(self)

            def do_POST(self) -> None:
                server._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads .requests
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    @contextmanager
    def running(self) -> Iterator[GitHttpServer]:
        self._thread.start()
        try:
            yield self
        finally:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join()

    def _handle(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        auth = handler.headers.get("Authorization")
        path, _, query = handler.path.partition("?")
        authorized = auth == self.expected
        self.requests.append(Recorded(handler.command, path, auth, authorized))
        if not authorized:
            handler.send_response(401)
            handler.send_header("WWW-Authenticate", 'Basic realm="GitHub"')
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        body = _read_body(handler)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": handler.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": handler.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "x-access-token",
            "REMOTE_ADDR": "127.0.0.1",
        }
        if encoding := handler.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = encoding
        if protocol := handler.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = protocol
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, check=False).stdout
        head, sep, payload = out.partition(b"\r\n\r\n")
        if not sep:
            head, _, payload = out.partition(b"\n\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        handler.send_response(status)
        for name, value in headers:
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)


def _read_body(handler: http.server.BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                handler.rfile.readline()
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length", "0") or 0))
