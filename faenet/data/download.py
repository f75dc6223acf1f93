"""Checksummed downloads and archive extraction that cannot write outside its target folder.

``download`` streams to ``<dest>.part`` (resuming an interrupted HTTP download with a Range request when the
server allows it), verifies sha256 and/or md5, and only then renames to ``dest``. A file whose checksum does
not match is moved to ``<dest>.corrupt`` and never returned.

``safe_extract`` checks every member of a tar / tar.gz / zip before writing anything: absolute paths, ``..``
escapes, links pointing outside the target, members reached through a link, and device/FIFO files are
refused with an error naming the member. Link targets are not trusted as text: each member is replayed on
an in-memory tree of the archive (``_Tree``) and every symlink and hard link is resolved through the links
before it (and, at the end, through all of them), as the kernel would, so chains such as ``a -> .``,
``b -> a/..`` are refused. The archive is then extracted into a private folder inside the target and moved
into place only when all of it extracted; Python's ``data`` filter is applied too where it exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import urllib.parse
import urllib.request
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

ALLOWED_SCHEMES = ("http", "https", "file")


class ChecksumError(ValueError):
    """A downloaded file does not have the published checksum."""


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder, or is a device/link trap."""


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (``algorithm``: any ``hashlib`` name, e.g. sha256, md5)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def _expected(sha256: str | None, md5: str | None) -> dict[str, str]:
    out = {}
    for name, value, length in (("sha256", sha256, 64), ("md5", md5, 32)):
        if value is None:
            continue
        v = value.strip().lower()
        if len(v) != length or any(c not in "0123456789abcdef" for c in v):
            raise ValueError(f"{name} checksum {value!r} is not {length} hex digits")
        out[name] = v
    return out


def verify_checksum(path: str | os.PathLike, sha256: str | None = None, md5: str | None = None) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has every given checksum."""
    for algo, want in _expected(sha256, md5).items():
        got = file_digest(path, algo)
        if got != want:
            raise ChecksumError(f"{path}: {algo} is {got}, expected {want}")


def _set_aside(path: Path) -> Path:
    bad = path.with_name(path.name + ".corrupt")
    os.replace(path, bad)
    return bad


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, md5: str | None = None, *,
             progress: bool = True, chunk_size: int = 1 << 20, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` and verify its checksum(s); returns ``dest``.

    - An existing ``dest`` with the right checksum is kept (no network); with a wrong one it is set aside.
    - Streams to ``<dest>.part``; an existing ``.part`` is resumed over HTTP(S) with ``Range`` when the server
      answers 206, else the download restarts.
    - Checksum mismatch: the file goes to ``<dest>.corrupt`` and :class:`ChecksumError` is raised.
    - Without any checksum the file is used unverified, with a warning.
    """
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ALLOWED_SCHEMES:
        raise ValueError(f"URL scheme {scheme!r} of {url!r} is not supported; allowed: {ALLOWED_SCHEMES}")
    want = _expected(sha256, md5)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if not want:
            warnings.warn(f"{dest} exists and no checksum was given: using it unverified", stacklevel=2)
            return dest
        try:
            verify_checksum(dest, sha256, md5)
            return dest
        except ChecksumError:
            _set_aside(dest)
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.exists() and scheme in ("http", "https") else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (scheme checked above)
        status = getattr(resp, "status", None)
        if start and status != 206:  # server ignored the Range: start over
            start = 0
        length = resp.headers.get("Content-Length")
        total = int(length) + start if length and length.isdigit() else None
        with open(part, "ab" if start else "wb") as fh, \
                tqdm(total=total, initial=start, unit="B", unit_scale=True, disable=not progress,
                     desc=dest.name) as bar:
            for block in iter(lambda: resp.read(chunk_size), b""):
                fh.write(block)
                bar.update(len(block))
    if not want:
        warnings.warn(f"{url}: no checksum given, {dest} is unverified", stacklevel=2)
    else:
        try:
            verify_checksum(part, sha256, md5)
        except ChecksumError as err:
            bad = part.with_name(dest.name + ".corrupt")
            os.replace(part, bad)
            raise ChecksumError(f"download of {url} failed verification: {err}; the file was moved to {bad} "
                                "and not used. Delete it and retry; if it fails again the source changed."
                                ) from None
    os.replace(part, dest)
    return dest


# ----------------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------------

def _inside(name: str, archive: Path, what: str = "member") -> str:
    """Normalised relative POSIX path of ``name``, or raise if it is absolute or escapes with ``..``."""
    n = name.replace("\\", "/")
    if n.startswith("/") or (len(n) > 1 and n[1] == ":") or posixpath.isabs(n):
        raise UnsafeArchiveError(f"{archive}: {what} {name!r} has an absolute path; refusing to extract")
    norm = posixpath.normpath(n)
    if norm == ".." or norm.startswith("../"):
        raise UnsafeArchiveError(f"{archive}: {what} {name!r} escapes the target folder with '..'; "
                                 "refusing to extract")
    return norm


class _Tree:
    """The folder tree an archive builds, replayed member by member without touching the disk.

    ``kinds`` maps a normalised relative path ("" = the target) to "dir", "file" or "link"; ``targets`` holds
    each symlink's target text. ``resolve`` follows the symlinks already in the tree the way the kernel
    would, so a member's real destination is known before anything is written: a chain such as
    ``a -> .``, ``b -> a/..`` (really the target's parent) is caught although every text is "inside".
    """

    MAX_HOPS = 40  # the kernel's symlink limit (ELOOP)

    def __init__(self) -> None:
        self.kinds: dict[str, str] = {"": "dir"}
        self.targets: dict[str, str] = {}

    def resolve(self, path: str) -> tuple[str | None, list[str]]:
        """(real path relative to the target, or None if it leaves the target; the links followed)."""
        todo = [c for c in path.split("/") if c not in ("", ".")]
        out: list[str] = []
        via: list[str] = []
        while todo:
            c = todo.pop(0)
            if c == "..":
                if not out:
                    return None, via
                out.pop()
                continue
            out.append(c)
            here = "/".join(out)
            if self.kinds.get(here) == "link":
                via.append(here)
                if len(via) > self.MAX_HOPS:
                    return None, via  # a loop: refuse rather than guess
                target = self.targets[here]
                if target.startswith("/") or posixpath.isabs(target):
                    return None, via
                out.pop()
                todo = [t for t in target.split("/") if t not in ("", ".")] + todo
        return "/".join(out), via

    def blocker(self, norm: str) -> tuple[str, str] | None:
        """(prefix, kind) of the first proper prefix of ``norm`` that is not a folder in the tree (a write
        through a link, or under a file), or None."""
        parts = norm.split("/")
        for k in range(1, len(parts)):
            prefix = "/".join(parts[:k])
            kind = self.kinds.get(prefix, "dir")
            if kind != "dir":
                return prefix, kind
        return None

    def add(self, norm: str, kind: str, target: str = "") -> None:
        parts = norm.split("/")
        for k in range(1, len(parts)):  # tarfile creates missing parent folders
            self.kinds.setdefault("/".join(parts[:k]), "dir")
        self.kinds[norm] = kind
        if kind == "link":
            self.targets[norm] = target
        else:
            self.targets.pop(norm, None)


def _escape(archive: Path, what: str, via: list[str]) -> UnsafeArchiveError:
    chain = f" (through the link(s) {' -> '.join(repr(v) for v in via)})" if via else ""
    return UnsafeArchiveError(f"{archive}: {what} resolves outside the target folder{chain}; refusing to "
                              "extract (nothing was written)")


def _check_tar(tf: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    tree = _Tree()
    for m in members:
        norm = _inside(m.name, archive)
        if m.ischr() or m.isblk() or m.isfifo() or not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device, FIFO or special file; "
                                     "refusing to extract")
        blocked = tree.blocker(norm)
        if blocked is not None:
            prefix, kind = blocked
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is written through the "
                                     f"{'link' if kind == 'link' else 'file'} {prefix!r}; refusing to extract")
        if norm == ".":
            if not m.isdir():
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} would replace the target folder itself; "
                                         "refusing to extract")
            continue
        if tree.kinds.get(norm) == "link" and not m.issym():
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is written through the link {norm!r} "
                                     "extracted before it; refusing to extract")
        if tree.kinds.get(norm) == "dir" and not m.isdir():
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} would replace the folder of the same name "
                                     "extracted before it; refusing to extract")
        if m.issym():
            # A symlink's target is relative to the link's own folder; text first, then through the tree.
            _inside(posixpath.join(posixpath.dirname(norm), m.linkname), archive,
                    f"symlink {m.name!r} -> {m.linkname!r}; its target")
            real, via = tree.resolve(posixpath.join(posixpath.dirname(norm), m.linkname))
            if real is None:
                raise _escape(archive, f"symlink {m.name!r} -> {m.linkname!r}", via)
            tree.add(norm, "link", m.linkname)
        elif m.islnk():  # a hard link's target is relative to the archive root
            _inside(m.linkname, archive, f"hard link {m.name!r} -> {m.linkname!r}; its target")
            real, via = tree.resolve(m.linkname)
            if real is None:
                raise _escape(archive, f"hard link {m.name!r} -> {m.linkname!r}", via)
            if tree.kinds.get(real) != "file":
                raise UnsafeArchiveError(f"{archive}: hard link {m.name!r} -> {m.linkname!r} does not point at a "
                                         "regular file extracted earlier from this archive; refusing to extract")
            tree.add(norm, "file")  # a second name of a file inside the target
        else:
            tree.add(norm, "dir" if m.isdir() else "file")
        if m.mode & (stat.S_ISUID | stat.S_ISGID):
            m.mode &= ~(stat.S_ISUID | stat.S_ISGID)
    # A link checked while a name it goes through did not exist yet can point elsewhere once the archive is
    # complete (``a -> b/..`` written before ``b -> c``, ``c -> .``): check every link against the final tree.
    for name, target in tree.targets.items():
        real, via = tree.resolve(posixpath.join(posixpath.dirname(name), target))
        if real is None:
            raise _escape(archive, f"symlink {name!r} -> {target!r}, once the whole archive is extracted,", via)
    return members


def _check_zip(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    for info in infos:
        _inside(info.filename, archive)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a link or special file; "
                                     "refusing to extract")
    return infos


@contextlib.contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """A private folder inside ``root`` (same file system: moves are renames), removed afterwards whatever
    happens, so a failure half-way through an extraction leaves ``root`` as it was."""
    stage = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _merge(stage: Path, root: Path, archive: Path) -> None:
    """Move the extracted tree from ``stage`` into ``root``, merging into existing real folders.

    Planned first, moved second: an existing symlink (or file) of ``root`` where the archive has a folder is
    refused before anything moves, so nothing is ever written through a link that was already there.
    """
    moves: list[tuple[str, Path]] = []

    def plan(src_dir: str, dst_dir: Path) -> None:
        with os.scandir(src_dir) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                dst = dst_dir / entry.name
                try:
                    st = os.lstat(dst)
                except FileNotFoundError:
                    moves.append((entry.path, dst))
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if stat.S_ISDIR(st.st_mode):  # lstat: a real folder, not a link to one
                        plan(entry.path, dst)
                        continue
                    kind = "symlink" if stat.S_ISLNK(st.st_mode) else "file"
                    raise UnsafeArchiveError(f"{archive}: {dst} already exists as a {kind} where the archive has "
                                             "a folder; refusing to extract through or over it (move it away, "
                                             "or extract into an empty folder)")
                if stat.S_ISDIR(st.st_mode):
                    raise UnsafeArchiveError(f"{archive}: {dst} already exists as a folder where the archive has "
                                             "a file or link; refusing to replace it (move it away, or extract "
                                             "into an empty folder)")
                moves.append((entry.path, dst))  # replaces a file or link, as tar extraction does

    plan(str(stage), root)
    for src, dst in moves:
        os.replace(src, dst)


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> list[Path]:
    """Extract a tar, tar.gz/bz2/xz or zip ``archive`` into ``target``; returns the extracted paths.

    Every member is checked before anything is written (see the module docstring); one bad member refuses the
    whole archive with :class:`UnsafeArchiveError` naming it. The archive is then extracted into a private
    folder inside ``target`` and moved into place only once all of it extracted, so ``target`` holds nothing
    new after any failure.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} not found")
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = _check_tar(tf, archive)
            names = [m.name for m in members]
            with _staging(root) as stage:
                if hasattr(tarfile, "data_filter"):  # a second, independent guard (PEP 706)
                    tf.extractall(stage, members=members, filter="data")
                else:  # Python without PEP 706: our own checks above are the guard
                    tf.extractall(stage, members=members)
                _merge(stage, root, archive)
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = _check_zip(zf, archive)
            names = [i.filename for i in infos]
            with _staging(root) as stage:
                for info in infos:
                    out = stage / _inside(info.filename, archive)
                    if info.is_dir():
                        out.mkdir(parents=True, exist_ok=True)
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                _merge(stage, root, archive)
    else:
        raise ValueError(f"{archive} is neither a tar (optionally gz/bz2/xz) nor a zip archive")
    out_paths = [root / posixpath.normpath(n.replace("\\", "/")) for n in names]
    for p in out_paths:  # belt and braces: nothing may have been written outside the target
        if not (p.parent.resolve() / p.name).is_relative_to(root):
            raise UnsafeArchiveError(f"{archive}: {p} resolved outside {root} after extraction")
    return out_paths
