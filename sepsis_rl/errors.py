"""User errors as one line, wherever they are raised: in the CLI process or inside a Ray actor.

A user's mistake (a corrupt file, an unwritable folder, a model that does not load) must reach them as
one line naming the file and what is wrong, not as an actor traceback or a retry count. Two tools:

* checks the drivers run *before* starting actors (``check_writable``, ``check_llm_dir``), so the common
  mistakes fail in a second with the file's name instead of after actors died and were retried;
* ``user_error`` unwraps what Ray raises (``RayTaskError`` carries the actor's exception as ``cause``) so a
  user error raised inside an actor is re-raised in the driver as itself.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class UserError(ValueError):
    """Bad user input outside the cohort format (output folders, model folders). The CLI exits with 2."""


def user_error(e: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The user error (one of ``kinds``) behind ``e``, unwrapping Ray's task-error wrappers; None if it is not one."""
    from ray.exceptions import RayTaskError

    seen = 0
    while isinstance(e, RayTaskError) and getattr(e, "cause", None) is not None and seen < 8:
        e, seen = e.cause, seen + 1
    if isinstance(e, RayTaskError):  # a wrapper without its cause: not something we can phrase
        return None
    return e if isinstance(e, kinds) else None


def one_line(e: BaseException) -> str:
    """The message of ``e`` on one line (messages of pandas/pyarrow/safetensors sometimes span several)."""
    text = str(e)
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    return " ".join(text.split())


def check_writable(out: str | os.PathLike, what: str = "output") -> None:
    """Refuse, before any work, an output path whose nearest existing ancestor is not a writable folder."""
    path = Path(out).absolute()
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{out}: cannot create the {what} here: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or _readonly_fs(parent):
        raise UserError(f"{out}: cannot create the {what} here: {parent} is not writable")


def _readonly_fs(folder: Path) -> bool:
    """True on read-only or pseudo file systems (/proc, /sys), where ``os.access`` says yes even to root."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return True
    return bool(st.f_flag & os.ST_RDONLY) or str(folder).startswith(("/proc", "/sys"))


def check_llm_dir(model_dir: str | os.PathLike) -> None:
    """A Hugging Face model folder whose config parses and whose safetensors files are complete.

    safetensors' header check catches truncated files without reading the weights (milliseconds).
    """
    from safetensors import safe_open

    folder = Path(model_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: LLM folder does not exist")
    config = folder / "config.json"
    try:
        json.loads(config.read_text())
    except FileNotFoundError:
        raise UserError(f"{folder}: not a Hugging Face model folder (no config.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{config}: unreadable JSON: {one_line(e)}") from None
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise UserError(f"{folder}: no *.safetensors weights (pickled .bin weights are not loaded)")
    for w in weights:
        try:
            with safe_open(str(w), "pt") as f:
                f.keys()
        except Exception as e:  # SafetensorError, OSError: truncated, corrupt or unreadable
            raise UserError(f"{w}: corrupt or truncated weights: {one_line(e)}") from None
