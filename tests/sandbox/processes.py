"""Our own listing of a container's processes, as root in it, independent of the backend under test."""

from __future__ import annotations

import subprocess

__all__ = ["LISTING", "user_processes"]

# Every live process that is not root's, i.e. not the container's init (nor this listing). A process gone while it
# is read (no status, or under gVisor a status without its fields yet or any more) is not alive.
LISTING = ("import os\nfor p in filter(str.isdigit, os.listdir('/proc')):\n"
           "    try:\n"
           "        s = dict(l.split(':\\t', 1) for l in open(f'/proc/{p}/status') if ':\\t' in l)\n"
           "    except OSError:\n"
           "        continue\n"
           "    if 'Uid' not in s or 'State' not in s:\n"
           "        continue\n"
           "    if int(p) != os.getpid() and s['Uid'].split()[0] != '0' and s['State'][0] not in 'ZX':\n"
           "        print(p, s['Name'].strip())\n")
EXEC_NOT_STARTED = 126  # docker exec could not start the command (seen now and then from runsc under load)


def user_processes(container_id: str) -> list[str]:
    """`pid name` of every live process of the sandbox user in the container."""
    for _attempt in range(3):
        done = subprocess.run(["docker", "exec", "-u", "0", container_id, "python3", "-c", LISTING],
                              capture_output=True, text=True)
        if done.returncode != EXEC_NOT_STARTED:
            break
    assert done.returncode == 0, f"the process listing failed (exit {done.returncode}): {done.stderr[-1000:]}"
    return done.stdout.split("\n")[:-1]
