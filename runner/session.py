"""The agent's CLI session kept on the trusted side, so that a follow-up can continue it in a new sandbox.

The CLI writes its transcript to `~/.claude/projects/<cwd as a slug>/<session id>.jsonl` in the sandbox, a tmpfs
that goes with the container. Before the container goes, `save` reads that one file out (size-capped, in
base64 chunks through the sandbox's exec), and keeps it beside the task:

    AGENT_RUNNER_HOME/tasks/<task id>/session/<session id>.jsonl

The transcript is the agent's output, so untrusted: it is parsed as JSON lines (each an object, the session's
own id on its records), never executed, and what is kept and later written into a new sandbox is our own
re-serialisation of the parsed values, not the sandbox's bytes. `restore` writes it into the next sandbox's
config directory, where `--resume <id>` finds it. Anything missing, too big or malformed is None with a reason:
the follow-up then starts a new session and says so.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from runner.errors import RunnerError
from runner.sandbox.base import Container, Sandbox

SESSION_CAP_BYTES = 4 * 2**20
# Chunks sized so that one chunk's base64 fits the sandbox's exec output cap (64 KiB) out, and one argv string
# (128 KiB, MAX_ARG_STRLEN) in.
READ_CHUNK = 32 * 1024
WRITE_CHUNK = 64 * 1024
PROJECT_DIR = "/home/agent/.claude/projects/-workspace"  # the CLI's slug of its cwd, /workspace
KEPT_DIR = "session"
_SESSION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_EXEC_TIMEOUT = 60.0

_READ = """
import base64, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NOFOLLOW)
if sys.argv[2] == "size":
    print(os.fstat(fd).st_size)
else:
    os.lseek(fd, int(sys.argv[2]), 0)
    sys.stdout.write(base64.b64encode(os.read(fd, int(sys.argv[3]))).decode())
"""
_WRITE = """
import base64, os, sys
os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)
with open(sys.argv[1], "ab") as out:
    out.write(base64.b64decode(sys.argv[2]))
"""


@dataclass(frozen=True, slots=True)
class Transcript:
    """A parsed session transcript: its id and its records, re-serialised one JSON object a line."""

    session_id: str
    text: str
    records: int


class SessionInvalid(RunnerError, ValueError):
    """Why a transcript cannot be used (missing, too big, not JSON lines of this session)."""


def parse(session_id: str, raw: bytes, *, cap: int = SESSION_CAP_BYTES) -> Transcript:
    """Parse `raw` as the transcript of `session_id`. Raises SessionInvalid saying why it is not one."""
    if not _SESSION_ID.fullmatch(session_id):
        raise SessionInvalid(f"{session_id[:60]!r} is not a session id")
    if len(raw) > cap:
        raise SessionInvalid(f"the transcript is {len(raw)} bytes, over the cap of {cap}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SessionInvalid(f"the transcript is not UTF-8 ({exc.reason})") from None
    lines, ours = [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise SessionInvalid(f"line {number} of the transcript is not JSON ({exc})") from None
        if not isinstance(record, dict):
            raise SessionInvalid(f"line {number} of the transcript is not a JSON object")
        sid = record.get("sessionId")
        if sid is not None and sid != session_id:
            raise SessionInvalid(f"line {number} of the transcript belongs to another session")
        ours += sid == session_id
        lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
    if not ours:
        raise SessionInvalid("the transcript holds no record of its session")
    return Transcript(session_id, "".join(f"{line}\n" for line in lines), len(lines))


async def save(sandbox: Sandbox, box: Container, session_id: str, task_dir: Path) -> Transcript:
    """Read the CLI's transcript of `session_id` out of `box` (call it after every process of the task is
    killed) and keep it in `task_dir`, replacing a session kept before. Raises SessionInvalid."""
    if not _SESSION_ID.fullmatch(session_id):
        raise SessionInvalid(f"{session_id[:60]!r} is not a session id")
    path = f"{PROJECT_DIR}/{session_id}.jsonl"
    sized = await sandbox.exec(box, ["python3", "-c", _READ, path, "size"], timeout=_EXEC_TIMEOUT, workdir="/")
    try:
        size = int(sized.output.strip()) if sized.exit_code == 0 else -1
    except ValueError:
        size = -1
    if size < 0:
        raise SessionInvalid("the sandbox holds no transcript of the session")
    if size > SESSION_CAP_BYTES:
        raise SessionInvalid(f"the transcript is {size} bytes, over the cap of {SESSION_CAP_BYTES}")
    raw = bytearray()
    while len(raw) < size:
        got = await sandbox.exec(box, ["python3", "-c", _READ, path, str(len(raw)), str(READ_CHUNK)],
                                 timeout=_EXEC_TIMEOUT, workdir="/")
        try:
            chunk = base64.b64decode(got.output.strip(), validate=True) if got.exit_code == 0 else b""
        except (binascii.Error, ValueError):
            chunk = b""
        if not chunk:
            raise SessionInvalid("the transcript could not be read out of the sandbox")
        raw += chunk
    transcript = parse(session_id, bytes(raw[:size]))
    kept = task_dir / KEPT_DIR
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)
    (kept / f"{session_id}.jsonl").write_text(transcript.text, encoding="utf-8")
    return transcript


def load(task_dir: Path) -> Transcript:
    """The session kept in `task_dir`, parsed again (the file is ours, but parsing costs little and a damaged
    file must not reach the CLI). Raises SessionInvalid."""
    kept = task_dir / KEPT_DIR
    files = sorted(kept.glob("*.jsonl")) if kept.is_dir() else []
    if len(files) != 1:
        raise SessionInvalid("no session was kept for the task" if not files else "more than one session is kept")
    try:
        raw = files[0].read_bytes()
    except OSError as exc:
        raise SessionInvalid(f"the kept session cannot be read ({exc})") from None
    return parse(files[0].stem, raw)


async def restore(sandbox: Sandbox, box: Container, transcript: Transcript) -> None:
    """Write `transcript` into `box`'s CLI config directory, where `--resume <its id>` finds it. Raises
    SessionInvalid when the sandbox refuses it."""
    path = f"{PROJECT_DIR}/{transcript.session_id}.jsonl"
    data = transcript.text.encode("utf-8")
    for start in range(0, len(data), WRITE_CHUNK):
        chunk = base64.b64encode(data[start:start + WRITE_CHUNK]).decode()
        done = await sandbox.exec(box, ["python3", "-c", _WRITE, path, chunk], timeout=_EXEC_TIMEOUT, workdir="/")
        if done.exit_code != 0:
            raise SessionInvalid(f"the session could not be written into the sandbox (exit {done.exit_code}): "
                                 f"{done.output[-200:]!r}")
