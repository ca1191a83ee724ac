"""A task's two checkouts: the sandbox's workspace (untrusted) and the supervisor's clone (trusted).

prepare(): mirror the repo, clone it for the supervisor, and make a parentless commit of the base tree
minus read-protected files. populate(): give the workspace a fresh repo holding only that commit, checked
out, so the sandbox never holds the history (where a removed secret would still live).

extract(): read the workspace as data with the supervisor's own git (its GIT_DIR, a private index,
hooks and fsmonitor off, no repo config from the sandbox), list every change with modes and symlink
targets, check it against the policy, and commit it in the trusted clone.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import fnmatch
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import policy
from runner.forge.base import GitAuth
from runner.gitops import run_git
from runner.sandbox.base import SANDBOX_UID

# Build droppings never belong in a change, whatever the repo's .gitignore says.
ALWAYS_IGNORED = "__pycache__/\n*.pyc\n.pytest_cache/\n.mypy_cache/\n.ruff_cache/\n.hypothesis/\n.claude/\n"
SANDBOX_REF = "refs/agent-runner/sandbox-base"
STATUS = {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "T": "modified", "C": "added"}


@dataclass(frozen=True, slots=True)
class Prepared:
    task_dir: Path
    mirror: Path
    trusted: Path
    workspace: Path
    base_branch: str
    base_sha: str
    removed: tuple[str, ...]
    """Read-protected files taken out of the workspace; their absence is not a change."""
    given: str
    """The parentless commit of the stripped tree that the sandbox's repo holds (a function of the tree)."""
    cache: Path
    """Populated workspaces kept for the next task on the same tree (home/cache/workspaces)."""


@dataclass(frozen=True, slots=True)
class Change:
    diff: str
    files: tuple[policy.FileChange, ...]
    verdict: policy.ChangesetVerdict
    tree: str

    @property
    def empty(self) -> bool:
        return not self.files

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(f.path for f in self.files)


def mirror_path(home: Path, repo: str) -> Path:
    return home / "mirrors" / (hashlib.sha256(repo.encode()).hexdigest()[:16] + ".git")


_MIRROR_LOCKS: dict[Path, asyncio.Lock] = {}
GIVEN_MESSAGE = "the repository's files at the task's base (read-protected files removed)"
GIVEN_DATES = {"GIT_AUTHOR_DATE": "946684800 +0000", "GIT_COMMITTER_DATE": "946684800 +0000"}  # 2000-01-01
WORKSPACE_CACHE_SIZE = 8  # populated workspaces kept, one per tree: a repository's recent base commits


async def update_mirror(home: Path, repo: str, auth: GitAuth | None = None) -> Path:
    """Clone or fetch the mirror of `repo`, one task at a time: two first clones into one directory break it.
    `auth` is the forge's credential for a private repository (a header scoped to its URL).

    An asyncio lock orders this process's tasks, and an flock beside the mirror orders the supervisors that
    share this home (polled, not waited for in a thread, so a cancelled task leaves nothing blocked).
    """
    mirror = mirror_path(home, repo)
    async with _MIRROR_LOCKS.setdefault(mirror, asyncio.Lock()):
        mirror.parent.mkdir(parents=True, exist_ok=True)
        with open(mirror.with_suffix(".lock"), "a") as lock:
            while True:
                try:
                    fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(0.05)
            return await _update_mirror(mirror, repo, auth)  # closing the file releases the lock


async def _update_mirror(mirror: Path, repo: str, auth: GitAuth | None) -> Path:
    env, secrets = (auth.env, auth.secrets) if auth is not None else (None, ())
    if (mirror / "HEAD").exists():
        await run_git(["fetch", "--prune", "--quiet", "origin"], cwd=mirror, timeout=600, env=env, secrets=secrets)
    else:
        tmp = mirror.with_suffix(".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        await run_git(["clone", "--mirror", "--quiet", repo, str(tmp)], timeout=600, env=env, secrets=secrets)
        tmp.rename(mirror)  # atomic: a crash mid-clone leaves no half mirror behind
    return mirror


async def prepare(home: Path, task_id: str, repo: str, active: policy.Policy, *, base_ref: str | None = None,
                  auth: GitAuth | None = None) -> Prepared:
    """Mirror the repo, clone it for the supervisor, and make the stripped commit the sandbox is given."""
    mirror = await update_mirror(home, repo, auth)
    if base_ref is None:
        head = await run_git(["symbolic-ref", "HEAD"], cwd=mirror)
        base_ref = head.out.removeprefix("refs/heads/")
    base_sha = (await run_git(["rev-parse", "--verify", f"{base_ref}^{{commit}}"], cwd=mirror)).out

    task_dir = home / "tasks" / task_id
    shutil.rmtree(task_dir, ignore_errors=True)
    trusted, workspace = task_dir / "trusted", task_dir / "workspace"
    workspace.mkdir(parents=True)
    # The supervisor's clone needs no working tree: the change is read from the workspace and committed
    # with plumbing, so nothing is written twice. --shared borrows the mirror's objects (never gc'd:
    # gc.auto=0 for every trusted git) instead of copying them.
    await run_git(["clone", "--quiet", "--no-checkout", "--shared", str(mirror), str(trusted)])

    # What the sandbox is given: the base tree minus read-protected files, as a commit without parents
    # (the history, where a removed secret would still live, never enters the sandbox).
    index_env = {"GIT_INDEX_FILE": str(task_dir / "sandbox.index")}
    tracked = (await run_git(["ls-tree", "-r", "-z", "--name-only", base_sha], cwd=trusted)).stdout
    removed = [path for path in tracked.decode("utf-8", "surrogateescape").split("\0")
               if path and policy.is_read_protected(active, path)]
    await run_git(["read-tree", base_sha], cwd=trusted, env=index_env)
    if removed:
        await run_git(["update-index", "--force-remove", "-z", "--stdin"], cwd=trusted, env=index_env,
                      stdin="\0".join(removed).encode() + b"\0")
    tree = (await run_git(["write-tree"], cwd=trusted, env=index_env)).out
    # A function of the tree alone (fixed message and dates): equal trees give the same commit, so a cached
    # workspace (populate) holds exactly the commit this task is given.
    given = (await run_git(["commit-tree", tree, "-m", GIVEN_MESSAGE], cwd=trusted, env=GIVEN_DATES)).out
    await run_git(["update-ref", SANDBOX_REF, given], cwd=trusted)
    (task_dir / "sandbox.index").unlink()
    (task_dir / "ignore").write_text(ALWAYS_IGNORED)
    return Prepared(task_dir, mirror, trusted, workspace, base_ref, base_sha, tuple(removed), given,
                    home / "cache" / "workspaces")


async def populate(prepared: Prepared) -> None:
    """Fill the workspace: a fresh repo holding only the commit the sandbox is given, checked out.

    A checkout of thousands of files is the slowest step of a task's start, so each populated workspace is
    kept (root-owned, never mounted anywhere), keyed by its commit (a function of the tree) and branch, and
    the next task on the same tree gets a copy: `cp -a` is about 5x faster than the checkout. A copy has
    its own inodes, so nothing a sandbox does to its workspace can reach the cache or another task.
    """
    key = f"{prepared.given}-{hashlib.sha256(prepared.base_branch.encode()).hexdigest()[:8]}"
    cached = prepared.cache / key
    if not (cached / ".git" / "HEAD").exists():
        await _fill(prepared, cached)
    os.utime(cached)  # most recently used: kept longest
    await _copy_tree(cached, prepared.workspace)
    if os.geteuid() == 0:
        await asyncio.to_thread(chown_tree, prepared.workspace, SANDBOX_UID)


async def _fill(prepared: Prepared, cached: Path) -> None:
    """Check the given commit out into the cache (built aside, then renamed in: a racing task's copy wins)."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{cached.name}-", dir=cached.parent))
    try:
        await run_git(["init", "--quiet", "-b", prepared.base_branch], cwd=building)
        await run_git(["fetch", "--quiet", "--no-tags", str(prepared.trusted), SANDBOX_REF], cwd=building)
        await run_git(["-c", "checkout.workers=0", "checkout", "--quiet", "-B", prepared.base_branch, "FETCH_HEAD"],
                      cwd=building)
        with contextlib.suppress(OSError):  # another task filled it first: theirs is the same tree
            building.rename(cached)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    _evict(cached.parent, keep=WORKSPACE_CACHE_SIZE)


async def _copy_tree(source: Path, dest: Path) -> None:
    proc = await asyncio.create_subprocess_exec("cp", "-a", "--", f"{source}/.", str(dest),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(f"copying the cached workspace failed: {err.decode(errors='replace').strip()}")


def _evict(cache: Path, *, keep: int) -> None:
    """Drop the least recently used cached workspaces beyond `keep`."""
    entries = sorted((p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[keep:]:
        shutil.rmtree(stale, ignore_errors=True)


async def dependency_files(prepared: Prepared, patterns: Sequence[str]) -> dict[str, bytes]:
    """The given tree's files matching the policy's dependency patterns, read from the trusted clone."""
    listing = (await run_git(["ls-tree", "-r", "-z", "--name-only", prepared.given], cwd=prepared.trusted)).stdout
    paths = sorted(p for p in listing.decode("utf-8", "surrogateescape").split("\0")
                   if p and any(fnmatch.fnmatch(p, pattern) for pattern in patterns))
    return {p: (await run_git(["cat-file", "blob", f"{prepared.given}:{p}"], cwd=prepared.trusted)).stdout
            for p in paths}


def chown_tree(root: Path, uid: int) -> None:
    """Give a directory the sandbox user can write to (as root, workspaces are created as root)."""
    for parent, dirs, files in os.walk(root):
        for name in (parent, *(os.path.join(parent, n) for n in dirs + files)):
            os.lchown(name, uid, uid)


async def extract(prepared: Prepared, active: policy.Policy, kind: str) -> Change:
    """The workspace's change against the base, as the supervisor's own git sees it; nothing in it runs."""
    env = {
        "GIT_DIR": str(prepared.trusted / ".git"),
        "GIT_WORK_TREE": str(prepared.workspace),
        "GIT_INDEX_FILE": str(prepared.task_dir / "extract.index"),
    }
    cfg = ["-c", f"core.excludesFile={prepared.task_dir / 'ignore'}", "-c", "core.symlinks=true",
           "-c", "core.fileMode=true", "-c", "core.quotePath=false"]
    await run_git([*cfg, "read-tree", prepared.base_sha], env=env)
    await run_git([*cfg, "add", "--all"], env=env)
    planted = [p for p in prepared.removed if os.path.lexists(prepared.workspace / p)]
    if prepared.removed:
        await run_git([*cfg, "reset", "--quiet", prepared.base_sha, "--", *prepared.removed], env=env)
    tree = (await run_git([*cfg, "write-tree"], env=env)).out

    raw = (await run_git(["diff-tree", "-r", "-z", "-M", "--raw", prepared.base_sha, tree], env=env)).stdout
    numstat = (await run_git(["diff-tree", "-r", "-z", "-M", "--numstat", prepared.base_sha, tree], env=env)).stdout
    counts = _numstat(numstat)
    files = []
    for status, old_mode, new_mode, new_blob, path, old_path in _raw(raw):
        mode = int(new_mode, 8) if status != "D" else int(old_mode, 8)
        target = None
        if new_mode == "120000":
            target = (await run_git(["cat-file", "blob", new_blob], env=env)).out
        added, removed_lines = counts.get(path, (0, 0))
        files.append(policy.FileChange(path=path, status=STATUS.get(status, "modified"),  # type: ignore[arg-type]
                                       old_path=old_path, mode=mode, symlink_target=target,
                                       added_lines=added, removed_lines=removed_lines))
    diff = (await run_git(["diff-tree", "-p", "--binary", "-M", "--no-color", prepared.base_sha, tree], env=env)
            ).stdout.decode("utf-8", "replace")
    verdict = policy.check_changeset(active, kind, files, len(diff.encode()))
    if planted:
        verdict = policy.ChangesetVerdict(False, (*verdict.reasons, *(
            f"{p}: the sandbox wrote a read-protected file (it was removed before the start)" for p in planted)))
    return Change(diff=diff, files=tuple(files), verdict=verdict, tree=tree)


async def commit(prepared: Prepared, change: Change, message: str, branch: str) -> str:
    """Commit the validated tree in the trusted clone and point `branch` at it."""
    env = {"GIT_DIR": str(prepared.trusted / ".git")}
    sha = (await run_git(["commit-tree", change.tree, "-p", prepared.base_sha, "-F", "-"], env=env,
                         stdin=message.encode())).out
    await run_git(["update-ref", f"refs/heads/{branch}", sha], env=env)
    await run_git(["symbolic-ref", "HEAD", f"refs/heads/{branch}"], cwd=prepared.trusted)
    return sha


def _raw(data: bytes) -> list[tuple[str, str, str, str, str, str | None]]:
    """Parse `git diff-tree --raw -z`: (status, old mode, new mode, new blob, path, old path)."""
    parts = data.decode("utf-8", "surrogateescape").split("\0")
    out: list[tuple[str, str, str, str, str, str | None]] = []
    i = 0
    while i < len(parts) and parts[i].startswith(":"):
        old_mode, new_mode, _old_blob, new_blob, status = parts[i][1:].split(" ")
        letter = status[0]
        if letter in "RC":
            out.append((letter, old_mode, new_mode, new_blob, parts[i + 2], parts[i + 1]))
            i += 3
        else:
            out.append((letter, old_mode, new_mode, new_blob, parts[i + 1], None))
            i += 2
    return out


def _numstat(data: bytes) -> dict[str, tuple[int, int]]:
    """Parse `git diff-tree --numstat -z` into path -> (added, removed); binary files count 0."""
    parts = data.decode("utf-8", "surrogateescape").split("\0")
    out: dict[str, tuple[int, int]] = {}
    i = 0
    while i < len(parts) and parts[i]:
        fields = parts[i].split("\t")
        added, removed = (int(x) if x.isdigit() else 0 for x in fields[:2])
        if len(fields) >= 3 and fields[2]:
            out[fields[2]] = (added, removed)
            i += 1
        else:  # a rename: the two paths follow as their own fields
            out[parts[i + 2]] = (added, removed)
            i += 3
    return out
