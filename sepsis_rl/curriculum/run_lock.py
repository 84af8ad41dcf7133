"""An exclusive lock on a run folder: one live run per folder, ``--resume`` or not.

Two runs on one folder overwrite each other's models and resume from each other's half-written
checkpoints, so the second is refused. The lock is ``flock`` on ``RUN_DIR/.lock``: the kernel drops it
when the holder dies however it dies (SIGKILL included), so a stale lock is taken over simply by locking
again; the file's content (PID, host, start time) is only there to name the holder in the refusal.

A URI run folder (object storage) has no locks: the lock is then taken on the local staging folder
(same machine) and an advisory ``.lock`` object names the holder; a lock object left by another host is
refused (its liveness cannot be checked from here) until someone removes it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from sepsis_rl import storage

log = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    """Another live run holds the run folder."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(text: str) -> dict[str, Any]:
    try:
        return dict(json.loads(text))
    except (ValueError, TypeError):
        return {}


class RunLock:
    def __init__(self, local_dir: Path, location: str):
        self.file = local_dir / ".lock"
        self.location = location
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        self.file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise RunLockedError(f"{self.location} is in use by another run (PID {h.get('pid', '?')} on host "
                                 f"{h.get('host', '?')}): wait for it to finish or choose another --out") from None
        previous = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
        if previous.get("pid"):
            log.warning("run folder %s: taking over the lock of a run that is gone (PID %s on %s)", self.location,
                        previous["pid"], previous.get("host"))
        self.fd = fd
        if storage.is_uri(self.location):
            self._claim_remote()
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)
        os.fsync(fd)
        return self

    def _claim_remote(self) -> None:
        loc = storage.join(self.location, ".lock")
        if storage.exists(loc):
            h = _holder(storage.read_text(loc))
            if h.get("host") != socket.gethostname() or _pid_alive(int(h.get("pid", 0))):
                fcntl.flock(self.fd, fcntl.LOCK_UN)  # the remote lock object is the other run's: leave it
                os.close(self.fd)
                self.fd = None
                raise RunLockedError(f"{self.location} is in use by another run (PID {h.get('pid', '?')} on host "
                                     f"{h.get('host', '?')}); if that run is gone, delete {loc}")
        storage.write_text(loc, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))

    def release(self) -> None:
        if self.fd is None:
            return
        if storage.is_uri(self.location):
            storage.delete(storage.join(self.location, ".lock"))
        os.ftruncate(self.fd, 0)  # an empty file: the next run starts without a takeover warning
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
