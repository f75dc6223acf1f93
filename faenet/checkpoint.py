"""Checkpoint files: atomic writes, loads that never run code, and resume that survives a corrupt file.

- :func:`save_checkpoint` writes a temporary file in the same folder, flushes and fsyncs it, then
  ``os.replace``-s it over the checkpoint and fsyncs the folder: a crash at any point leaves either the old
  or the new checkpoint, never a partial one. With ``keep_prev`` the checkpoint it replaces stays as
  ``<name>.prev`` (a hard link, or a copy), made before the new one takes its place.
- :func:`load_checkpoint` is ``torch.load(weights_only=True)``: tensors, dicts, lists, tuples and plain
  types only. A file that asks for anything else (a pickled payload, a class, a numpy array) is refused
  *before* anything in it runs (:class:`UnsafeCheckpointError`); a truncated, empty, CRC-mismatching or
  otherwise unreadable file raises :class:`CorruptCheckpointError`. Both name the file and say what to do.
  An intact file (zip CRCs match, or not a zip) that the weights-only unpickler refuses counts as unsafe:
  a foreign file cannot be told from a crafted one.
- :func:`resume_checkpoint` is for resuming: a corrupt checkpoint is set aside (renamed to
  ``<name>.corrupt-<timestamp>-<pid>``, with a warning naming it) and ``<name>.prev`` is tried, then nothing
  (start afresh). An unsafe file is *not* set aside and training does not start: refusing with an error is
  the safe default, because silently starting afresh would hide that someone planted a file where
  checkpoints live (and the next save would destroy the evidence).

What the project stores must therefore be weights-only loadable: state dicts, plain containers, and RNG
states in plain form (:func:`rng_state` / :func:`set_rng_state`).
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import tempfile
import time
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointLoadError", "CorruptCheckpointError", "UnsafeCheckpointError", "link_or_copy",
           "load_checkpoint", "prev_path", "remove_checkpoint", "resume_checkpoint", "rng_state", "save_checkpoint",
           "set_rng_state"]


class CheckpointLoadError(RuntimeError):
    """A checkpoint file could not be loaded; the message names the file and the fix."""

    def __init__(self, path: Path, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason  # what torch said, in one line


class CorruptCheckpointError(CheckpointLoadError):
    """Truncated, empty or unreadable file (e.g. a crash while it was written by an older, non-atomic writer)."""


class UnsafeCheckpointError(CheckpointLoadError):
    """The file needs more than tensors and plain types to load: a pickled payload, or not our checkpoint."""


def prev_path(path: Path) -> Path:
    """Where :func:`save_checkpoint` keeps the previous checkpoint of ``path``."""
    return path.with_name(path.name + ".prev")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows): the rename is what we can do
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_checkpoint(obj: Any, path: str | os.PathLike, keep_prev: bool = True) -> None:
    """Write ``obj`` with ``torch.save`` to ``path`` atomically (module docstring).

    The temporary file (``.<name>.tmp-*`` in the same folder) is removed if writing fails; a kill leaves at
    most that temporary file behind, never a partial ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if keep_prev and path.exists():
            link_or_copy(path, prev_path(path))  # before the new one takes its place: `path` stays valid throughout
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Make ``dst`` the same file as ``src``: a hard link (no second copy on disk), or a copy where the filesystem
    has none (or ``dst`` is on another one). Atomic: ``dst`` is the old file or the new one, never a partial one;
    its folder is created. The link shares ``src``'s bytes, so neither may be rewritten in place (every writer
    here replaces files instead, see :func:`save_checkpoint`)."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: file to link to {dst} is missing")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link-tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # no hard links on this filesystem, or another filesystem
            shutil.copyfile(src, tmp)
            _fsync_file(tmp)
        os.replace(tmp, dst)
        _fsync_dir(dst.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _torch_reason(err: BaseException) -> str:
    """The one informative line of torch's long weights-only message (which global or opcode it refused)."""
    text = str(err)
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|\Z)", text, re.S) or re.search(
        r"(Trying to [^\n]+)", text)
    line = " ".join((m.group(1) if m else text).split())
    line = line.split(". Please")[0].rstrip(".")  # drop torch's advice to allow-list the global
    return line[:300] + ("..." if len(line) > 300 else "")


def _crc_mismatch(path: Path) -> str | None:
    """The first member of a torch zip file whose CRC-32 does not match, else ``None``.

    ``torch.load`` does not check CRCs: a flipped bit in a tensor loads silently, one in ``data.pkl`` looks
    like a refused pickle. Checking first tells corruption (set aside, resume from ``.prev``) from a file
    that is intact but not loadable weights-only (refused).
    """
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip()
    except Exception:  # not a zip that Python reads (legacy torch format, a plain pickle): torch decides
        return None


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; raises :class:`UnsafeCheckpointError` or
    :class:`CorruptCheckpointError` (both naming ``path``), ``FileNotFoundError`` when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file is missing")
    bad_member = _crc_mismatch(path)
    if bad_member is not None:
        reason = f"{path.stat().st_size} bytes; CRC-32 mismatch in {bad_member}"
        raise CorruptCheckpointError(path, f"{path}: checkpoint is corrupt ({reason}); delete it to start afresh",
                                     reason)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's weights-only unpickler refused a global/opcode before calling anything.
        reason = _torch_reason(err)
        raise UnsafeCheckpointError(path, (
            f"{path}: refusing to load: it needs more than tensors and plain types ({reason}). "
            "It is not a checkpoint this project wrote (those load with weights_only=True), or it carries a "
            "pickled payload; nothing in it was run. Delete it if you did not put it there (or if an older "
            "version of this project wrote it: the run then restarts from its first epoch); load it with "
            "torch.load(weights_only=False) only if you trust its origin."), reason) from None
    except PermissionError:
        raise  # not the file's fault: never set it aside for this
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as err:
        # torch raises these for truncated/empty/garbled files (e.g. `OSError: [Errno 22]` on a cut zip).
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:200]  # torch's first sentence
        reason = f"{path.stat().st_size} bytes; {type(err).__name__}: {first or '-'}"
        raise CorruptCheckpointError(path, f"{path}: checkpoint is corrupt or truncated ({reason}); delete it to "
                                     "start afresh", reason) from None


def resume_checkpoint(path: str | os.PathLike) -> tuple[Any, Path] | None:
    """``(checkpoint, file it came from)`` to resume ``path``, or ``None`` to start afresh.

    ``path`` missing: ``None`` (its ``.prev`` is not used then: deleting a checkpoint means "start afresh").
    ``path`` corrupt: it is renamed to ``<name>.corrupt-<timestamp>-<pid>``, a ``RuntimeWarning`` names both
    files, and ``<name>.prev`` is tried the same way. :class:`UnsafeCheckpointError` propagates: a file that
    would run code is refused, neither set aside nor skipped.
    """
    path = Path(path)
    if not path.is_file():
        return None
    for candidate in (path, prev_path(path)):
        if not candidate.is_file():
            break
        try:
            return load_checkpoint(candidate), candidate
        except CorruptCheckpointError as err:
            aside = candidate.with_name(f"{candidate.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
            os.replace(candidate, aside)
            prev = prev_path(path)
            then = (f"resuming from the previous checkpoint {prev}" if candidate == path and prev.is_file()
                    else "starting afresh")
            warnings.warn(f"{candidate}: checkpoint is corrupt or truncated ({err.reason}); set aside as {aside}; "
                          f"{then}", RuntimeWarning, stacklevel=2)
    return None


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete ``path`` and its ``.prev`` (a finished run's final state holds what a rerun needs)."""
    path = Path(path)
    path.unlink(missing_ok=True)
    prev_path(path).unlink(missing_ok=True)


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch global RNG states as tensors and plain types (weights-only loadable)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {"torch": torch.get_rng_state(),
            "python": {"version": int(version), "internal": [int(v) for v in internal], "gauss_next": gauss_next},
            "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
