"""One way to name where data lives: a local path or an ``s3://bucket/key`` URI, behind ``pyarrow.fs``.

Why pyarrow.fs: Ray Data and Ray Train already take a ``pyarrow.fs.FileSystem`` for their sinks and
storage, and pyarrow's S3 client reads credentials from the standard AWS chain (``AWS_ACCESS_KEY_ID``
/ ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, profiles, instance roles). The endpoint of an
S3-compatible store (MinIO, Ceph, a local test server) comes from ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, the region from ``AWS_REGION`` / ``AWS_DEFAULT_REGION``.

Object storage has no rename, so writes here never rely on one: a local write goes to a temporary
name and is renamed (atomic on POSIX), an object write is one upload that becomes visible only when
it completes. Either way a reader sees the old content or the new, never half of it. Multi-file
publication (a run of part files) is built on that by the callers: every file first, a marker last.

:func:`location` checks a URI before any work starts: an unknown scheme, a malformed bucket name or a
bucket that does not exist (or cannot be reached with the credentials given) is a
:class:`StorageError` that says what to fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Optional

import pyarrow.fs as pafs

from pipeline.common.io import replace_dir

SCHEMES = ("file", "s3")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_CHUNK = 1 << 20


class StorageError(ValueError):
    """A location that cannot be used: bad URI, unknown scheme, missing bucket, refused credentials."""


def is_uri(value: str | os.PathLike) -> bool:
    """True for ``scheme://...`` strings (a Windows drive letter is not a scheme)."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.\-]+://", str(value)))


def s3_endpoint() -> Optional[str]:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@lru_cache(maxsize=8)
def _s3_filesystem(endpoint: Optional[str], region: str) -> pafs.S3FileSystem:
    kwargs = {"region": region, "allow_bucket_creation": False, "allow_bucket_deletion": False}
    if endpoint:
        kwargs["endpoint_override"] = endpoint
        kwargs["scheme"] = "https" if endpoint.startswith("https") else "http"
    return pafs.S3FileSystem(**kwargs)


def s3_filesystem() -> pafs.S3FileSystem:
    """The S3 client this process uses, configured from the environment (see the module docstring)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return _s3_filesystem(s3_endpoint(), region)


@dataclass(frozen=True)
class Location:
    """A file or directory on a filesystem: ``fs`` plus the path that filesystem understands.

    Local paths are absolute; S3 paths are ``bucket/key`` (no scheme), which is what pyarrow, Ray
    Data's ``filesystem=`` and Ray Train's ``storage_filesystem`` expect.
    """

    fs: pafs.FileSystem
    path: str
    scheme: str = "file"

    # --- naming ---
    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def uri(self) -> str:
        return self.path if self.is_local else f"{self.scheme}://{self.path}"

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, name: str) -> Location:
        return Location(self.fs, f"{self.path.rstrip('/')}/{name}", self.scheme)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.fs, self.path.rstrip("/").rsplit("/", 1)[0] or "/", self.scheme)

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise StorageError(f"{self.uri} is not a local path")
        return Path(self.path)

    def __fspath__(self) -> str:
        """Local locations work wherever a path does (``open``, ``Path(...)``); S3 ones refuse."""
        return str(self.local_path)

    # --- inspecting ---
    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def size(self) -> int:
        return int(self._info().size)

    def list(self, *, recursive: bool = False) -> list[Location]:
        """Files directly under this directory (all below it with ``recursive``), sorted by path."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True))
        return [Location(self.fs, i.path, self.scheme) for i in sorted(infos, key=lambda i: i.path)
                if i.type == pafs.FileType.File]

    def subdirs(self) -> list[Location]:
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False, allow_not_found=True))
        return [Location(self.fs, i.path, self.scheme) for i in sorted(infos, key=lambda i: i.path)
                if i.type == pafs.FileType.Directory]

    # --- reading ---
    def open_input(self):
        """A random-access file (what ``pyarrow.parquet.ParquetFile`` takes)."""
        return self.fs.open_input_file(self.path)

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def read_json(self):
        return json.loads(self.read_text())

    def sha256(self) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(self.path) as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                h.update(chunk)
        return h.hexdigest()

    # --- writing: complete or absent ---
    def write_bytes(self, data: bytes) -> None:
        """Write the whole file so that readers see the old content or the new, never a part."""
        if self.is_local:
            target = Path(self.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        else:  # one upload; S3 makes the object visible only once it is complete
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def write_json(self, data) -> None:
        self.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")

    def append_line(self, line: str) -> None:
        """Append one line: in place on a local disk; on object storage (no appends) the object is
        rewritten whole, which is fine for the small logs this is used for."""
        if self.is_local:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line.rstrip("\n") + "\n")
            return
        old = self.read_bytes() if self.is_file() else b""
        self.write_bytes(old + line.rstrip("\n").encode("utf-8") + b"\n")

    def mkdir(self) -> None:
        """Create a local directory (object stores have no directories: a no-op there)."""
        if self.is_local:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    # --- removing ---
    def delete(self) -> None:
        """Remove a file, or a directory with everything below it; absent is fine."""
        info = self._info()
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)

    # --- whole directories ---
    def upload_dir(self, local_dir: str | Path, *, last: tuple[str, ...] = ()) -> None:
        """Copy a local directory here, files named in ``last`` after all others (a reader that
        looks for them first then never finds a half-copied directory)."""
        local_dir = Path(local_dir)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file())
        files.sort(key=lambda p: p.relative_to(local_dir).as_posix() in last)
        for p in files:
            target = self / p.relative_to(local_dir).as_posix()
            if self.is_local:
                target.write_bytes(p.read_bytes())
            else:
                with open(p, "rb") as src, self.fs.open_output_stream(target.path) as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)

    def download_dir(self, local_dir: str | Path, files: Optional[list[Location]] = None) -> Path:
        """Copy every file below this directory (or only ``files``, which lie below it) into ``local_dir``."""
        local_dir = Path(local_dir)
        base = self.path.rstrip("/") + "/"
        for f in self.list(recursive=True) if files is None else files:
            dest = local_dir / f.path[len(base):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(f.path) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
        return local_dir


def _check_bucket(fs: pafs.FileSystem, bucket: str, uri: str) -> None:
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise StorageError(f"{uri}: {bucket!r} is not a valid S3 bucket name (3-63 characters: a-z, 0-9, '.', '-')")
    where = s3_endpoint() or "AWS S3 (set AWS_ENDPOINT_URL for another S3-compatible store)"
    try:
        info = fs.get_file_info(bucket)
    except OSError as e:
        raise StorageError(
            f"{uri}: cannot reach bucket {bucket!r} at {where}: {e}. Check the endpoint and the credentials "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an AWS profile)"
        ) from None
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{uri}: bucket {bucket!r} does not exist at {where}; create it first")


def location(target: str | os.PathLike | Location, *, check: bool = True) -> Location:
    """Parse a local path, ``file://`` or ``s3://`` URI. With ``check``, an S3 bucket must exist."""
    if isinstance(target, Location):
        return target
    text = str(target)
    if not text:
        raise StorageError("empty path")
    if not is_uri(text):
        return Location(pafs.LocalFileSystem(), str(Path(text).expanduser().resolve()), "file")
    scheme, rest = text.split("://", 1)
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise StorageError(f"{text}: scheme {scheme!r} is not supported; use a local path, file:// or s3://")
    if scheme == "file":
        return Location(pafs.LocalFileSystem(), str(Path(rest).resolve()), "file")
    if rest.startswith("/"):
        raise StorageError(f"{text}: no bucket name (expected s3://bucket/prefix)")
    rest = rest.rstrip("/")
    if "?" in rest or "#" in rest:
        raise StorageError(f"{text}: query strings are not supported; configure S3 through AWS_* environment variables")
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise StorageError(f"{text}: no bucket name (expected s3://bucket/prefix)")
    fs = s3_filesystem()
    if check:
        _check_bucket(fs, bucket, text)
    return Location(fs, rest, "s3")


def check_writable(target: Location) -> None:
    """Write and remove a probe file, so a read-only place fails now, not after the work is done."""
    probe = target / f".medlm-write-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.delete()
    except OSError as e:
        raise StorageError(f"cannot write to {target.uri}: {e}") from None


@contextmanager
def publishing_dir(target: Location, *, last: tuple[str, ...] = ("config.json",)) -> Iterator[Path]:
    """A local directory to fill; when the block ends without an error it replaces ``target`` whole.

    Checkpoints are written by libraries that need a local directory. On a local disk the directory is
    staged beside ``target`` and renamed into place (``pipeline.common.io.replace_dir``). On object
    storage the files named in ``last`` (what a reader checks first: ``config.json`` for a checkpoint)
    are deleted before anything else and uploaded after everything else, so from the first delete
    until the last upload readers refuse ``target`` instead of loading a mix of two versions.
    """
    if target.is_local:
        final = target.local_path
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
        staging.mkdir()
    else:
        staging = Path(tempfile.mkdtemp(prefix="medlm-publish-"))
    try:
        yield staging
        if target.is_local:
            replace_dir(staging, final)
        else:
            for name in last:
                (target / name).delete()
            target.delete()
            target.upload_dir(staging, last=last)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def cache_dir() -> Path:
    return Path(os.environ.get("MEDLM_CACHE_DIR") or Path.home() / ".cache" / "medlm")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def local_copy(target: str | os.PathLike | Location, *, weights: bool = True) -> Path:
    """A local directory with the content of ``target``: itself when local, else a cached download.

    Model weights have to be on a local disk to be loaded; the cache is keyed by the URI and the
    listing (names, sizes, modification times), so a checkpoint rewritten in place is fetched again.
    The copy is made in a temporary directory and renamed, so a killed download is never used.
    ``weights=False`` leaves the weight files out: a tokenizer or a config is all that CPU data tasks
    need of a checkpoint that may weigh gigabytes.
    """
    loc = location(target)
    if loc.is_local:
        return loc.local_path
    if not loc.exists():
        raise StorageError(f"{loc.uri} does not exist")
    files = [f for f in loc.list(recursive=True) if weights or not f.name.endswith(WEIGHT_SUFFIXES)]
    if not files:
        raise StorageError(f"{loc.uri} holds no files")
    infos = loc.fs.get_file_info([f.path for f in files])
    key = hashlib.sha256(
        json.dumps([loc.uri] + [[i.path, i.size, str(i.mtime)] for i in infos]).encode()
    ).hexdigest()[:16]
    dest = cache_dir() / "objects" / (f"{loc.name}-{key}" + ("" if weights else "-noweights"))
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        loc.download_dir(tmp, files)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished the same download first
            if not dest.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
