"""The run directory: every stage's output, the progress state that ``--resume`` reads, and the logs.

```
RUN_DIR/config.yaml        the resolved configuration (a resumed run must match it)
RUN_DIR/state.json         completed stages and their outputs (rewritten atomically after each stage)
RUN_DIR/metrics.jsonl      one JSON object per logged event (stage, iteration, metrics)
RUN_DIR/summary.json       per-stage metrics, for people and for the evaluation/serving tools
RUN_DIR/cohort/ world_model/ sft/model/ bc/model/ rl/model/ rl/checkpoints/
RUN_DIR/agent/             the final agent: HF checkpoint (model/), world model, agent config
```
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


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


def _read_json(path: Path) -> dict[str, Any]:
    """A run folder's JSON record ({"stages": {}} when absent); a truncated or edited one is a user error."""
    from sepsis_rl.errors import UserError

    if not path.exists():
        return {"stages": {}}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: truncated or corrupt JSON ({e}); restore it or start a new run folder") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
        raise UserError(f"{path}: not a run-folder record (no 'stages' mapping)")
    return data


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.state_file, self.summary_file = self.root / "state.json", self.root / "summary.json"
        self.state: dict[str, Any] = _read_json(self.state_file)
        self.summary: dict[str, Any] = _read_json(self.summary_file)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def done(self, stage: str) -> bool:
        return stage in self.state["stages"]

    def output(self, stage: str) -> str:
        return self.state["stages"][stage]["output"]

    def complete(self, stage: str, output: str, metrics: dict[str, Any]) -> None:
        """Record a finished stage (its output already written atomically) and its metrics."""
        self.summary["stages"][stage] = metrics
        write_json_atomic(self.summary_file, self.summary)
        self.state["stages"][stage] = {"output": str(output), "finished": time.time()}
        write_json_atomic(self.state_file, self.state)

    def set_summary(self, key: str, value: Any) -> None:
        self.summary[key] = value
        write_json_atomic(self.summary_file, self.summary)

    def log(self, stage: str, **metrics: Any) -> None:
        with open(self.root / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"ts": time.time(), "stage": stage, **metrics}, default=_jsonable) + "\n")
