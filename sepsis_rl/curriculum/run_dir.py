"""The run directory: every stage's output, the progress state that ``--resume`` reads, and the logs.

```
RUN_DIR/config.yaml        the resolved configuration (a resumed run must match it)
RUN_DIR/state.json         completed stages and their outputs, *relative to RUN_DIR* (rewritten atomically)
RUN_DIR/metrics.jsonl      one JSON object per logged event (stage, iteration, metrics)
RUN_DIR/summary.json       per-stage metrics, for people and for the evaluation/serving tools
RUN_DIR/.lock              the live run's PID and host (``run_lock.py``)
RUN_DIR/cohort/ world_model/ sft/model/ bc/model/ rl/model/ rl/checkpoints/iter-NNNNNN/
RUN_DIR/agent/             the final agent, self-contained: model/, world_model/, cohort.json, agent.yaml
```

Every path recorded inside a run folder is relative to it, so the folder can be copied, moved or synced
to object storage and resumed there: a copy continues from *its own* models. The root is a location
(``storage.py``): a path, or a URI whose stage outputs are produced in a local staging folder and
uploaded before ``state.json`` names them (the commit record, written last).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from sepsis_rl import storage


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.location = str(root) if storage.is_uri(root) else str(Path(root).absolute())
        self.remote = storage.is_uri(self.location)
        if self.remote:  # outputs are produced here, then uploaded; the logs are mirrored after each write
            key = hashlib.sha256(self.location.encode()).hexdigest()[:24]
            self.root = storage.cache_root() / "staging" / key
        else:
            self.root = storage.local_path(self.location)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = self._load("state.json")
        self.summary = self._load("summary.json")
        if self.remote and storage.exists(self.uri("metrics.jsonl")):
            (self.root / "metrics.jsonl").write_bytes(storage.read_bytes(self.uri("metrics.jsonl")))

    def _load(self, name: str) -> dict[str, Any]:
        """A run-folder record ({"stages": {}} when absent); a truncated or edited one is a one-line user error."""
        from sepsis_rl.errors import UserError

        loc = self.uri(name)
        if not storage.exists(loc):
            return {"stages": {}}
        try:
            data = json.loads(storage.read_text(loc))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"{loc}: truncated or corrupt JSON ({e}); restore it or start a new run folder") from None
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise UserError(f"{loc}: not a run-folder record (no 'stages' mapping)")
        return data

    def _save(self, name: str, data: Any) -> None:
        storage.write_text(self.uri(name), json.dumps(data, indent=2, default=_jsonable))

    # ---------------------------------------------------------------------------------- places
    def path(self, *parts: str) -> Path:
        """A local path to produce ``parts`` in (the run folder itself, or the staging folder of a URI run)."""
        return self.root.joinpath(*parts)

    def uri(self, *parts: str) -> str:
        """The location of ``parts`` that remote actors read and write (a path, or a URI)."""
        return storage.join(self.location, *parts)

    def relative(self, location: str | os.PathLike) -> str:
        """``location`` relative to the run folder when it lies inside it; an outside input (``--cohort``) stays absolute."""
        s = str(location)
        for base in (self.location, str(self.root)):
            if s == base or s.startswith(base.rstrip("/") + "/"):
                return s[len(base):].strip("/") or "."
        return s

    def publish(self, *parts: str) -> None:
        """Upload a folder produced under ``path(parts)`` to the run's URI (nothing to do for a local run)."""
        if self.remote:
            storage.upload_dir(self.path(*parts), self.uri(*parts))

    def publish_file(self, *parts: str) -> None:
        if self.remote:
            storage.write_bytes(self.uri(*parts), self.path(*parts).read_bytes())

    # ----------------------------------------------------------------------------------- state
    def done(self, stage: str) -> bool:
        return stage in self.state["stages"]

    def output(self, stage: str) -> str:
        """The stage's output location (resolved against this run folder, wherever it now lives)."""
        out = self.state["stages"][stage]["output"]
        return out if storage.is_uri(out) or os.path.isabs(out) else self.uri(out)

    def local(self, stage: str) -> str:
        """The stage's output as a local path (downloaded once per node for a URI run)."""
        out = self.output(stage)
        if self.remote and out.startswith(self.location):
            staged = self.path(self.relative(out))
            if staged.exists():
                return str(staged)
        return storage.local_copy(out)

    def complete(self, stage: str, output: str, metrics: dict[str, Any]) -> None:
        """Record a finished stage (its output already written whole) and its metrics; state.json is the commit."""
        self.summary["stages"][stage] = metrics
        self._save("summary.json", self.summary)
        self.state["stages"][stage] = {"output": self.relative(output), "finished": time.time()}
        self._save("state.json", self.state)

    def set_summary(self, key: str, value: Any) -> None:
        self.summary[key] = value
        self._save("summary.json", self.summary)

    def log(self, stage: str, **metrics: Any) -> None:
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"ts": time.time(), "stage": stage, **metrics}, default=_jsonable) + "\n")
        if self.remote:  # object stores have no append: the whole (small) log is re-put
            storage.write_bytes(self.uri("metrics.jsonl"), (self.root / "metrics.jsonl").read_bytes())
