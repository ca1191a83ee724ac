"""A stand-in GitHub: the REST subset the forge uses (Starlette, in-memory) and git's smart HTTP (http-backend).

The REST side holds the bot's repository and its forks: pull requests from a fork (`head: "owner:branch"`),
`POST /repos/{o}/{r}/forks` (asynchronous, as GitHub's: the new fork's refs answer 404 for a while), refs,
contents and `GET /actions/workflows`, read from the repositories' bare git directories.

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


@dataclass
class FakeRepo:
    """One repository on the fake: the bot's, or a fork of it (`parent`), its branches in `git_dir` if given."""

    full_name: str
    default_branch: str = "main"
    git_dir: Path | None = None
    parent: str | None = None
    ready_polls: int = 0
    """A new fork's git refs answer 404 this many times, as GitHub's do while it is still forking."""
    push: bool = True
    branches: dict[str, str] = field(default_factory=dict)

    @property
    def owner(self) -> str:
        return self.full_name.split("/")[0]

    @property
    def name(self) -> str:
        return self.full_name.split("/")[1]


def _git(git_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "GitHub",
           "GIT_AUTHOR_EMAIL": "noreply@github.com", "GIT_COMMITTER_NAME": "GitHub",
           "GIT_COMMITTER_EMAIL": "noreply@github.com"}
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], env=env, capture_output=True, text=True,
                          check=False)


class FakeGitHub:
    """The bot's repository and its forks on GitHub: pull requests (from a fork too), comments, merges, forks,
    refs, contents and the Actions workflow list, in memory and in the repositories' bare git directories.

    Pull requests from a fork work as on GitHub: `head` is `forkowner:branch` (with `head_repo` for a fork in
    the same organization), `head.repo` is the fork, the head commit is fetched into the repository's
    `refs/pull/N/head`, and a merge lands that commit on the repository's base branch.
    """

    def __init__(
        self,
        token: str,
        repository: str = "octo/bot",
        *,
        default_branch: str = "main",
        git_dir: Path | None = None,
        login: str = "agent-runner-bot",
        fork_root: Path | None = None,
        fork_delay: int = 2,
    ) -> None:
        self.token = token
        self.repository = repository
        self.owner = repository.split("/")[0]
        self.default_branch = default_branch
        self.git_dir = git_dir
        self.login = login
        self.fork_root = fork_root
        """Where POST /forks puts a new fork's bare repository (<name>.git), e.g. the GitHttpServer's root."""
        self.fork_delay = fork_delay
        self.repos: dict[str, FakeRepo] = {repository.lower(): FakeRepo(repository, default_branch, git_dir)}
        self.branches = self.repos[repository.lower()].branches
        self.pulls: dict[int, dict[str, Any]] = {}
        self.pull_requests_sent: list[dict[str, Any]] = []
        self.comments: dict[int, list[dict[str, Any]]] = {}
        self.reviews: dict[int, list[dict[str, Any]]] = {}
        self.review_comments: dict[int, list[dict[str, Any]]] = {}
        self.reviews_sent: list[dict[str, Any]] = []
        self.merges: list[int] = []
        self.forks_created: list[dict[str, Any]] = []
        self.workflow_states: dict[str, str] = {}
        self.requests: list[Recorded] = []
        self.scripted: list[Scripted] = []
        self._ids = itertools.count(1001)
        base = "/repos/{owner}/{repo}"
        self.app = Starlette(
            routes=[
                Route("/user", self._user_route, methods=["GET"]),
                Route(base, self._repo, methods=["GET"]),
                Route(base + "/forks", self._forks, methods=["POST"]),
                Route(base + "/git/ref/{ref:path}", self._get_ref, methods=["GET"]),
                Route(base + "/git/refs/{ref:path}", self._delete_ref, methods=["DELETE"]),
                Route(base + "/contents/{path:path}", self._contents, methods=["GET"]),
                Route(base + "/actions/workflows", self._workflows, methods=["GET"]),
                Route(base + "/pulls", self._pulls, methods=["GET", "POST"]),
                Route(base + "/pulls/{number:int}", self._pull, methods=["GET", "PATCH"]),
                Route(base + "/pulls/{number:int}/merge", self._merge, methods=["PUT"]),
                Route(base + "/issues/{number:int}/comments", self._comments, methods=["GET", "POST"]),
                Route(base + "/pulls/{number:int}/reviews", self._reviews, methods=["GET", "POST"]),
                Route(base + "/pulls/{number:int}/comments", self._review_comments, methods=["GET"]),
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
        """Answer the next `times` requests to `method path` (path after /repos/o/r of the bot's repository, or
        a whole path for any other) with this response."""
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

    def add_fork(self, full_name: str, git_dir: Path | None = None, *, parent: str | None = None,
                 ready_polls: int = 0, push: bool = True) -> FakeRepo:
        """A repository that already exists: by default a fork of the bot's (`parent=""` for one that is not)."""
        repo = FakeRepo(full_name, self.default_branch, git_dir, self.repository if parent is None else parent or None,
                        ready_polls, push)
        self.repos[full_name.lower()] = repo
        return repo

    def set_mergeable(self, number: int, mergeable: bool | None) -> None:
        pr = self.pulls[number]
        pr["mergeable"] = mergeable
        pr["mergeable_state"] = {True: "clean", False: "dirty", None: "unknown"}[mergeable]

    def head_of(self, branch: str, repository: str | None = None) -> str | None:
        """The tip of `branch` in the bot's repository, or in `repository` (a fork)."""
        repo = self.repos[(repository or self.repository).lower()]
        if repo.git_dir is not None:
            out = _git(repo.git_dir, "rev-parse", "--verify", "-q", f"refs/heads/{branch}^{{commit}}")
            return out.stdout.strip() or None
        return repo.branches.get(branch)

    # -- shapes ------------------------------------------------------------------------------------

    def _url(self, suffix: str, repository: str | None = None) -> str:
        return f"https://api.github.com/repos/{repository or self.repository}{suffix}"

    def _html(self, suffix: str, repository: str | None = None) -> str:
        return f"https://github.com/{repository or self.repository}{suffix}"

    def _user(self, login: str = "agent-runner[bot]") -> dict[str, Any]:
        return {"login": login, "id": 41898282, "type": "Bot"}

    def _repo_view(self, repo: FakeRepo) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": 1296269 + list(self.repos).index(repo.full_name.lower()),
            "name": repo.name,
            "full_name": repo.full_name,
            "owner": {"login": repo.owner, "type": "Organization" if repo.owner == self.owner else "User"},
            "private": True,
            "html_url": self._html("", repo.full_name),
            "default_branch": repo.default_branch,
            "fork": repo.parent is not None,
            "permissions": {"admin": repo.parent is not None, "push": repo.push, "pull": True},
        }
        if repo.parent is not None:
            parent = self.repos.get(repo.parent.lower())
            short = {"full_name": repo.parent, "name": repo.parent.split("/")[1],
                     "default_branch": parent.default_branch if parent else "main"}
            view.update(parent=short, source=short)
        return view

    def _head_repo(self, pr: dict[str, Any]) -> FakeRepo:
        return self.repos[str(pr["head"]["repo"]["full_name"]).lower()]

    def _live_head(self, pr: dict[str, Any]) -> str:
        head = self.head_of(pr["head"]["ref"], self._head_repo(pr).full_name) or pr["head"]["sha"]
        if pr["state"] == "open":
            self._sync_pull_ref(pr)
        return head

    def _sync_pull_ref(self, pr: dict[str, Any]) -> None:
        """GitHub keeps every pull request's head in the base repository as refs/pull/N/head."""
        repo, upstream = self._head_repo(pr), self.repos[self.repository.lower()]
        if upstream.git_dir is None or repo.git_dir is None or repo is upstream:
            return
        _git(upstream.git_dir, "fetch", "--quiet", "--no-tags", str(repo.git_dir),
             f"+refs/heads/{pr['head']['ref']}:refs/pull/{pr['number']}/head")

    def _view(self, pr: dict[str, Any], *, full: bool) -> dict[str, Any]:
        view = dict(pr)
        if pr["state"] == "open":
            view["head"] = {**pr["head"], "sha": self._live_head(pr)}
        if not full:  # list items carry no merge fields, as on GitHub
            for key in ("merged", "mergeable", "mergeable_state", "merged_by", "comments", "commits"):
                view.pop(key, None)
        return view

    # -- routes ------------------------------------------------------------------------------------

    def _find(self, request: Request) -> FakeRepo | None:
        return self.repos.get(f"{request.path_params['owner']}/{request.path_params['repo']}".lower())

    def _check_repo(self, request: Request) -> JSONResponse | None:
        """Routes only the bot's repository answers here (its pulls, merges, comments, forks)."""
        if f"{request.path_params['owner']}/{request.path_params['repo']}".lower() != self.repository.lower():
            return _error(404, "Not Found")
        return None

    def _requested_pull(self, request: Request) -> dict[str, Any] | Response:
        """The pull request of the bot's repository that the path names, or GitHub's 404."""
        if (missing := self._check_repo(request)) is not None:
            return missing
        pr = self.pulls.get(request.path_params["number"])
        return _error(404, "Not Found") if pr is None else pr

    async def _user_route(self, request: Request) -> Response:
        return JSONResponse({"login": self.login, "id": 7, "type": "User"})

    async def _repo(self, request: Request) -> Response:
        repo = self._find(request)
        if repo is None:
            return _error(404, "Not Found")
        return JSONResponse(self._repo_view(repo))

    async def _forks(self, request: Request) -> Response:
        if (missing := self._check_repo(request)) is not None:
            return missing
        data = await request.json() if await request.body() else {}
        owner = data.get("organization") or self.login
        for repo in self.repos.values():  # one fork per account: GitHub answers with the one there is
            if repo.parent == self.repository and repo.owner.lower() == owner.lower():
                return JSONResponse(self._repo_view(repo), status_code=202)
        name = data.get("name") or self.repository.split("/")[1]
        self.forks_created.append(dict(data))
        git_dir = None
        upstream = self.repos[self.repository.lower()]
        if self.fork_root is not None and upstream.git_dir is not None:
            git_dir = self.fork_root / f"{name}.git"
            only = ["--single-branch", "--branch", self.default_branch] if data.get("default_branch_only") else []
            subprocess.run(["git", "clone", "--quiet", "--bare", *only, str(upstream.git_dir), str(git_dir)],
                           capture_output=True, check=True)
        repo = self.add_fork(f"{owner}/{name}", git_dir, ready_polls=self.fork_delay)
        return JSONResponse(self._repo_view(repo), status_code=202)

    async def _get_ref(self, request: Request) -> Response:
        repo = self._find(request)
        ref = request.path_params["ref"]
        if repo is None or not ref.startswith("heads/"):
            return _error(404, "Not Found")
        if repo.ready_polls > 0:
            repo.ready_polls -= 1
            return _error(404, "Not Found")
        sha = self.head_of(ref.removeprefix("heads/"), repo.full_name)
        if sha is None:
            return _error(404, "Not Found")
        return JSONResponse({"ref": f"refs/{ref}", "url": self._url(f"/git/refs/{ref}", repo.full_name),
                             "object": {"sha": sha, "type": "commit"}})

    async def _delete_ref(self, request: Request) -> Response:
        repo = self._find(request)
        ref = request.path_params["ref"]
        if repo is None:
            return _error(404, "Not Found")
        branch = ref.removeprefix("heads/")
        if not ref.startswith("heads/") or self.head_of(branch, repo.full_name) is None:
            return _error(422, "Reference does not exist")
        if repo.git_dir is not None:
            _git(repo.git_dir, "update-ref", "-d", f"refs/heads/{branch}")
        repo.branches.pop(branch, None)
        return Response(status_code=204)

    async def _contents(self, request: Request) -> Response:
        repo = self._find(request)
        if repo is None or repo.git_dir is None:
            return _error(404, "Not Found")
        path = request.path_params["path"].strip("/")
        ref = request.query_params.get("ref") or repo.default_branch
        kind = _git(repo.git_dir, "cat-file", "-t", f"{ref}:{path}").stdout.strip()
        if kind == "tree":
            listing = _git(repo.git_dir, "ls-tree", "-z", f"{ref}:{path}").stdout
            entries = []
            for item in filter(None, listing.split("\0")):
                meta, name = item.split("\t", 1)
                _mode, type_, sha = meta.split()
                entries.append({"type": "dir" if type_ == "tree" else "file", "name": name,
                                "path": f"{path}/{name}", "sha": sha})
            return JSONResponse(entries)
        if kind != "blob":
            return _error(404, "Not Found")
        content = subprocess.run(["git", "--git-dir", str(repo.git_dir), "cat-file", "blob", f"{ref}:{path}"],
                                 capture_output=True, check=True).stdout
        encoded = base64.encodebytes(content).decode()  # GitHub wraps its base64 in lines too
        return JSONResponse({"type": "file", "encoding": "base64", "size": len(content), "name": path.split("/")[-1],
                             "path": path, "content": encoded,
                             "sha": _git(repo.git_dir, "rev-parse", f"{ref}:{path}").stdout.strip()})

    async def _workflows(self, request: Request) -> Response:
        repo = self._find(request)
        if repo is None:
            return _error(404, "Not Found")
        items = []
        if repo.git_dir is not None:
            listing = _git(repo.git_dir, "ls-tree", "-z", "--name-only", f"{repo.default_branch}:.github/workflows")
            for i, name in enumerate(sorted(filter(None, listing.stdout.split("\0")))):
                if name.endswith((".yml", ".yaml")):
                    path = f".github/workflows/{name}"
                    items.append({"id": 161335 + i, "node_id": f"MDg6V29ya2Zsb3cx{i}", "name": name, "path": path,
                                  "state": self.workflow_states.get(path, "active"), "created_at": NOW,
                                  "updated_at": NOW})
        return JSONResponse({"total_count": len(items), "workflows": _page(request, items)})

    def _head_of_request(self, head: str, head_repo: Any) -> tuple[FakeRepo, str] | None:
        """Which repository and branch a pull request's `head` names: `branch`, or `owner:branch` for a fork."""
        owner, _, branch = head.rpartition(":")
        owner = owner or self.owner
        if isinstance(head_repo, str) and head_repo:
            repo = self.repos.get(head_repo.lower())
            if repo is None or repo.owner.lower() != owner.lower():
                return None
        elif owner.lower() == self.owner.lower():
            repo = self.repos[self.repository.lower()]  # a fork in the same organization needs head_repo
        else:
            repo = next((r for r in self.repos.values()
                         if r.parent == self.repository and r.owner.lower() == owner.lower()), None)
            if repo is None:
                return None
        if repo.full_name != self.repository and repo.parent != self.repository:
            return None  # not in the repository's network
        return repo, branch

    async def _pulls(self, request: Request) -> Response:
        if (missing := self._check_repo(request)) is not None:
            return missing
        if request.method == "GET":
            state = request.query_params.get("state", "open")
            head = request.query_params.get("head")
            items = [p for n, p in sorted(self.pulls.items(), reverse=True) if state in ("all", p["state"])]
            if head is not None:
                items = [p for p in items if p["head"]["label"] == head]
            return JSONResponse([self._view(p, full=False) for p in _page(request, items)])
        data = await request.json()
        self.pull_requests_sent.append(dict(data))
        for key in ("title", "head", "base"):
            if not isinstance(data.get(key), str) or not data[key]:
                return _error(
                    422,
                    "Validation Failed",
                    [{"resource": "PullRequest", "field": key, "code": "missing_field"}],
                )
        base = data["base"]
        found = self._head_of_request(data["head"], data.get("head_repo"))
        head_sha = self.head_of(found[1], found[0].full_name) if found is not None else None
        if found is None or head_sha is None:
            return _error(422, "Validation Failed", [{"resource": "PullRequest", "field": "head", "code": "invalid"}])
        head_repo, head = found
        if base != self.default_branch and self.head_of(base) is None:
            return _error(422, "Validation Failed", [{"resource": "PullRequest", "field": "base", "code": "invalid"}])
        label = f"{head_repo.owner}:{head}"
        for pr in self.pulls.values():
            if pr["state"] == "open" and pr["head"]["label"] == label:
                message = f"A pull request already exists for {label}."
                return _error(
                    422,
                    "Validation Failed",
                    [{"resource": "PullRequest", "code": "custom", "message": message}],
                )
        number = len(self.pulls) + 1
        upstream = self.repos[self.repository.lower()]

        def short(repo: FakeRepo) -> dict[str, Any]:
            return {"full_name": repo.full_name, "name": repo.name, "fork": repo.parent is not None,
                    "owner": {"login": repo.owner}}

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
            "head": {"label": label, "ref": head, "sha": head_sha, "repo": short(head_repo),
                     "user": {"login": head_repo.owner}},
            "base": {
                "label": f"{self.owner}:{base}",
                "ref": base,
                "sha": self.head_of(base) or "0" * 40,
                "repo": short(upstream),
            },
            "maintainer_can_modify": bool(data.get("maintainer_can_modify", head_repo is not upstream)),
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
        if isinstance(pr := self._requested_pull(request), Response):
            return pr
        if request.method == "PATCH":
            data = await request.json()
            if data.get("state") == "closed" and pr["state"] == "open":
                pr["head"]["sha"] = self._live_head(pr)
                pr.update(state="closed", closed_at=NOW, updated_at=NOW)
            if "title" in data:
                pr["title"] = data["title"]
            if "body" in data:
                pr["body"] = data["body"]
        return JSONResponse(self._view(pr, full=True))

    async def _merge(self, request: Request) -> Response:
        if isinstance(pr := self._requested_pull(request), Response):
            return pr
        number = request.path_params["number"]
        data = await request.json()
        method = data.get("merge_method", "merge")
        if method not in ("merge", "squash", "rebase"):
            return _error(
                422,
                "Validation Failed",
                [{"resource": "PullRequest", "field": "merge_method", "code": "invalid"}],
            )
        if pr["state"] != "open" or pr["mergeable"] is False:
            return _error(405, "Pull Request is not mergeable")
        head_sha = self._live_head(pr)  # a fork's head is fetched into refs/pull/N/head first
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
        base_sha = self.head_of(base)
        assert base_sha is not None
        tree = _git(self.git_dir, "merge-tree", "--write-tree", base_sha, head_sha)
        if tree.returncode != 0:
            return None
        parents = ["-p", base_sha] + (["-p", head_sha] if method == "merge" else [])
        commit = _git(self.git_dir, "commit-tree", tree.stdout.split()[0], *parents, "-m", title).stdout.strip()
        if _git(self.git_dir, "update-ref", f"refs/heads/{base}", commit, base_sha).returncode != 0:
            return None
        return commit

    def add_comment(self, number: int, body: str, user: dict[str, Any], association: str = "NONE") -> dict[str, Any]:
        """`user` comments `body` on pull request `number`: the comment as the REST API lists it from then on."""
        comment_id = next(self._ids)
        comment = {
            "id": comment_id,
            "node_id": f"IC_{comment_id}",
            "url": self._url(f"/issues/comments/{comment_id}"),
            "html_url": self._html(f"/pull/{number}#issuecomment-{comment_id}"),
            "issue_url": self._url(f"/issues/{number}"),
            "body": body,
            "user": user,
            "created_at": NOW,
            "updated_at": NOW,
            "author_association": association,
        }
        self.comments.setdefault(number, []).append(comment)
        self.pulls[number]["comments"] = self.pulls[number].get("comments", 0) + 1
        return comment

    async def _comments(self, request: Request) -> Response:
        if isinstance(pr := self._requested_pull(request), Response):
            return pr
        number = request.path_params["number"]
        if request.method == "GET":
            return JSONResponse(_page(request, self.comments.get(number, [])))
        data = await request.json()
        if not isinstance(data.get("body"), str):
            return _error(
                422,
                "Validation Failed",
                [{"resource": "IssueComment", "field": "body", "code": "missing_field"}],
            )
        return JSONResponse(self.add_comment(number, data["body"], self._user()), status_code=201)


    # -- pull request reviews ----------------------------------------------------------------------

    def _diff_ranges(self, pr: dict[str, Any]) -> dict[str, list[range]] | None:
        """The new-side line ranges of each file's hunks in the pull request's diff (its base's merge base to
        its head, three lines of context, as GitHub shows it), read from the hunk headers; None without git."""
        upstream = self.repos[self.repository.lower()]
        if upstream.git_dir is None:
            return None
        head = self._live_head(pr)
        out = _git(upstream.git_dir, "diff", "--no-color", "--no-renames", "-U3",
                   f"refs/heads/{pr['base']['ref']}...{head}").stdout
        ranges: dict[str, list[range]] = {}
        path = None
        for line in out.splitlines():
            if line.startswith("+++ "):
                path = line[6:] if line.startswith("+++ b/") else None
            elif line.startswith("@@") and path is not None:
                new = line.split(" ")[2].lstrip("+")
                start, _, count = new.partition(",")
                ranges.setdefault(path, []).append(range(int(start), int(start) + int(count or "1")))
        return ranges

    async def _reviews(self, request: Request) -> Response:
        """POST /pulls/{n}/reviews as GitHub checks it: the event, a body for COMMENT / REQUEST_CHANGES, the
        commit, and every comment on a path and (side RIGHT) line of the diff, else 422 and nothing posted."""
        if isinstance(pr := self._requested_pull(request), Response):
            return pr
        number = request.path_params["number"]
        if request.method == "GET":
            return JSONResponse(self.reviews.get(number, []))
        data = await request.json()
        self.reviews_sent.append(dict(data))
        event = data.get("event")
        if event not in (None, "APPROVE", "REQUEST_CHANGES", "COMMENT"):
            return _error(422, "Unprocessable Entity", [f"Event {event!r} is not a valid review event"])
        if event in ("REQUEST_CHANGES", "COMMENT") and not data.get("body"):
            return _error(422, "Unprocessable Entity", ["Body is required when the event is " + event])
        head = self._live_head(pr)
        commit = data.get("commit_id") or head
        if commit != head:
            return _error(422, "Unprocessable Entity", ["Commit is not the head of the pull request"])
        comments = data.get("comments") or []
        if not isinstance(comments, list):
            return _error(422, "Invalid request.", ["For 'properties/comments', it is not an array."])
        ranges = self._diff_ranges(pr)
        for comment in comments:
            if not isinstance(comment, dict) or not isinstance(comment.get("path"), str) \
                    or not isinstance(comment.get("body"), str):
                return _error(422, "Invalid request.", ["A review comment needs a path and a body."])
            if comment.get("side", "RIGHT") not in ("LEFT", "RIGHT"):
                return _error(422, "Invalid request.", ["side is not one of LEFT, RIGHT."])
            line = comment.get("line")
            if not isinstance(line, int) or isinstance(line, bool):
                return _error(422, "Unprocessable Entity", ["Line could not be resolved"])
            if ranges is not None:
                if comment["path"] not in ranges:
                    return _error(422, "Unprocessable Entity", ["Path could not be resolved"])
                if not any(line in r for r in ranges[comment["path"]]):
                    return _error(422, "Unprocessable Entity", [
                        "Pull request review thread line must be part of the diff and Pull request review "
                        "thread diff hunk can't be blank"])
        review_id = next(self._ids)
        state = {"APPROVE": "APPROVED", "REQUEST_CHANGES": "CHANGES_REQUESTED", "COMMENT": "COMMENTED"}.get(
            event or "", "PENDING")
        review = {
            "id": review_id,
            "node_id": f"PRR_{review_id}",
            "user": self._user(),
            "body": data.get("body") or "",
            "state": state,
            "html_url": self._html(f"/pull/{number}#pullrequestreview-{review_id}"),
            "pull_request_url": self._url(f"/pulls/{number}"),
            "commit_id": commit,
            "author_association": "NONE",
        }
        if state != "PENDING":
            review["submitted_at"] = NOW
        self.reviews.setdefault(number, []).append(review)
        for comment in comments:
            comment_id = next(self._ids)
            self.review_comments.setdefault(number, []).append({
                "id": comment_id,
                "node_id": f"PRRC_{comment_id}",
                "pull_request_review_id": review_id,
                "path": comment["path"],
                "line": comment["line"],
                "side": comment.get("side", "RIGHT"),
                "commit_id": commit,
                "body": comment["body"],
                "user": self._user(),
                "html_url": self._html(f"/pull/{number}#discussion_r{comment_id}"),
                "created_at": NOW,
                "updated_at": NOW,
            })
        return JSONResponse(review)

    async def _review_comments(self, request: Request) -> Response:
        if isinstance(pr := self._requested_pull(request), Response):
            return pr
        return JSONResponse(_page(request, self.review_comments.get(request.path_params["number"], [])))


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


def _page(request: Request, items: list[Any]) -> list[Any]:
    """The page of `items` that GitHub's `per_page` (default 30) and `page` (from 1) query parameters ask for."""
    per_page = int(request.query_params.get("per_page", "30"))
    page = int(request.query_params.get("page", "1"))
    return items[(page - 1) * per_page : page * per_page]


def _error(status: int, message: str, errors: list[Any] | None = None) -> JSONResponse:
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
