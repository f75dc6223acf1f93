"""Checksummed downloads and archive extraction that cannot write outside its target folder.

``download`` streams to ``<dest>.part`` (resuming an interrupted HTTP download with a Range request when the
server allows it), verifies sha256 and/or md5, and only then renames to ``dest``. A file whose checksum does
not match is moved to ``<dest>.corrupt`` and never returned.

``safe_extract`` checks every member of a tar / tar.gz / zip before writing anything: absolute paths, ``..``
escapes, links pointing outside the target, members reached through a link, and device/FIFO files are
refused with an error naming the member. Tar extraction also uses Python's ``data`` filter where it exists.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
import urllib.parse
import urllib.request
import warnings
import zipfile
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


def _check_through_links(norm: str, links: set[str], archive: Path, name: str) -> None:
    parts = norm.split("/")
    for k in range(1, len(parts)):
        if "/".join(parts[:k]) in links:
            raise UnsafeArchiveError(f"{archive}: member {name!r} is written through the link "
                                     f"{'/'.join(parts[:k])!r}; refusing to extract")


def _check_tar(tf: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    links: set[str] = set()
    for m in members:
        norm = _inside(m.name, archive)
        _check_through_links(norm, links, archive, m.name)
        if m.ischr() or m.isblk() or m.isfifo() or not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device, FIFO or special file; "
                                     "refusing to extract")
        if m.issym():
            # A symlink's target is relative to the link's own folder.
            _inside(posixpath.join(posixpath.dirname(norm), m.linkname), archive,
                    f"symlink {m.name!r} -> {m.linkname!r}; its target")
            links.add(norm)
        elif m.islnk():  # a hard link's target is relative to the archive root
            _inside(m.linkname, archive, f"hard link {m.name!r} -> {m.linkname!r}; its target")
            links.add(norm)
        if m.mode & (stat.S_ISUID | stat.S_ISGID):
            m.mode &= ~(stat.S_ISUID | stat.S_ISGID)
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


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> list[Path]:
    """Extract a tar, tar.gz/bz2/xz or zip ``archive`` into ``target``; returns the extracted paths.

    Every member is checked before anything is written (see the module docstring); one bad member refuses the
    whole archive with :class:`UnsafeArchiveError` naming it.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise FileNotFoundError(f"archive {archive} not found")
    target.mkdir(parents=True, exist_ok=True)
    root = target.resolve()
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = _check_tar(tf, archive)
            if hasattr(tarfile, "data_filter"):
                tf.extractall(root, members=members, filter="data")
            else:  # Python without PEP 706: our own checks above are the guard
                tf.extractall(root, members=members)
            names = [m.name for m in members]
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = _check_zip(zf, archive)
            for info in infos:
                out = root / _inside(info.filename, archive)
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            names = [i.filename for i in infos]
    else:
        raise ValueError(f"{archive} is neither a tar (optionally gz/bz2/xz) nor a zip archive")
    out_paths = [root / posixpath.normpath(n.replace("\\", "/")) for n in names]
    for p in out_paths:  # belt and braces: nothing may have been written outside the target
        if not (p.parent.resolve() / p.name).is_relative_to(root):
            raise UnsafeArchiveError(f"{archive}: {p} resolved outside {root} after extraction")
    return out_paths
