"""faenet.data.download: checksummed (and resumed) downloads, archive extraction that refuses escapes.
No network: file:// URLs and a local HTTP server on 127.0.0.1."""

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from faenet.data.download import ChecksumError, UnsafeArchiveError, download, file_digest, safe_extract

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "src" / "blob.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    return src


def test_download_verifies_sha256_and_md5(tmp_path, source):
    sha, md5 = hashlib.sha256(PAYLOAD).hexdigest(), hashlib.md5(PAYLOAD).hexdigest()
    dest = download(source.as_uri(), tmp_path / "out" / "blob.bin", sha256=sha, md5=md5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert file_digest(dest, "md5") == md5
    source.write_bytes(b"changed")  # a verified existing file is reused without fetching
    assert download(source.as_uri(), dest, md5=md5, progress=False).read_bytes() == PAYLOAD


def test_checksum_mismatch_is_refused_and_set_aside(tmp_path, source):
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(ChecksumError, match=r"md5 is .*expected 0{32}.*blob\.bin\.corrupt"):
        download(source.as_uri(), dest, md5="0" * 32, progress=False)
    assert not dest.exists() and not (tmp_path / "out" / "blob.bin.part").exists()
    assert (tmp_path / "out" / "blob.bin.corrupt").read_bytes() == PAYLOAD
    # A stale file with the wrong checksum is set aside and downloaded again.
    dest.write_bytes(b"stale")
    download(source.as_uri(), dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_bad_arguments(tmp_path, source):
    with pytest.raises(ValueError, match="scheme 'ftp'"):
        download("ftp://example.org/x", tmp_path / "x")
    with pytest.raises(ValueError, match="md5 checksum 'abc'"):
        download(source.as_uri(), tmp_path / "x", md5="abc")
    with pytest.warns(UserWarning, match="unverified"):
        download(source.as_uri(), tmp_path / "x", progress=False)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    served_ranges: list = []

    def do_GET(self):  # noqa: N802 (http.server API)
        rng = self.headers.get("Range")
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        type(self).served_ranges.append(start)
        body = PAYLOAD[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_http_download_resumes_a_partial_file(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "blob.bin"
        (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:300_000])  # an interrupted earlier download
        url = f"http://127.0.0.1:{server.server_address[1]}/blob.bin"
        download(url, dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False)
        assert dest.read_bytes() == PAYLOAD
        assert _RangeHandler.served_ranges == [300_000]
    finally:
        server.shutdown()


def _tar(path, members, mode="w:gz"):
    with tarfile.open(path, mode) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def test_safe_extract_good_archives(tmp_path):
    arc = _tar(tmp_path / "ok.tar.gz", [_file("data/a.txt", b"hello"), _file("data/sub/b.txt"),
                                        _link("data/link", "a.txt")])
    out = safe_extract(arc, tmp_path / "t")
    assert (tmp_path / "t" / "data" / "a.txt").read_bytes() == b"hello"
    assert (tmp_path / "t" / "data" / "link").resolve() == (tmp_path / "t" / "data" / "a.txt").resolve()
    assert len(out) == 3
    z = tmp_path / "ok.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("d/c.txt", b"zip")
    safe_extract(z, tmp_path / "tz")
    assert (tmp_path / "tz" / "d" / "c.txt").read_bytes() == b"zip"


@pytest.mark.parametrize("members,bad", [
    ([_file("ok.txt"), _file("../evil.txt")], "../evil.txt"),
    ([_file("a/../../evil.txt")], "a/../../evil.txt"),
    ([_file("/tmp/evil_abs.txt")], "/tmp/evil_abs.txt"),
    ([_link("up", "../../etc/passwd")], "up"),
    ([_link("abs", "/etc/passwd")], "abs"),
    ([_link("hard", "../outside", tarfile.LNKTYPE)], "hard"),
    ([_link("d", "sub"), _file("d/x.txt")], "d/x.txt"),
])
def test_safe_extract_refuses_escapes(tmp_path, members, bad):
    arc = _tar(tmp_path / "bad.tar", members, mode="w")
    target = tmp_path / "t"
    with pytest.raises(UnsafeArchiveError, match=bad.replace(".", r"\.")):
        safe_extract(arc, target)
    assert not list(target.rglob("*"))  # refused before anything was written
    assert not (tmp_path / "evil.txt").exists()


def test_safe_extract_refuses_devices_and_bad_zip(tmp_path):
    dev = tarfile.TarInfo("dev/null")
    dev.type = tarfile.CHRTYPE
    with pytest.raises(UnsafeArchiveError, match="dev/null.*device"):
        safe_extract(_tar(tmp_path / "dev.tar", [(dev, None)], mode="w"), tmp_path / "t")
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../zip_evil.txt", b"x")
    with pytest.raises(UnsafeArchiveError, match=r"\.\./zip_evil\.txt"):
        safe_extract(z, tmp_path / "tz")
    assert not (tmp_path / "zip_evil.txt").exists()
    (tmp_path / "plain.bin").write_bytes(b"neither")
    with pytest.raises(ValueError, match="neither a tar"):
        safe_extract(tmp_path / "plain.bin", tmp_path / "t2")


def _snapshot(folder):
    """Every path under ``folder`` (links not followed): what a refused extraction must leave unchanged."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# Link chains whose every target is "inside" as text but not once the earlier links are followed.
@pytest.mark.parametrize("members,bad", [
    # a -> . ; b -> a/.. is the target's parent; c -> b/.. two levels up; then a file through c.
    ([_file("ok.txt"), _link("a", "."), _link("b", "a/.."), _link("c", "b/.."), _file("c/escape.txt")],
     "symlink 'b' -> 'a/..'"),
    # a link to a link to a link that leaves the target.
    ([_link("l1", "."), _link("l2", "l1/sub/.."), _link("l3", "l2/../x"), _file("ok.txt")], "symlink 'l3'"),
    # nested: a folder link, then a link that climbs out through it.
    ([_file("d/f.txt"), _link("d/up", ".."), _link("d/out", "up/../elsewhere")], "symlink 'd/out'"),
    # a -> b/.. is checked while b does not exist; b -> c, c -> . then make a the target's parent.
    ([_link("a", "b/.."), _link("c", "."), _link("b", "c")], "symlink 'a' -> 'b/..', once the whole archive"),
    # a hard link whose target text is inside but goes through a symlink to the parent.
    ([_link("a", "."), _link("h", "a/../outside.txt", tarfile.LNKTYPE)], "hard link 'h'"),
    # a hard link to something that is not a file of this archive (a file outside, a folder, nothing).
    ([_file("d/x.txt"), _link("h", "d", tarfile.LNKTYPE)], "hard link 'h' -> 'd' does not point at a regular"),
    ([_link("h", "missing.txt", tarfile.LNKTYPE)], "hard link 'h' -> 'missing.txt' does not point"),
    # absolute targets, for symlinks and hard links, and a chain ending in one.
    ([_file("ok.txt"), _link("abs", "/tmp")], "symlink 'abs' -> '/tmp'"),
    ([_link("habs", "/etc/hostname", tarfile.LNKTYPE)], "hard link 'habs'"),
    # a loop: the kernel gives ELOOP, we refuse.
    ([_link("p", "q"), _link("q", "p")], "symlink"),
    # a file written over a link (opening it would write wherever the link points), or under a file.
    ([_link("l", "sub/f"), _file("l", b"overwrite")], "written through the link 'l'"),
    ([_file("f"), _file("f/x")], "written through the file 'f'"),
])
def test_safe_extract_refuses_link_chains_before_writing(tmp_path, members, bad):
    arc = _tar(tmp_path / "chain.tar", members, mode="w")
    target = tmp_path / "deep" / "t"
    target.mkdir(parents=True)
    (target / "kept.txt").write_bytes(b"before")
    before = _snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError, match=bad.replace(".", r"\.").replace("(", r"\(")):
        safe_extract(arc, target)
    assert _snapshot(tmp_path) == before  # nothing new anywhere: not in the target, not above it
    assert (target / "kept.txt").read_bytes() == b"before"


def test_safe_extract_keeps_links_that_stay_inside(tmp_path):
    arc = _tar(tmp_path / "ok.tar", [_file("data/a.txt", b"A"), _link("data/link", "a.txt"),
                                     _link("alias", "data/link"), _link("data/sub/up", ".."),
                                     _link("data/sub/a2", "up/a.txt"),
                                     _link("data/hard", "data/a.txt", tarfile.LNKTYPE)], mode="w")
    target = tmp_path / "t"
    safe_extract(arc, target)
    for name in ("data/a.txt", "data/link", "alias", "data/sub/a2", "data/hard"):
        assert (target / name).read_bytes() == b"A", name
    assert (target / "data" / "hard").stat().st_ino == (target / "data" / "a.txt").stat().st_ino
    assert not list(target.glob(".extract-*"))  # the staging folder is gone
    safe_extract(arc, target)  # extracting again over the same files merges and overwrites
    assert (target / "alias").read_bytes() == b"A"


def test_safe_extract_never_writes_through_an_existing_link_of_the_target(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "t"
    target.mkdir()
    (target / "data").symlink_to(outside)  # left there earlier, by someone else
    arc = _tar(tmp_path / "a.tar", [_file("fine.txt"), _file("data/x.txt")], mode="w")
    with pytest.raises(UnsafeArchiveError, match=r"data already exists as a symlink"):
        safe_extract(arc, target)
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("fine.txt", b"z")
        zf.writestr("data/y.txt", b"z")
    with pytest.raises(UnsafeArchiveError, match=r"data already exists as a symlink"):
        safe_extract(z, target)
    assert not list(outside.iterdir())
    assert sorted(p.name for p in target.iterdir()) == ["data"]  # not even fine.txt was moved in


def test_safe_extract_leaves_the_target_unchanged_when_extraction_fails(tmp_path, monkeypatch):
    arc = _tar(tmp_path / "ok.tar", [_file("a.txt"), _file("b/c.txt")], mode="w")
    target = tmp_path / "t"

    def broken(self, path, *args, **kwargs):  # fails half-way: one file written, then an error
        (Path(path) / "a.txt").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(tarfile.TarFile, "extractall", broken)
    with pytest.raises(OSError, match="disk full"):
        safe_extract(arc, target)
    assert not list(target.iterdir())  # no staging folder and no partial tree left behind
