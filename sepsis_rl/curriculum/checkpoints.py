"""RL checkpoints: the last K kept, each verified by a manifest written last, the newest good one resumed.

```
rl/checkpoints/iter-000004/rank0.pt ... rank<N-1>.pt   each rank's state (``learner/state.py``)
rl/checkpoints/iter-000004/client.json                 iteration, history, config (the driver's)
rl/checkpoints/iter-000004/manifest.json               size and SHA-256 of every file above, written last
```

A checkpoint without a manifest is incomplete; one whose files do not match it is corrupt: ``--resume``
takes the newest checkpoint that verifies and warns about each one it skips. On a local or shared
filesystem the ranks write into ``.iter-NNNNNN.tmp`` and the folder is renamed into place after the
manifest; on object storage (no rename) they write in place and the manifest is the commit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from sepsis_rl import storage

log = logging.getLogger(__name__)
NAME = re.compile(r"^iter-(\d{6})$")


class CheckpointError(ValueError):
    """A checkpoint is incomplete or does not match its manifest."""


def _file_record(name: str, data: bytes) -> dict[str, Any]:
    return {"file": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@dataclass
class CheckpointStore:
    root: str  # location of rl/checkpoints (a path or a URI)
    keep: int = 2

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")

    def name(self, iteration: int) -> str:
        return f"iter-{iteration:06d}"

    def list(self) -> list[tuple[int, str]]:
        """(iteration, location) of committed-looking checkpoints, newest first."""
        out = [(int(m.group(1)), storage.join(self.root, n)) for n in storage.list_dir(self.root) if (m := NAME.match(n))]
        return sorted(out, reverse=True)

    def save(self, iteration: int, write_ranks: Callable[[str], list[dict[str, Any]]], client: dict[str, Any]) -> str:
        """``write_ranks(location)`` writes every rank's file there and returns their records; then the
        client state, then the manifest (the commit); then checkpoints beyond the last ``keep`` go."""
        final = storage.join(self.root, self.name(iteration))
        local = not storage.is_uri(self.root)
        work = storage.join(self.root, f".{self.name(iteration)}.tmp") if local else final
        storage.delete(work)
        records = list(write_ranks(work))
        data = json.dumps(client, default=str).encode()
        storage.write_bytes(storage.join(work, "client.json"), data)
        records.append(_file_record("client.json", data))
        storage.write_text(storage.join(work, "manifest.json"), json.dumps({"iteration": iteration, "files": records}, indent=1))
        if local:
            storage.delete(final)
            os.rename(storage.local_path(work), storage.local_path(final))
        self.prune()
        return final

    def prune(self) -> None:
        for _, loc in self.list()[self.keep:]:
            storage.delete(loc)

    def verify(self, location: str) -> dict[str, Any]:
        """The checkpoint's client state, if every file matches the manifest; else CheckpointError."""
        mloc = storage.join(location, "manifest.json")
        if not storage.exists(mloc):
            raise CheckpointError(f"{location} has no manifest.json (incomplete)")
        try:
            manifest = json.loads(storage.read_text(mloc))
            files = {r["file"]: r for r in manifest["files"]}
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{mloc} is unreadable: {e}") from None
        for name, rec in files.items():
            loc = storage.join(location, name)
            if not storage.exists(loc):
                raise CheckpointError(f"{loc} is missing")
            data = storage.read_bytes(loc)
            if len(data) != rec["size"] or hashlib.sha256(data).hexdigest() != rec["sha256"]:
                raise CheckpointError(f"{loc} does not match its manifest ({len(data)} bytes, expected {rec['size']})")
        if "client.json" not in files:
            raise CheckpointError(f"{location} has no client state")
        return dict(json.loads(storage.read_text(storage.join(location, "client.json"))))

    def resume(self, restore: Callable[[str], None]) -> tuple[str, dict[str, Any]] | None:
        """Restore the newest checkpoint that verifies and loads; warn about each one skipped; None if none does."""
        for _, loc in self.list():
            try:
                client = self.verify(loc)
                restore(loc)
            except Exception as e:  # noqa: BLE001 - corrupt, truncated or refused by the safe loader: try the previous one
                log.warning("checkpoint %s is unusable (%s): falling back to the previous one", loc, _one_line(e))
                continue
            return loc, client
        return None


def _one_line(e: BaseException) -> str:
    e = getattr(e, "cause", None) or e  # a Ray task error carries the rank's own exception
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
