"""One small storage helper for large intermediate tables and for exports.

Large arrays and tables (prediction dumps, probability matrices) are written as ``.npy`` /
parquet files; flows keep only a :class:`FileRef` (path, checksum, shape) as a Metaflow artifact.
Exports to ``artifacts/`` are atomic: a crashed step leaves no half-written folder that looks
complete.

Where the files live is the *storage root*: a local folder (``.recalign`` by default) or an
``s3://bucket/prefix`` URI — by default the flow's own S3 datastore root when Metaflow runs with
``METAFLOW_DEFAULT_DATASTORE=s3`` (Kubernetes, Argo Workflows, AWS Batch). Steps always write into
a local folder (:meth:`RunStorage.dir`) and call :meth:`RunStorage.publish` on what they wrote;
readers call :func:`localize`. With a local root both are no-ops; with an S3 root ``publish``
uploads and returns a reference by URI, and ``localize`` downloads once per process (checksum
verified), so no task ever depends on another task's local disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from steps.errors import InputError

DEFAULT_STORAGE_ROOT = ".recalign"
STORAGE_ROOT_ENV = "RECALIGN_STORAGE_ROOT"


@dataclass(frozen=True)
class FileRef:
    """A file written by a step: where it is, what it holds, and a checksum to verify it."""

    path: str
    sha256: str
    nbytes: int
    shape: tuple[int, ...] = ()
    dtype: str = ""

    def verify(self) -> None:
        """Raise :class:`InputError` if the file is missing or its checksum changed."""
        p = Path(self.path)
        if not p.exists():
            raise InputError(f"{self.path}: file is missing (it was written by an earlier step)")
        actual = sha256_file(p)
        if actual != self.sha256:
            raise InputError(
                f"{self.path}: checksum mismatch (expected {self.sha256[:12]}…, found {actual[:12]}…); "
                "the file was modified after it was written"
            )


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_remote(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


def storage_root(root: str | os.PathLike | None = None) -> str:
    """Where runs keep their large files: ``root``, ``$RECALIGN_STORAGE_ROOT``, the Metaflow S3
    datastore root (``$METAFLOW_DATASTORE_SYSROOT_S3/recalign`` when the datastore is S3), or
    ``./.recalign``."""
    if root:
        return str(root) if is_remote(root) else str(Path(root).absolute())
    env = os.environ.get(STORAGE_ROOT_ENV)
    if env:
        return env if is_remote(env) else str(Path(env).absolute())
    if os.environ.get("METAFLOW_DEFAULT_DATASTORE") == "s3" and os.environ.get("METAFLOW_DATASTORE_SYSROOT_S3"):
        return os.environ["METAFLOW_DATASTORE_SYSROOT_S3"].rstrip("/") + "/recalign"
    return str(Path(DEFAULT_STORAGE_ROOT).absolute())


def _s3_filesystem():
    import pyarrow.fs as pafs

    endpoint = os.environ.get("METAFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    return pafs.S3FileSystem(endpoint_override=endpoint, region=region) if endpoint else pafs.S3FileSystem(region=region)


def _s3_key(uri: str) -> str:
    return str(uri)[len("s3://") :]


def upload(local: str | os.PathLike, uri: str) -> None:
    """Copy a local file or folder to ``s3://...``."""
    import pyarrow.fs as pafs

    pafs.copy_files(str(local), _s3_key(uri), destination_filesystem=_s3_filesystem())


def download(uri: str, local: str | os.PathLike) -> None:
    import pyarrow.fs as pafs

    Path(local).parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(_s3_key(uri), str(local), source_filesystem=_s3_filesystem())


def _cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"recalign-cache-{os.getpid()}"


@dataclass(frozen=True)
class RunStorage:
    """The storage of one flow run: ``<root>/<flow>/<run_id>/...`` (picklable: keep it as an artifact)."""

    root: str
    flow: str
    run_id: str

    @classmethod
    def for_run(cls, flow: str, run_id: str, root: str | os.PathLike | None = None) -> "RunStorage":
        return cls(storage_root(root), flow, str(run_id))

    @property
    def remote(self) -> bool:
        return is_remote(self.root)

    def dir(self, *parts: str) -> Path:
        """A local folder to write into (the final place for a local root; a staging area otherwise)."""
        base = Path(tempfile.gettempdir()) / "recalign-stage" if self.remote else Path(self.root)
        d = base.joinpath(self.flow, self.run_id, *parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def uri(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), self.flow, self.run_id, *parts])

    def cache_dir(self, *parts: str) -> Path:
        """A local folder for data reused across runs (``<root>/<flow>/cache/...`` for a local root;
        a per-machine temporary folder for a remote one — publish what tasks must share)."""
        base = Path(tempfile.gettempdir()) / "recalign-cache-shared" if self.remote else Path(self.root)
        d = base.joinpath(self.flow, "cache", *parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    def publish(self, ref: FileRef) -> FileRef:
        """Make a local file visible to every task: for a remote root, upload it (files written
        under :meth:`dir` keep their relative path; others go under ``files/<checksum>/``)."""
        if not self.remote or is_remote(ref.path):
            return ref
        base = Path(tempfile.gettempdir()) / "recalign-stage" / self.flow / self.run_id
        path = Path(ref.path).absolute()
        try:
            parts = path.relative_to(base).parts
        except ValueError:
            parts = ("files", ref.sha256[:16], path.name)
        uri = self.uri(*parts)
        upload(ref.path, uri)
        return replace(ref, path=uri)


def localize(ref: FileRef) -> FileRef:
    """A reference to a local copy of the file (downloaded once per process, checksum verified)."""
    if not is_remote(ref.path):
        return ref
    local = _cache_dir() / _s3_key(ref.path)
    if not local.exists():
        download(ref.path, local)
        if sha256_file(local) != ref.sha256:
            local.unlink()
            raise InputError(f"{ref.path}: checksum mismatch after download")
    return replace(ref, path=str(local))


def _localize(uri: str, cache: str) -> str:
    """``uri`` itself if local; else its copy under the cache folder ``cache`` (downloaded once)."""
    if not is_remote(uri):
        return uri
    local = _cache_dir() / cache / _s3_key(uri)
    if not local.exists():
        download(uri, local)
    return str(local)


def localize_input(path: str) -> str:
    """A user's input file given as a local path or an ``s3://`` URI, as a local path."""
    return _localize(path, "inputs")


def map_refs(obj, fn):
    """Apply ``fn`` to every :class:`FileRef` inside ``obj`` (dataclasses, dicts, lists, tuples, nested)."""
    if isinstance(obj, FileRef):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_refs(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_refs(v, fn) for v in obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        changes = {f.name: map_refs(getattr(obj, f.name), fn) for f in fields(obj) if f.init}
        return replace(obj, **changes)
    return obj


def localize_tree(uri: str) -> str:
    """A folder given as a local path or an ``s3://`` prefix, as a local folder (downloaded once per process)."""
    return _localize(uri, "trees")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_array(path: str | os.PathLike, array: np.ndarray) -> FileRef:
    """Write ``array`` as ``.npy`` atomically and return its :class:`FileRef`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(array), allow_pickle=False)

    _atomic_write(path, write)
    return FileRef(str(path), sha256_file(path), path.stat().st_size, tuple(array.shape), str(array.dtype))


def load_array(ref: FileRef, mmap: bool = True, verify: bool = False) -> np.ndarray:
    """Load an array written by :func:`save_array` or :class:`ArrayAppender` (memory-mapped by default)."""
    ref = localize(ref)
    if verify:
        ref.verify()
    elif not Path(ref.path).exists():
        raise InputError(f"{ref.path}: file is missing (it was written by an earlier step)")
    if ref.path.endswith(".bin"):
        if int(np.prod(ref.shape)) == 0:
            return np.zeros(ref.shape, dtype=ref.dtype)
        arr = np.memmap(ref.path, dtype=ref.dtype, mode="r", shape=ref.shape)
        return arr if mmap else np.array(arr)
    return np.load(ref.path, mmap_mode="r" if mmap else None, allow_pickle=False)


def read_slice(ref: FileRef, start: int, stop: int) -> np.ndarray:
    """Elements ``start:stop`` (first axis) of an array file, read into fresh memory.

    Unlike slicing a memory map, the pages read are not kept mapped, so streaming through a
    large file keeps the resident set flat. Remote files are downloaded first (:func:`localize`).
    """
    ref = localize(ref)
    if not Path(ref.path).exists():
        raise InputError(f"{ref.path}: file is missing (it was written by an earlier step)")
    if ref.path.endswith(".bin"):
        dtype = np.dtype(ref.dtype)
        stop = min(stop, ref.shape[0])
        count = max(stop - start, 0)
        if count == 0:
            return np.zeros(0, dtype=dtype)
        return np.fromfile(ref.path, dtype=dtype, count=count, offset=start * dtype.itemsize)
    arr = np.load(ref.path, mmap_mode="r", allow_pickle=False)
    return np.array(arr[start:stop])


class ArrayAppender:
    """Write a 1-D array to disk piece by piece (raw ``.bin``), without holding it in memory.

    ``close()`` renames the finished file into place and returns its :class:`FileRef`; a file
    that was never closed keeps its temporary name and is not mistaken for a finished one.
    """

    def __init__(self, path: str | os.PathLike, dtype) -> None:
        self.path = Path(path).with_suffix(".bin")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dtype = np.dtype(dtype)
        self._tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        self._file = open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        self.length = 0

    def append(self, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype).tobytes()
        self._file.write(data)
        self._hash.update(data)
        self.length += len(values)

    def close(self) -> FileRef:
        self._file.close()
        os.replace(self._tmp, self.path)
        return FileRef(str(self.path), self._hash.hexdigest(), self.path.stat().st_size, (self.length,), self.dtype.str)

    def abort(self) -> None:
        self._file.close()
        if self._tmp.exists():
            self._tmp.unlink()


def file_ref(path: str | os.PathLike, shape: tuple[int, ...] = (), dtype: str = "") -> FileRef:
    """A :class:`FileRef` for a file written by other means (parquet, zip)."""
    p = Path(path)
    return FileRef(str(p.absolute()), sha256_file(p), p.stat().st_size, shape, dtype)


@contextlib.contextmanager
def _scratch_dir(tmp: Path) -> Iterator[Path]:
    """Create ``tmp`` and yield it; on an exception in the block it is removed (and the exception re-raised)."""
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_export_dir(final_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``final_dir`` in one rename.

    On an exception the temporary folder is removed and ``final_dir`` is left untouched, so a
    crashed export never looks complete.
    """
    final = Path(final_dir).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    with _scratch_dir(final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")) as tmp:
        yield tmp
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_export(final: str | os.PathLike, staging: str | os.PathLike | None = None, marker: str = "summary.json") -> Iterator[Path]:
    """Yield a folder to fill; on success it becomes ``final``.

    A local ``final`` is replaced in one rename (:func:`atomic_export_dir`). An ``s3://`` ``final``
    is staged locally (``staging``), then uploaded with ``marker`` last, so the marker's presence
    means the export is complete.
    """
    remote = is_remote(final)
    target = Path(staging or tempfile.mkdtemp(prefix="recalign-export-")).absolute() / "export" if remote else Path(final)
    with atomic_export_dir(target) as tmp:
        yield tmp
    if remote:
        held = target / marker
        content = held.read_bytes() if held.exists() else None
        if content is not None:
            held.unlink()
        upload(target, str(final))
        if content is not None:
            held.write_bytes(content)
            upload(held, str(final).rstrip("/") + "/" + marker)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link ``src`` to ``dst`` (same file system) or copy it."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary folder inside ``out_dir`` to write a step's outputs into; on
    success each of its entries is moved into ``out_dir`` (replacing an entry of the same name),
    on an exception the temporary folder is removed. So a failed loader leaves no final-named
    file that looks complete, and nothing else in ``out_dir`` is touched. FileRefs made inside
    the temporary folder are moved with :func:`rebase_refs`."""
    out = Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    with _scratch_dir(out / f".partial-{uuid.uuid4().hex}") as tmp:
        yield tmp
    try:
        for entry in sorted(tmp.iterdir()):
            dst = out / entry.name
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            os.replace(entry, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def rebase_refs(obj, old_dir: str | os.PathLike, new_dir: str | os.PathLike):
    """``obj`` with every :class:`FileRef` under ``old_dir`` pointing at the same relative path
    under ``new_dir`` (see :func:`staged_dir`)."""
    old, new = Path(old_dir).absolute(), Path(new_dir).absolute()

    def move(ref: FileRef) -> FileRef:
        p = Path(ref.path).absolute()
        try:
            return replace(ref, path=str(new / p.relative_to(old)))
        except ValueError:
            return ref

    return map_refs(obj, move)
