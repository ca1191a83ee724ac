"""A review task's trusted-side steps: what is reviewed, the agent's findings checked against it, where they go.

runner.review is the pure part (reading and checking findings, rendering them); this module does the git and
forge I/O around it for the supervisor. The sandbox holds one parentless commit (no history), so the change
under review is computed here, from the trusted clone, and given to the agent as fenced data in its prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import policy
from runner import review
from runner.errors import ForgeConflict, ForgeError, TaskError
from runner.forge.base import Forge, ReviewComment
from runner.gitops import run_git
from runner.store import Store
from runner.workspace import Prepared

MAX_DIFF_CHARS = 120_000  # of the change shown to the agent; the forge's own diff decides where comments go
EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"  # git hash-object -t tree /dev/null


@dataclass(frozen=True, slots=True)
class Plan:
    """What one review task reviews: `head` (the workspace's commit) against `base`, and the PR it is for."""

    target: review.ReviewTarget
    head_ref: str | None
    """What workspace.prepare checks out (None: the default branch)."""
    pr: int | None = None
    base_branch: str | None = None


async def plan(forge: Forge | None, prompt: str) -> Plan:
    """The review a task's prompt asks for: a pull request's head (TaskError without a forge to ask), a ref,
    or the default branch's head."""
    target = review.target_of(prompt)
    if target.pr is None:
        return Plan(target, None if target.ref == "HEAD" else target.ref)
    if forge is None:
        raise TaskError(f"a review of pull request #{target.pr} needs a forge; none is configured")
    pr = await forge.get_pr(target.pr)
    return Plan(target, pr.head_sha, pr=pr.number, base_branch=pr.base_branch)


async def change(prepared: Prepared, active: policy.Policy, reviewed: Plan) -> tuple[str, str]:
    """(base SHA, diff) of the change under review: a pull request's head against the merge base with its base
    branch; a ref against its merge base with the default branch, or its parent when it is already on it.
    Files the policy keeps from the agent are left out of the diff as they are out of its workspace."""
    head = prepared.base_sha
    default = (await run_git(["symbolic-ref", "HEAD"], cwd=prepared.mirror)).out
    against = f"refs/heads/{reviewed.base_branch}" if reviewed.base_branch else default
    merge_base = await run_git(["merge-base", against, head], cwd=prepared.mirror, check=False)
    base = merge_base.out if merge_base.returncode == 0 else ""
    if not base or base == head:
        parent = await run_git(["rev-parse", "--verify", "-q", f"{head}^"], cwd=prepared.mirror, check=False)
        base = parent.out if parent.returncode == 0 and parent.out else EMPTY_TREE
    names = (await run_git(["diff", "--name-only", "-z", "--no-renames", base, head],
                           cwd=prepared.trusted)).stdout.decode("utf-8", "surrogateescape").split("\0")
    shown = [f":(literal){n}" for n in names if n and not policy.is_read_protected(active, n)]
    if not shown:
        return base, ""
    diff = (await run_git(["diff", "--no-color", "--no-renames", "-U3", base, head, "--", *shown],
                          cwd=prepared.trusted)).stdout.decode("utf-8", "replace")
    return base, diff


def agent_prompt(prompt: str, diff: str) -> str:
    """The task's words, the change under review (capped) and the answer's shape."""
    shown = diff if len(diff) <= MAX_DIFF_CHARS else diff[:MAX_DIFF_CHARS] + "\n… (diff cut here)\n"
    return f"{prompt}\n\n{review.review_instructions(shown or '(no change: review the code as it is)')}"


async def read(prepared: Prepared, summary: str, *, base_sha: str, pr: int | None) -> review.Review:
    """The agent's last message read as a review: each finding checked against the tree the sandbox was given
    (read-protected files are not in it), its files' line counts read from the trusted clone."""
    prose, verdict, found, problem = review.candidates(summary)
    lines: dict[str, int | None] = {}
    wanted = review.wanted_paths(found)
    if wanted:
        listing = (await run_git(["ls-tree", "-r", "-z", "--full-tree", prepared.given],
                                 cwd=prepared.trusted)).stdout.decode("utf-8", "surrogateescape")
        modes = {}
        for entry in filter(None, listing.split("\0")):
            meta, _, path = entry.partition("\t")
            modes[path] = meta.split(" ")[0]
        for path in wanted:
            if modes.get(path) not in ("100644", "100755"):
                continue  # not a regular file of the tree: a symlink, a submodule, absent
            blob = await run_git(["cat-file", "blob", f"{prepared.given}:{path}"], cwd=prepared.trusted)
            lines[path] = review.line_count(blob.stdout)
    kept, dropped, count = review.validate(found, lines)
    return review.Review(summary=prose, findings=kept, dropped=dropped, dropped_count=count, verdict=verdict,
                         problem=problem, head_sha=prepared.base_sha, base_sha=base_sha, pr=pr)


async def post(forge: Forge, checked: review.Review, diff: str) -> review.Review:
    """Post the review on its pull request: findings on lines the diff shows as line comments, the others in
    its body. A forge that refuses the line comments (its diff is not quite ours: GitHub follows renames, we do
    not) gets the review once more with every finding in the body, so the owner's review is never lost for
    a placement. The result says where it went, or why it did not."""
    assert checked.pr is not None
    shown = review.diff_lines(diff)
    on = [f for f in checked.findings if f.line in shown.get(f.path, frozenset())]
    off = [f for f in checked.findings if f not in on]
    refused = ""
    try:
        posted = await forge.post_review(checked.pr, commit_sha=checked.head_sha,
                                         body=review.markdown_body(checked, off),
                                         comments=[ReviewComment(f.path, f.line, review.markdown_comment(f))
                                                   for f in on])
    except ForgeConflict as exc:  # the head moved: a review of it would be of code nobody reviewed
        return replace(checked, posted=f"not posted on PR #{checked.pr}: {exc}")
    except ForgeError as exc:
        if not on:
            return replace(checked, posted=f"not posted on PR #{checked.pr}: {exc}")
        refused = f" (its line comments were refused: {str(exc)[:200]}; all {len(checked.findings)} are in the body)"
        try:
            posted = await forge.post_review(checked.pr, commit_sha=checked.head_sha,
                                             body=review.markdown_body(checked, checked.findings, where=""))
        except ForgeError as again:
            return replace(checked, posted=f"not posted on PR #{checked.pr}: {again}")
        on = []
    return replace(checked, posted=f"posted on PR #{checked.pr} with {len(on)} line comment"
                                   f"{'s' if len(on) != 1 else ''}{refused}: {posted.url}")


async def conclude(forge: Forge | None, store: Store, task_id: str, prepared: Prepared, summary: str,
                   reviewed: Plan, base_sha: str, diff: str) -> review.Review:
    """Read, check, audit and (for a pull request) post the agent's review; what the task's result holds."""
    checked = await read(prepared, summary, base_sha=base_sha, pr=reviewed.pr)
    if checked.dropped_count:
        await store.audit(task_id, "supervisor", "review_findings_dropped", {
            "count": checked.dropped_count, "kept": len(checked.findings),
            "dropped": [{"index": d.index, "path": d.path, "reason": d.reason} for d in checked.dropped]})
    if checked.pr is not None and forge is not None:
        checked = await post(forge, checked, diff)
        await store.audit(task_id, "supervisor", "review_posted", {
            "pr": checked.pr, "findings": len(checked.findings), "outcome": checked.posted[:300]})
    return checked


def reason(checked: review.Review) -> str:
    """The task's one-line reason: how many findings, how many dropped, where they went."""
    words = f"review: {len(checked.findings)} finding{'s' if len(checked.findings) != 1 else ''}"
    if checked.dropped_count:
        words += f", {checked.dropped_count} dropped as invalid"
    if checked.problem:
        words += f" ({checked.problem})"
    return f"{words}; {checked.posted}" if checked.posted else words
