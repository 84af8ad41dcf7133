"""One storage layer for run folders: a local or shared filesystem path, or a cloud URI (``s3://``, ``gs://``, ...).

Like Ray Train's ``storage_path``: on more than one node nothing may assume a disk shared with the driver,
so every artifact a remote actor reads or writes is named by a *location* (a path or a URI) and goes
through here.

- **Local paths** keep POSIX semantics: a folder is written into a temporary sibling and renamed into
  place (``atomic_dir``), a file is written to a temporary name and ``os.replace``d.
- **URIs** (any ``pyarrow.fs`` filesystem) have object-store semantics: no rename, no append, no lock;
  a "folder" is a key prefix. Writers therefore *stage locally and upload*: files are uploaded one by
  one, and a folder counts as present only once a commit record that names it is written *last*
  (the run's ``state.json`` for stage outputs, a checkpoint's ``manifest.json`` for checkpoints). A
  single object is written in one PUT, which object stores make visible atomically. Readers download a
  folder once per node into a cache (``local_copy``); committed folders are immutable, so the cache
  key is the location itself.

``SEPSIS_RL_NODE_LOCAL_ROOT`` (test hook): when set in a process, every local path it resolves through
this module is taken inside that directory, as on a node whose filesystem is not the driver's. The
two-node test sets it in one node's environment to make a run folder invisible from that node.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

NODE_ROOT_ENV = "SEPSIS_RL_NODE_LOCAL_ROOT"


def is_uri(location: str | os.PathLike) -> bool:
    """``s3://b/k``, ``gs://b/k``, ``file:///x``: anything with a scheme; a plain or relative path is not."""
    s = str(location)
    return "://" in s and not s.startswith("/")


def local_path(location: str | os.PathLike) -> Path:
    """A local path as this process sees it (through ``SEPSIS_RL_NODE_LOCAL_ROOT`` when that is set)."""
    root = os.environ.get(NODE_ROOT_ENV)
    if not root:
        return Path(location)
    p = Path(location).absolute()
    return Path(root) / p.relative_to(p.anchor)


def join(location: str, *parts: str) -> str:
    """``location``/parts for a path or a URI."""
    if is_uri(location):
        return "/".join([location.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(location).joinpath(*parts))


def _fs(uri: str):
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(uri)


def cache_root() -> Path:
    return Path(os.environ.get("SEPSIS_RL_CACHE", Path.home() / ".cache" / "sepsis-rl")) / "storage"


# ------------------------------------------------------------------------------------- files
def exists(location: str) -> bool:
    if not is_uri(location):
        return local_path(location).exists()
    from pyarrow import fs as pafs

    fs, path = _fs(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(location: str) -> bytes:
    if not is_uri(location):
        return local_path(location).read_bytes()
    fs, path = _fs(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def read_text(location: str) -> str:
    return read_bytes(location).decode()


def write_bytes(location: str, data: bytes) -> None:
    """Whole or nothing: a temporary name and ``os.replace`` locally, one PUT on an object store."""
    if not is_uri(location):
        p = local_path(location)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, p)
        return
    fs, path = _fs(location)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(location: str, text: str) -> None:
    write_bytes(location, text.encode())


def delete(location: str) -> None:
    """Remove a file or folder if present."""
    if not is_uri(location):
        p = local_path(location)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists():
            p.unlink()
        return
    from pyarrow import fs as pafs

    fs, path = _fs(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def list_dir(location: str) -> list[str]:
    """Names directly inside a folder (empty if absent)."""
    if not is_uri(location):
        p = local_path(location)
        return sorted(x.name for x in p.iterdir()) if p.is_dir() else []
    from pyarrow import fs as pafs

    fs, path = _fs(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return sorted(i.base_name for i in fs.get_file_info(pafs.FileSelector(path)))


# ----------------------------------------------------------------------------------- folders
def upload_dir(local_dir: str | os.PathLike, location: str) -> None:
    """Copy a local folder to ``location`` (replacing what was there). Not atomic on object stores:
    callers commit by writing a record that names the folder after this returns."""
    from pyarrow import fs as pafs

    fs, path = _fs(location)
    delete(location)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(Path(local_dir).absolute()), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download_dir(location: str, local_dir: str | os.PathLike) -> None:
    from pyarrow import fs as pafs

    fs, path = _fs(location)
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(Path(local_dir).absolute()), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())


def local_copy(location: str) -> str:
    """A local path holding ``location``: itself for a path; for a URI a per-node cached download
    (committed folders never change, so one download per node serves every later reader)."""
    if not is_uri(location):
        return str(local_path(location))
    out = cache_root() / hashlib.sha256(location.encode()).hexdigest()[:24]
    if out.exists():
        return str(out)
    if not exists(location):
        raise FileNotFoundError(f"{location} does not exist")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        download_dir(location, tmp)
        os.rename(tmp, out)  # two actors of one node downloading at once: the first rename wins
    except OSError:
        if not out.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


@contextmanager
def writing_dir(location: str) -> Iterator[Path]:
    """Yield a local folder to fill; on a clean exit it becomes ``location`` (renamed locally, uploaded to a URI)."""
    from sepsis_rl.checkpoint import atomic_dir

    if not is_uri(location):
        with atomic_dir(local_path(location)) as tmp:
            yield tmp
        return
    tmp = Path(tempfile.mkdtemp(prefix="sepsis-rl-upload-"))
    try:
        yield tmp
        upload_dir(tmp, location)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def produce_dir(location: str, writer: Callable[[Path], object]) -> None:
    """``writer(path)`` writes a whole folder (atomically, itself) at ``path``; for a URI into a local
    temporary folder that is then uploaded to ``location``."""
    if not is_uri(location):
        writer(local_path(location))
        return
    tmp = Path(tempfile.mkdtemp(prefix="sepsis-rl-upload-"))
    try:
        writer(tmp / "out")
        upload_dir(tmp / "out", location)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
