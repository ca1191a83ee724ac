"""A task's two trees: what the sandbox is given (untrusted once given), and the supervisor's clone (trusted).

prepare(): mirror the repo, clone it for the supervisor, and make a parentless commit of the base tree
minus read-protected files. populate(): the tar the sandbox's workspace is filled from: a fresh repo holding
only that commit, checked out, so the sandbox never holds the history (where a removed secret would still
live).

extract(): read the tar a stopped sandbox's workspace came back as, as data (runner.sandbox.archive: no
name, link or ignore file of the sandbox is followed), write its new blobs into the trusted clone's object
store, build the tree on a private index, list every change with modes and symlink targets, and check it
against the policy. Only the supervisor's fixed ALWAYS_IGNORED list applies: a `.gitignore` the sandbox
wrote is an ordinary file of the change. tree_archive(): a tree of the trusted clone as a tar, for the
fresh containers the supervisor's tests and verification run in.

Size: about 470 lines, one concept (the two trees of a task and the moves between them): prepare,
populate and extract share the Prepared paths and the private-index discipline; reading the tar itself is
runner.sandbox.archive's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import fnmatch
import hashlib
import os
import posixpath
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import policy
from runner.forge.base import GitAuth
from runner.gitops import git_argv, git_env, run_git
from runner.sandbox import archive

# Build droppings never belong in a change, whatever the repository's own ignore files say (the sandbox
# wrote those, so they are part of the change, never instructions). As in git, a tracked path stays.
ALWAYS_IGNORED = ("__pycache__/", "*.pyc", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/", ".hypothesis/",
                  ".claude/")
SANDBOX_REF = "refs/agent-runner/sandbox-base"
STATUS = {"A": "added", "M": "modified", "D": "deleted", "R": "renamed", "T": "modified", "C": "added"}
MODE_SUBMODULE = "160000"


@dataclass(frozen=True, slots=True)
class Prepared:
    task_dir: Path
    mirror: Path
    trusted: Path
    base_branch: str
    base_sha: str
    removed: tuple[str, ...]
    """Read-protected files taken out of the workspace; their absence is not a change."""
    given: str
    """The parentless commit of the stripped tree that the sandbox's repo holds (a function of the tree)."""
    cache: Path
    """Populated workspaces kept for the next task on the same tree (home/cache/workspaces)."""

    @property
    def given_archive(self) -> Path:
        """The tar the agent's workspace is filled from (populate() makes it)."""
        return self.task_dir / "given.tar"


@dataclass(frozen=True, slots=True)
class Change:
    diff: str
    files: tuple[policy.FileChange, ...]
    verdict: policy.ChangesetVerdict
    tree: str
    contents: Mapping[str, bytes | None]
    """The new content of each changed path under `paths.ask_write` (None: deleted), for the owner's yes."""

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
    trusted = task_dir / "trusted"
    task_dir.mkdir(parents=True)
    # The supervisor's clone needs no working tree: the change is read from the sandbox's archive and
    # committed with plumbing. --shared borrows the mirror's objects (never gc'd: gc.auto=0 for every
    # trusted git) instead of copying them.
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
    return Prepared(task_dir, mirror, trusted, base_ref, base_sha, tuple(removed), given,
                    home / "cache" / "workspaces")


async def populate(prepared: Prepared) -> None:
    """Make `prepared.given_archive`: the workspace the sandbox is given, a fresh repo holding only the given
    commit, checked out, as a tar.

    A checkout of thousands of files is the slowest step of a task's start, so each populated workspace is
    kept (root-owned, never mounted anywhere) with its tar, keyed by its commit (a function of the tree) and
    branch; the next task on the same tree links the same tar. The sandbox unpacks it into a filesystem of its
    own, so nothing a sandbox does reaches the cache or another task.
    """
    key = f"{prepared.given}-{hashlib.sha256(prepared.base_branch.encode()).hexdigest()[:8]}"
    cached = prepared.cache / key
    tar = _archive_of(cached)
    if not (cached / ".git" / "HEAD").exists():
        await _fill(prepared, cached)
    if not tar.exists():
        await _tar_directory(cached, tar)
    # Most recently used: kept longest. The tar, not the checkout: touching the directory changes its ctime, and
    # another task's tar reading it at that moment fails with "file changed as we read it".
    os.utime(tar)
    prepared.given_archive.unlink(missing_ok=True)
    try:
        os.link(tar, prepared.given_archive)  # the task's own name for it: an eviction cannot take it away
    except OSError:
        shutil.copyfile(tar, prepared.given_archive)


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


def _last_used(cached: Path) -> float:
    """When a cached workspace was last given to a task: its tar's mtime (populate touches it), or the checkout's
    own until its first tar exists."""
    try:
        return _archive_of(cached).stat().st_mtime
    except FileNotFoundError:
        return cached.stat().st_mtime


def _archive_of(cached: Path) -> Path:
    return cached.parent / f"{cached.name}.tar"


async def _tar_directory(source: Path, dest: Path) -> None:
    """The cached checkout as a tar (written aside, then renamed in), as the sandbox's own tar would read it."""
    # Named per call, not per process: two tasks of one `serve` on the same tree tar it at once, and with a
    # shared name the loser's rename found its file already taken (FileNotFoundError; seen under load).
    handle, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(handle)
    partial = Path(name)
    proc = await asyncio.create_subprocess_exec(
        "tar", "-c", "-f", str(partial), "-C", str(source), "--format=gnu", "--numeric-owner", "--owner=0",
        "--group=0", ".", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise OSError(f"archiving the cached workspace failed: {err.decode(errors='replace').strip()}")
    partial.rename(dest)


def _evict(cache: Path, *, keep: int) -> None:
    """Drop the least recently used cached workspaces (and their tars) beyond `keep`."""
    entries = sorted((p for p in cache.iterdir() if p.is_dir() and not p.name.startswith(".")),
                     key=_last_used, reverse=True)
    for stale in entries[keep:]:
        _archive_of(stale).unlink(missing_ok=True)
        shutil.rmtree(stale, ignore_errors=True)


async def dependency_files(prepared: Prepared, patterns: Sequence[str]) -> dict[str, bytes]:
    """The given tree's files matching the policy's dependency patterns, read from the trusted clone."""
    listing = (await run_git(["ls-tree", "-r", "-z", "--name-only", prepared.given], cwd=prepared.trusted)).stdout
    paths = sorted(p for p in listing.decode("utf-8", "surrogateescape").split("\0")
                   if p and any(fnmatch.fnmatch(p, pattern) for pattern in patterns))
    return {p: (await run_git(["cat-file", "blob", f"{prepared.given}:{p}"], cwd=prepared.trusted)).stdout
            for p in paths}


async def extract(prepared: Prepared, workspace_tar: Path, active: policy.Policy, kind: str) -> Change:
    """The change a stopped sandbox's workspace holds against the base, read from its tar as data.

    Raises archive.ArchiveError (an OSError) when the archive is not a readable tar.
    """
    base = await _ls_tree(prepared, prepared.base_sha)
    given = await _ls_tree(prepared, prepared.given)
    removed = set(prepared.removed)
    gitlinks = {path for path, (mode, _) in base.items() if mode == MODE_SUBMODULE}
    tracked_dirs = {parent for path in given for parent in _parents(path)}

    def skip(path: str, is_dir: bool) -> bool:
        if path in given or (is_dir and path in tracked_dirs):
            return False
        return _ignored(path, is_dir)

    spool = prepared.task_dir / "extract-spool"
    shutil.rmtree(spool, ignore_errors=True)
    try:
        snapshot = await asyncio.to_thread(archive.read, workspace_tar, spool,
                                           known={sha for _, sha in given.values()}, skip=skip)
        reasons = list(snapshot.refused)
        reasons += [f"{path!r} is a nested git repository; submodules cannot be added or changed"
                    for path in snapshot.nested_repositories]
        # What the sandbox never saw stays as it is in the base: read-protected files and submodules.
        final = {path: entry for path, entry in base.items() if path in removed or path in gitlinks}
        carried_dirs = {parent for path in final for parent in _parents(path)}
        planted, written, symlinks = [], [], {}
        for entry in snapshot.entries:
            if entry.path in removed:
                planted.append(entry.path)
            elif entry.path in final or any(p in final for p in _parents(entry.path)) or entry.path in carried_dirs:
                reasons.append(f"{entry.path!r} is in the place of a submodule or a read-protected file")
            else:
                final[entry.path] = (f"{entry.mode:o}", entry.sha)
                if entry.spooled is not None:
                    written.append(entry)
                if entry.target is not None:
                    symlinks[entry.path] = entry.target
        await _store_blobs(prepared, written)
        tree = await _write_tree(prepared, final)
    finally:
        shutil.rmtree(spool, ignore_errors=True)

    cwd = prepared.trusted
    raw = (await run_git(["diff-tree", "-r", "-z", "-M", "--raw", prepared.base_sha, tree], cwd=cwd)).stdout
    numstat = (await run_git(["diff-tree", "-r", "-z", "-M", "--numstat", prepared.base_sha, tree], cwd=cwd)).stdout
    counts = _numstat(numstat)
    files = []
    for status, old_mode, new_mode, _new_blob, path, old_path in _raw(raw):
        mode = int(new_mode, 8) if status != "D" else int(old_mode, 8)
        added, removed_lines = counts.get(path, (0, 0))
        files.append(policy.FileChange(path=path, status=STATUS.get(status, "modified"),  # type: ignore[arg-type]
                                       old_path=old_path, mode=mode, symlink_target=symlinks.get(path),
                                       added_lines=added, removed_lines=removed_lines))
    diff = (await run_git(["diff-tree", "-p", "--binary", "-M", "--no-color", prepared.base_sha, tree], cwd=cwd)
            ).stdout.decode("utf-8", "replace")
    verdict = policy.check_changeset(active, kind, files, len(diff.encode()), symlinks=symlinks)
    reasons += [f"{p}: the sandbox wrote a read-protected file (it was removed before the start)" for p in planted]
    if reasons:
        verdict = policy.ChangesetVerdict(False, (*verdict.reasons, *reasons), verdict.needs_owner)
    contents: dict[str, bytes | None] = {}
    for path in verdict.needs_owner:
        blob = final.get(path)
        contents[path] = None if blob is None else (
            await run_git(["cat-file", "blob", blob[1]], cwd=cwd)).stdout
    return Change(diff=diff, files=tuple(files), verdict=verdict, tree=tree, contents=contents)


def _ignored(path: str, is_dir: bool) -> bool:
    parts = path.split("/")
    for i, part in enumerate(parts):
        directory = is_dir or i < len(parts) - 1
        for pattern in ALWAYS_IGNORED:
            if pattern.endswith("/"):
                if directory and fnmatch.fnmatchcase(part, pattern[:-1]):
                    return True
            elif fnmatch.fnmatchcase(part, pattern):
                return True
    return False


def _parents(path: str) -> Iterator[str]:
    parent = posixpath.dirname(path)
    while parent:
        yield parent
        parent = posixpath.dirname(parent)


async def _ls_tree(prepared: Prepared, treeish: str) -> dict[str, tuple[str, str]]:
    """Every entry of a tree, recursively: path -> (mode, object id)."""
    out = (await run_git(["ls-tree", "-r", "-z", "--full-tree", treeish], cwd=prepared.trusted)).stdout
    entries: dict[str, tuple[str, str]] = {}
    for record in out.decode("utf-8", "surrogateescape").split("\0"):
        if record:
            meta, path = record.split("\t", 1)
            mode, _kind, sha = meta.split(" ")
            entries[path] = (mode, sha)
    return entries


async def _store_blobs(prepared: Prepared, entries: Sequence[archive.Entry]) -> None:
    """Write the spooled new contents into the trusted clone's object store; git's ids must be ours."""
    spooled = {entry.spooled: entry.sha for entry in entries if entry.spooled is not None}
    if not spooled:
        return
    paths = list(spooled)
    out = await run_git(["hash-object", "-w", "--no-filters", "--stdin-paths"], cwd=prepared.trusted,
                        stdin="".join(f"{p}\n" for p in paths).encode())
    ids = out.out.split()
    if ids != [spooled[p] for p in paths]:
        raise OSError("git stored the workspace's files under other ids than their content's")


async def _write_tree(prepared: Prepared, entries: dict[str, tuple[str, str]]) -> str:
    """The tree holding exactly `entries` (path -> (mode, id)), built on a private index."""
    env = {"GIT_INDEX_FILE": str(prepared.task_dir / "extract.index")}
    Path(env["GIT_INDEX_FILE"]).unlink(missing_ok=True)
    lines = b"".join(f"{mode} {sha}\t".encode() + path.encode("utf-8", "surrogateescape") + b"\0"
                     for path, (mode, sha) in sorted(entries.items()))
    if lines:
        await run_git(["update-index", "-z", "--index-info"], cwd=prepared.trusted, env=env, stdin=lines)
        tree = (await run_git(["write-tree"], cwd=prepared.trusted, env=env)).out
    else:
        tree = (await run_git(["mktree"], cwd=prepared.trusted, stdin=b"")).out
    Path(env["GIT_INDEX_FILE"]).unlink(missing_ok=True)
    return tree


async def tree_archive(prepared: Prepared, tree: str, dest: Path) -> None:
    """`tree` of the trusted clone minus the read-protected files, as a tar at `dest` with the given workspace's
    `.git`, for a fresh container.

    The bytes are the blobs' own: unlike `git archive`, no `.gitattributes` of the tree (the agent's to
    write) can leave a file out of the supervisor's test run or rewrite one.
    """
    removed = set(prepared.removed)
    # The tree keeps the read-protected files of the base (their absence is not a change); no sandbox gets them.
    entries = {path: entry for path, entry in (await _ls_tree(prepared, tree)).items() if path not in removed}
    await asyncio.to_thread(_write_tree_archive, prepared, entries, dest)


def _write_tree_archive(prepared: Prepared, entries: dict[str, tuple[str, str]], dest: Path) -> None:
    argv = git_argv(["cat-file", "--batch"])
    with subprocess.Popen(argv, cwd=prepared.trusted, env=git_env(), stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout

        def blobs() -> Iterator[tuple[str, int, bytes]]:
            for path, (mode, sha) in sorted(entries.items()):
                if mode == MODE_SUBMODULE:
                    yield path, int(mode, 8), b""
                    continue
                stdin.write(f"{sha}\n".encode())
                stdin.flush()
                header = stdout.readline().split()
                if len(header) != 3 or header[1] != b"blob":
                    raise OSError(f"the trusted clone has no blob {sha} for {path}")
                data = stdout.read(int(header[2]))
                stdout.read(1)
                yield path, int(mode, 8), data

        try:
            archive.write(dest, blobs(), extra=prepared.given_archive, extra_prefix=".git")
        finally:
            stdin.close()
    if proc.returncode not in (0, None):
        raise OSError(f"git cat-file failed with exit {proc.returncode}")


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


async def change_between(prepared: Prepared, old: str, new: str) -> tuple[str, dict[str, tuple[int, int]]]:
    """The unified diff from commit or tree `old` to `new` in the trusted clone, and its (added, removed) line
    counts per path: a pull request's whole change after a follow-up added a commit to it."""
    cwd = prepared.trusted
    diff = (await run_git(["diff-tree", "-p", "--binary", "-M", "--no-color", old, new], cwd=cwd)
            ).stdout.decode("utf-8", "replace")
    counts = _numstat((await run_git(["diff-tree", "-r", "-z", "-M", "--numstat", old, new], cwd=cwd)).stdout)
    return diff, counts
