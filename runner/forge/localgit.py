"""LocalGitForge: a bare git repository on disk as the origin, pull requests as rows in SQLite.

Merges are written without a worktree: `git merge-tree --write-tree` computes the result, `commit-tree` makes
the commit and `update-ref <base> <new> <old>` moves the base branch only if it still points where the merge
was computed from. A claim row in SQLite, taken in an IMMEDIATE transaction, makes a second approval of the
same pull request (another coroutine or another process) refuse instead of merging twice; the commit about
to land is recorded first, so a merge interrupted after `update-ref` is recognised, never repeated.

Size: about 600 lines, one backend of the Forge protocol (runner.forge.base) and its SQLite
tables (pull requests, comments, reviews, merge claims): each method is one forge operation, and the merge's
claim-and-record protocol needs the tables and the git plumbing side by side.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from runner.errors import ForgeConflict, ForgeError, ForgeNotFound
from runner.forge.base import (
    MERGE_METHODS,
    Comment,
    MergeConflict,
    MergeMethod,
    MergeResult,
    PostedReview,
    PullRequest,
    ReviewComment,
    check_push_onto,
    check_pushable,
)
from runner.gitops import DEFAULT_GIT_TIMEOUT, GitError, GitResult, head_sha, run_git
from runner.resource import AsyncResource
from runner.review import diff_lines

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A claim older than this belongs to a supervisor that died mid-merge; git calls are bounded well below it.
DEFAULT_CLAIM_TTL = 900.0
AUTHOR = "agent-runner"

SCHEMA = """
CREATE TABLE IF NOT EXISTS forge_pulls (
    repo TEXT NOT NULL,
    number INTEGER NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    head_branch TEXT NOT NULL,
    base_branch TEXT NOT NULL,
    head_sha TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('open', 'merged', 'closed')),
    merge_sha TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    claim TEXT,
    claimed_at REAL,
    pending_sha TEXT,
    PRIMARY KEY (repo, number)
);
CREATE UNIQUE INDEX IF NOT EXISTS forge_pulls_open_head ON forge_pulls(repo, head_branch) WHERE state = 'open';
CREATE TABLE IF NOT EXISTS forge_comments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repo TEXT NOT NULL,
    number INTEGER NOT NULL,
    body TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS forge_comments_pull ON forge_comments(repo, number);
CREATE TABLE IF NOT EXISTS forge_reviews (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repo TEXT NOT NULL,
    number INTEGER NOT NULL,
    body TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    comments TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS forge_reviews_pull ON forge_reviews(repo, number);
"""

_COLUMNS = "number, title, body, head_branch, base_branch, head_sha, state, merge_sha, claim, claimed_at, pending_sha"


class LocalGitForge(AsyncResource):
    """The embedded forge: `repo` is the path of a bare repository (the origin), `db_path` a SQLite file."""

    def __init__(
        self,
        repo: str | Path,
        db_path: Path,
        *,
        git_timeout: float = DEFAULT_GIT_TIMEOUT,
        claim_ttl: float = DEFAULT_CLAIM_TTL,
    ) -> None:
        self.repo = Path(repo).expanduser().resolve()
        self.db_path = db_path
        self._key = str(self.repo)
        self._git_timeout = git_timeout
        self._claim_ttl = claim_ttl
        self._checked = False
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(SCHEMA)

    def __repr__(self) -> str:
        return f"LocalGitForge({str(self.repo)!r})"

    def git_auth(self) -> None:
        return None  # a repository on this disk: nothing to authenticate

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()

    # -- branches --------------------------------------------------------------------------------------

    async def push_branch(self, clone: Path, branch: str) -> str:
        default = await self._default_branch()
        open_prs = await self.list_open()
        check_pushable(
            branch,
            base_branches=[default, *(pr.base_branch for pr in open_prs)],
            open_pr_branches=[pr.head_branch for pr in open_prs],
        )
        return await self._push(clone, branch)

    async def push_onto(self, clone: Path, number: int, head_sha: str) -> str:
        pr = await self.get_pr(number)
        check_push_onto(pr, head_sha)
        sha = await self._push(clone, pr.head_branch)

        def moved(db: sqlite3.Connection) -> None:
            db.execute("UPDATE forge_pulls SET head_sha = ?, updated_at = ? WHERE repo = ? AND number = ? "
                       "AND head_sha = ?", (sha, time.time(), self._key, number, head_sha))

        await self._tx(moved)
        return sha

    async def _push(self, clone: Path, branch: str) -> str:
        """Push the clone's HEAD to `branch`; its sha. No `+`: git refuses anything but creating the branch or
        fast-forwarding it."""
        sha = await head_sha(clone, timeout=self._git_timeout)
        result = await run_git(
            ["push", "--porcelain", "--no-verify", str(self.repo), f"{sha}:refs/heads/{branch}"],
            cwd=clone,
            timeout=self._git_timeout,
            check=False,
        )
        if result.returncode != 0:
            output = f"{result.out}\n{result.stderr}".strip()
            if any(s in output.lower() for s in ("[rejected]", "non-fast-forward", "fetch first")):
                raise ForgeConflict(f"push of {branch} rejected, the branch exists and has diverged: {output[-500:]}")
            raise ForgeError(f"push of {branch} to {self.repo} failed: {output[-500:]}")
        logger.info("pushed %s to %s in %s", sha[:12], branch, self.repo)
        return sha

    async def edit_body(self, number: int, body: str) -> PullRequest:
        def edit(db: sqlite3.Connection) -> sqlite3.Row:
            self._row(db, number)
            db.execute("UPDATE forge_pulls SET body = ?, updated_at = ? WHERE repo = ? AND number = ?",
                       (body, time.time(), self._key, number))
            return self._row(db, number)

        return self._pull(await self._tx(edit))

    # -- pull requests ---------------------------------------------------------------------------------

    async def open_pr(self, title: str, body: str, head: str, base: str) -> PullRequest:
        if head == base:
            raise ForgeError(f"a pull request needs different head and base, got {head!r} twice")
        head_commit = await self._branch_sha(head)
        if head_commit is None:
            raise ForgeNotFound(f"no branch {head!r} in {self.repo}")
        if await self._branch_sha(base) is None:
            raise ForgeNotFound(f"no base branch {base!r} in {self.repo}")

        def insert(db: sqlite3.Connection) -> tuple[sqlite3.Row, bool]:
            existing = db.execute(
                f"SELECT {_COLUMNS} FROM forge_pulls WHERE repo = ? AND head_branch = ? AND state = 'open'",
                (self._key, head),
            ).fetchone()
            if existing is not None:
                return existing, False
            (number,) = db.execute(
                "SELECT COALESCE(MAX(number), 0) + 1 FROM forge_pulls WHERE repo = ?", (self._key,)
            ).fetchone()
            now = time.time()
            db.execute(
                "INSERT INTO forge_pulls (repo, number, title, body, head_branch, base_branch, head_sha, state,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?, ?)",
                (self._key, number, title, body, head, base, head_commit, now, now),
            )
            return self._row(db, number), True

        row, created = await self._tx(insert)
        pr = self._pull(row)
        if created:
            logger.info("opened pull request #%d (%s -> %s) in %s", pr.number, head, base, self.repo)
        else:
            logger.info("reusing pull request #%d for %s", pr.number, head)
        return pr

    async def get_pr(self, number: int) -> PullRequest:
        return self._pull(await self._tx(lambda db: self._row(db, number)))

    async def list_open(self) -> tuple[PullRequest, ...]:
        rows = await self._tx(
            lambda db: db.execute(
                f"SELECT {_COLUMNS} FROM forge_pulls WHERE repo = ? AND state = 'open' ORDER BY number",
                (self._key,),
            ).fetchall()
        )
        return tuple(self._pull(row) for row in rows)

    async def comment(self, number: int, body: str) -> Comment:
        def insert(db: sqlite3.Connection) -> Comment:
            self._row(db, number)
            now = time.time()
            cursor = db.execute(
                "INSERT INTO forge_comments (repo, number, body, author, created_at) VALUES (?, ?, ?, ?, ?)",
                (self._key, number, body, AUTHOR, now),
            )
            assert cursor.lastrowid is not None
            return Comment(cursor.lastrowid, number, body, AUTHOR, _iso(now), self._url(number))

        return await self._tx(insert)

    async def list_comments(self, number: int) -> tuple[Comment, ...]:
        def select(db: sqlite3.Connection) -> list[sqlite3.Row]:
            self._row(db, number)
            return db.execute(
                "SELECT id, body, author, created_at FROM forge_comments WHERE repo = ? AND number = ? ORDER BY id",
                (self._key, number),
            ).fetchall()

        rows = await self._tx(select)
        return tuple(
            Comment(r["id"], number, r["body"], r["author"], _iso(r["created_at"]), self._url(number)) for r in rows
        )

    async def post_review(self, number: int, *, commit_sha: str, body: str,
                          comments: Sequence[ReviewComment] = ()) -> PostedReview:
        """Stored with the pull request, checked as GitHub checks it: at the head, each comment on a line the
        diff from the base's merge base shows (ForgeError otherwise, and nothing is stored)."""
        pr = await self.get_pr(number)
        if pr.head_sha != commit_sha:
            raise ForgeConflict(f"pull request #{number} head is {pr.head_sha[:12]}, not {commit_sha[:12]}, which "
                                "was reviewed; nothing posted")
        if not body:
            raise ForgeError("a review needs a body")
        if comments:
            diff = (await self._git(["diff", "--no-color", "--no-renames", "-U3",
                                     f"refs/heads/{pr.base_branch}...{pr.head_sha}"])).out
            shown = diff_lines(diff)
            for c in comments:
                if c.line not in shown.get(c.path, frozenset()):
                    raise ForgeError(f"review comment on {c.path}:{c.line}: the line is not part of the diff of "
                                     f"pull request #{number}; nothing posted")
        stored = json.dumps([{"path": c.path, "line": c.line, "body": c.body} for c in comments])

        def insert(db: sqlite3.Connection) -> int:
            self._row(db, number)
            cursor = db.execute(
                "INSERT INTO forge_reviews (repo, number, body, commit_sha, comments, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)", (self._key, number, body, commit_sha, stored, time.time()))
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        review_id = await self._tx(insert)
        return PostedReview(review_id, number, body, commit_sha, tuple(comments),
                            f"{self._url(number)}#review-{review_id}")

    async def list_reviews(self, number: int) -> tuple[PostedReview, ...]:
        def select(db: sqlite3.Connection) -> list[sqlite3.Row]:
            self._row(db, number)
            return db.execute("SELECT id, body, commit_sha, comments FROM forge_reviews WHERE repo = ? AND number = ?"
                              " ORDER BY id", (self._key, number)).fetchall()

        return tuple(
            PostedReview(r["id"], number, r["body"], r["commit_sha"],
                         tuple(ReviewComment(str(c["path"]), int(c["line"]), str(c["body"]))
                               for c in json.loads(r["comments"])),
                         f"{self._url(number)}#review-{r['id']}")
            for r in await self._tx(select))

    async def close(self, number: int) -> PullRequest:
        def update(db: sqlite3.Connection) -> sqlite3.Row:
            row = self._row(db, number)
            if row["state"] == "merged":
                raise ForgeConflict(f"pull request #{number} is already merged")
            if row["claim"] is not None and row["claimed_at"] > time.time() - self._claim_ttl:
                raise ForgeConflict(f"pull request #{number} is being merged")
            db.execute(
                "UPDATE forge_pulls SET state = 'closed', updated_at = ?"
                " WHERE repo = ? AND number = ? AND state = 'open'",
                (time.time(), self._key, number),
            )
            return self._row(db, number)

        pr = self._pull(await self._tx(update))
        logger.info("closed pull request #%d in %s", number, self.repo)
        return pr

    async def merge(self, number: int, expected_head_sha: str, method: MergeMethod = "squash") -> MergeResult:
        if method not in MERGE_METHODS:
            raise ValueError(f"merge method must be one of {MERGE_METHODS}, got {method!r}")
        claim = uuid.uuid4().hex
        row = await self._claim(number, claim)
        pr = self._pull(row)
        landed = False
        try:
            if pr.head_sha != expected_head_sha:
                raise ForgeConflict(
                    f"pull request #{number} was opened at {pr.head_sha[:12]}, not the approved "
                    f"{expected_head_sha[:12]}; nothing merged"
                )
            live = await self._branch_sha(pr.head_branch)
            if live != expected_head_sha:
                now = live[:12] if live else "deleted"
                raise ForgeConflict(
                    f"pull request #{number} head moved: approved {expected_head_sha[:12]}, now {now}; nothing merged"
                )
            base_old = await self._branch_sha(pr.base_branch)
            if base_old is None:
                raise ForgeNotFound(f"base branch {pr.base_branch!r} of #{number} no longer exists")
            if await self._is_ancestor(expected_head_sha, base_old):
                raise ForgeConflict(f"pull request #{number} is already contained in {pr.base_branch}")
            tree = await self._merge_tree(number, pr.base_branch, base_old, expected_head_sha)
            new = await self._commit(pr, method, tree, base_old, expected_head_sha)
            await self._tx(lambda db: self._set_pending(db, number, claim, new))
            try:
                await self._git(
                    [
                        "update-ref",
                        "-m",
                        f"agent-runner: merge #{number}",
                        f"refs/heads/{pr.base_branch}",
                        new,
                        base_old,
                    ]
                )
            except ForgeError:
                if not await self._contains(pr.base_branch, new):
                    raise ForgeConflict(f"{pr.base_branch} moved while #{number} was merging; nothing merged") from None
            landed = True
            await self._tx(lambda db: self._finish(db, number, new))
        except BaseException:
            if not landed:
                await asyncio.shield(self._release(number, claim, pr.base_branch))
            raise
        logger.info("merged pull request #%d (%s) into %s as %s", number, method, pr.base_branch, new[:12])
        return MergeResult(number, True, new, method, expected_head_sha, f"merged #{number} into {pr.base_branch}")

    # -- merge steps -----------------------------------------------------------------------------------

    async def _claim(self, number: int, claim: str) -> sqlite3.Row:
        for _ in range(2):

            def take(db: sqlite3.Connection) -> tuple[sqlite3.Row | None, sqlite3.Row]:
                row = self._row(db, number)
                if row["state"] == "merged":
                    raise ForgeConflict(f"pull request #{number} is already merged as {row['merge_sha'][:12]}")
                if row["state"] == "closed":
                    raise ForgeConflict(f"pull request #{number} is closed; nothing merged")
                if row["claim"] is not None:
                    if row["claimed_at"] > time.time() - self._claim_ttl:
                        raise ForgeConflict(f"pull request #{number} is already being merged by another approval")
                    if row["pending_sha"] is not None:
                        return None, row  # a merge that died mid-way: see whether it landed
                db.execute(
                    "UPDATE forge_pulls SET claim = ?, claimed_at = ?, pending_sha = NULL"
                    " WHERE repo = ? AND number = ?",
                    (claim, time.time(), self._key, number),
                )
                return self._row(db, number), row

            taken, seen = await self._tx(take)
            if taken is not None:
                return taken
            await self._release(number, seen["claim"], seen["base_branch"])
        raise ForgeConflict(f"pull request #{number} could not be claimed for merging")

    async def _release(self, number: int, claim: str, base_branch: str) -> None:
        """Drop our claim, unless the commit we recorded did reach the base: then the merge happened."""
        row = await self._tx(lambda db: self._row(db, number))
        if row["claim"] != claim:
            return
        pending = row["pending_sha"]
        if pending is not None and await self._contains(base_branch, pending):
            await self._tx(lambda db: self._finish(db, number, pending))
            logger.warning("pull request #%d had been merged as %s by an interrupted approval", number, pending[:12])
            return
        await self._tx(
            lambda db: db.execute(
                "UPDATE forge_pulls SET claim = NULL, claimed_at = NULL, pending_sha = NULL"
                " WHERE repo = ? AND number = ? AND claim = ?",
                (self._key, number, claim),
            )
        )

    def _set_pending(self, db: sqlite3.Connection, number: int, claim: str, sha: str) -> None:
        cursor = db.execute(
            "UPDATE forge_pulls SET pending_sha = ? WHERE repo = ? AND number = ? AND claim = ? AND state = 'open'",
            (sha, self._key, number, claim),
        )
        if cursor.rowcount != 1:
            raise ForgeConflict(f"lost the merge claim on #{number}; nothing merged")

    def _finish(self, db: sqlite3.Connection, number: int, sha: str) -> None:
        db.execute(
            "UPDATE forge_pulls SET state = 'merged', merge_sha = ?, claim = NULL, claimed_at = NULL,"
            " pending_sha = NULL, updated_at = ? WHERE repo = ? AND number = ?",
            (sha, time.time(), self._key, number),
        )

    async def _merge_tree(self, number: int, base: str, base_sha: str, head: str) -> str:
        result = await self._git(["merge-tree", "--write-tree", "--name-only", "-z", base_sha, head], check=False)
        fields = result.stdout.decode("utf-8", "surrogateescape").split("\0")
        if result.returncode == 0:
            return fields[0].strip()
        if result.returncode == 1:
            files: list[str] = []
            for name in fields[1:]:
                if not name:
                    break
                if name not in files:
                    files.append(name)
            raise MergeConflict(f"pull request #{number} no longer merges cleanly into {base}", files)
        raise ForgeError(f"git merge-tree failed for #{number}: {result.stderr.strip()}")

    async def _commit(self, pr: PullRequest, method: MergeMethod, tree: str, base: str, head: str) -> str:
        if method == "squash":
            subjects = (await self._git(["log", "--format=* %s", f"{base}..{head}"])).out
            message = f"{pr.title} (#{pr.number})\n\n{subjects}\n"
            return (await self._git(["commit-tree", tree, "-p", base], stdin=message.encode())).out
        if method == "merge":
            message = f"Merge pull request #{pr.number} from {pr.head_branch}\n\n{pr.title}\n"
            return (await self._git(["commit-tree", tree, "-p", base, "-p", head], stdin=message.encode())).out
        return await self._rebase(pr, base, head)

    async def _rebase(self, pr: PullRequest, base: str, head: str) -> str:
        """Replay each commit of the branch onto the base, in a throwaway index: no worktree is touched."""
        merges = (await self._git(["rev-list", "--merges", f"{base}..{head}"])).out
        if merges:
            raise ForgeConflict(f"pull request #{pr.number} contains merge commits; use squash or merge")
        commits = (await self._git(["rev-list", "--reverse", f"{base}..{head}"])).out.split()
        tip = base
        with tempfile.TemporaryDirectory(prefix="agent-runner-rebase-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            for commit in commits:
                await self._git(["read-tree", tip], env=env)
                patch = (await self._git(["diff-tree", "-p", "--binary", "--full-index", f"{commit}^", commit])).stdout
                if patch.strip():
                    applied = await self._git(["apply", "--cached", "-"], env=env, stdin=patch, check=False)
                    if applied.returncode != 0:
                        files = sorted(
                            {
                                line.split(":")[1].strip()
                                for line in applied.stderr.splitlines()
                                if line.startswith("error: patch failed:") and line.count(":") >= 2
                            }
                        )
                        raise MergeConflict(f"pull request #{pr.number}: {commit[:12]} does not rebase cleanly", files)
                tree = (await self._git(["write-tree"], env=env)).out
                info = (await self._git(["log", "-1", "--date=raw", "--format=%an%x00%ae%x00%ad%x00%B", commit])).stdout
                name, email, date, message = info.decode("utf-8", "replace").split("\0", 3)
                author = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": date}
                tip = (await self._git(["commit-tree", tree, "-p", tip], env=author, stdin=message.encode())).out
        return tip

    # -- git and SQLite plumbing -----------------------------------------------------------------------

    async def _git(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> GitResult:
        if not self._checked:
            await self._check_repo()
        try:
            return await run_git(
                args,
                cwd=self.repo,
                env={"GIT_DIR": str(self.repo), **(env or {})},
                stdin=stdin,
                timeout=self._git_timeout,
                check=check,
            )
        except GitError as exc:
            raise ForgeError(f"git failed in {self.repo}: {exc}") from exc

    async def _check_repo(self) -> None:
        if not self.repo.is_dir():
            raise ForgeNotFound(f"no git repository at {self.repo}")
        # GIT_DIR pins git to this directory: it must not wander up into an enclosing repository.
        probe = await run_git(
            ["rev-parse", "--is-bare-repository"],
            cwd=self.repo,
            env={"GIT_DIR": str(self.repo)},
            timeout=self._git_timeout,
            check=False,
        )
        if probe.returncode != 0:
            raise ForgeNotFound(f"no git repository at {self.repo}")
        if probe.out != "true":
            raise ForgeError(f"{self.repo} is not a bare repository; the local forge needs one as its origin")
        self._checked = True

    async def _default_branch(self) -> str:
        return (await self._git(["symbolic-ref", "--short", "HEAD"])).out

    async def _branch_sha(self, branch: str) -> str | None:
        result = await self._git(["rev-parse", "--verify", "-q", f"refs/heads/{branch}^{{commit}}"], check=False)
        return result.out if result.returncode == 0 and result.out else None

    async def _is_ancestor(self, maybe_ancestor: str, of: str) -> bool:
        result = await self._git(["merge-base", "--is-ancestor", maybe_ancestor, of], check=False)
        return result.returncode == 0

    async def _contains(self, branch: str, sha: str) -> bool:
        tip = await self._branch_sha(branch)
        return tip is not None and await self._is_ancestor(sha, tip)

    async def _tx(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return result

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise ForgeError(f"local forge database {self.db_path} failed: {exc}") from exc

    def _row(self, db: sqlite3.Connection, number: int) -> sqlite3.Row:
        row: sqlite3.Row | None = db.execute(
            f"SELECT {_COLUMNS} FROM forge_pulls WHERE repo = ? AND number = ?", (self._key, int(number))
        ).fetchone()
        if row is None:
            raise ForgeNotFound(f"no pull request #{number} in {self.repo}")
        return row

    def _url(self, number: int) -> str:
        return f"{self.repo.as_uri()}#pull/{number}"

    def _pull(self, row: Any) -> PullRequest:
        return PullRequest(
            number=row["number"],
            url=self._url(row["number"]),
            title=row["title"],
            body=row["body"],
            head_branch=row["head_branch"],
            base_branch=row["base_branch"],
            head_sha=row["head_sha"],
            state=row["state"],
            merge_sha=row["merge_sha"],
        )


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
