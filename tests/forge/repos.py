"""Real git scenarios for the forge tests: a bare origin, the supervisor's trusted clone, plain git."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from runner.gitops import git_env

# Recognisable, so the leak test can look for it (and its Basic-auth encoding) everywhere.
TOKEN = "ghp_CANARYtok3n0000LEAKME1234567890abcd"


def git(*args: str, cwd: Path) -> str:
    """Plain git for setting up scenarios, in the same clean environment as the code under test."""
    result = subprocess.run(["git", *args], cwd=cwd, env=git_env(), capture_output=True, text=True, check=True)
    return result.stdout.strip()


@dataclass
class Repos:
    """A bare origin (`origin.git`, branch main) and the supervisor's trusted clone of it."""

    root: Path
    origin: Path
    clone: Path

    def commit(self, path: str, content: str, message: str = "change", *, branch: str | None = None) -> str:
        """Commit one file in the clone (on `branch`, created from the current HEAD if new); return the SHA."""
        if branch is not None:
            git("checkout", "-q", "-B", branch, cwd=self.clone)
        target = self.clone / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        git("add", path, cwd=self.clone)
        git("commit", "-q", "-m", message, cwd=self.clone)
        return git("rev-parse", "HEAD", cwd=self.clone)

    def head(self, branch: str) -> str | None:
        out = subprocess.run(
            ["git", "--git-dir", str(self.origin), "rev-parse", "--verify", "-q", f"refs/heads/{branch}"],
            env=git_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() or None

    def show(self, ref: str, path: str) -> str:
        return git("--git-dir", str(self.origin), "show", f"{ref}:{path}", cwd=self.root)

    def log(self, ref: str) -> list[str]:
        return git("--git-dir", str(self.origin), "log", "--format=%H %P|%s", ref, cwd=self.root).splitlines()

    def push_direct(self, branch: str) -> None:
        """Move a branch of the origin behind the forge's back (someone else pushing)."""
        git("push", "-q", "--force", str(self.origin), f"HEAD:refs/heads/{branch}", cwd=self.clone)


def make_repos(root: Path) -> Repos:
    """A bare origin with one commit on main (app.py), and the supervisor's clone of it, under `root`."""
    origin = root / "origin.git"
    git("init", "-q", "--bare", "--initial-branch=main", str(origin), cwd=root)
    clone = root / "clone"
    git("clone", "-q", str(origin), str(clone), cwd=root)
    r = Repos(root, origin, clone)
    r.commit("app.py", "def greet():\n    return 'hello'\n", "initial", branch="main")
    git("push", "-q", "origin", "main", cwd=clone)
    return r
