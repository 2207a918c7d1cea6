"""A chat workspace's files, as the people of the chat see them (the HTTP file routes).

The agent works in the workspace at the same time and, when a command is jailed, as its own
host uid (``agents.jail.jail_uid``): it can create, replace or swap any entry between two of our
system calls. So nothing here trusts a path string. Every access walks from an open descriptor
of the workspace one component at a time with ``O_NOFOLLOW`` (``openat``): a symbolic link
anywhere in the path is refused, never followed, and what a name turned out to be is judged
from the opened descriptor (``fstat``), not from an earlier look at the name. Files are opened
with ``O_NONBLOCK``, so a FIFO the agent swapped in never blocks a worker.

- ``workspace_path_parse(text)``: a request's relative POSIX path → its components, or
  ``WorkspaceFileError("invalid")`` (absolute, ``.``/``..``, empty components, NUL, control
  characters, backslashes, over the length limits).
- ``workspace_files_list(workspace, limit=…)``: the regular files (recursively; symbolic links,
  FIFOs, sockets and devices are left out), walking at most ``limit`` entries.
- ``workspace_file_open(workspace, parts)``: one regular file opened for reading.
- ``workspace_file_write(workspace, parts, chunks, …)``: an upload written atomically (a
  temporary file in the target directory, then ``rename``), size- and quota-bounded, owned by
  the workspace's jail uid like the agent's own files.
- ``workspace_zip_stream(workspace, files)``: the files as one ZIP, produced chunk by chunk
  (``zipfile`` writing to an unseekable sink).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import secrets
import stat
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agents.jail import drops_privileges, hand_over_tree, jail_uid, workspace_usage

MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_NAME_BYTES = 255  # NAME_MAX
MAX_DEPTH = 64  # directories below the workspace that a path, a listing or a ZIP goes into
CHUNK_BYTES = 64 * 1024
UPLOAD_PREFIX = ".upload-"  # temporary files of uploads under way (hidden, removed on failure)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Already compressed: stored as they are in a ZIP (deflating them again only costs CPU).
_STORED_SUFFIXES = frozenset(
    {".zip", ".gz", ".tgz", ".bz2", ".xz", ".zst", ".7z", ".png", ".jpg", ".jpeg", ".gif", ".webp"}
    | {".mp3", ".mp4", ".mov", ".webm", ".ogg", ".pdf", ".docx", ".xlsx", ".pptx", ".whl", ".jar"}
)
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class WorkspaceFileError(Exception):
    """Why a file route cannot do what was asked. ``kind``: ``invalid`` (a malformed path),
    ``missing`` (nothing there), ``unsupported`` (a symbolic link, a directory, a special file, or
    a path through one), ``too_large`` (over the upload limit), ``quota`` (over the workspace
    quota)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class WorkspaceFile:
    path: str  # relative to the workspace, POSIX
    size: int
    modified: dt.datetime  # UTC


@dataclass(frozen=True)
class WorkspaceListing:
    files: list[WorkspaceFile]  # sorted by path
    truncated: bool  # the walk stopped at its entry limit (or at MAX_DEPTH): more files may exist


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------


def _name_problem(name: str) -> str | None:
    if name in ("", ".", ".."):
        return "empty, '.' and '..' path components are not allowed"
    if "\x00" in name:
        return "the path contains a NUL character"
    if "\\" in name:
        return "the path contains a backslash (use '/' between directories)"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "the path contains a control character"
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        return "the path is not valid UTF-8"
    if len(encoded) > MAX_NAME_BYTES:
        return f"a path component is longer than {MAX_NAME_BYTES} bytes"
    return None


def workspace_path_parse(text: str) -> tuple[str, ...]:
    """The components of a relative POSIX path inside the workspace; ``WorkspaceFileError``
    (``invalid``) for anything else. Percent-decoding happened once, in the URL: ``%2e%2e``
    arrives here as ``..`` and is refused like it."""
    if not isinstance(text, str) or not text:
        raise WorkspaceFileError("invalid", "The file path is empty.")
    if text.startswith("/"):
        raise WorkspaceFileError("invalid", "The file path must be relative to the workspace, not absolute.")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise WorkspaceFileError("invalid", f"The file path is longer than {MAX_PATH_BYTES} bytes.")
    parts = tuple(text.split("/"))
    for name in parts:
        problem = _name_problem(name)
        if problem:
            raise WorkspaceFileError("invalid", f"Invalid file path: {problem}.")
    if len(parts) > MAX_DEPTH + 1:
        raise WorkspaceFileError("invalid", f"The file path is more than {MAX_DEPTH} directories deep.")
    return parts


# ------------------------------------------------------------------------------------------------
# Walking descriptors
# ------------------------------------------------------------------------------------------------


def _root_open(workspace: Path) -> int:
    try:
        return os.open(workspace, _DIR_FLAGS)
    except OSError:  # none yet (or, only ever unjailed, not a directory any more)
        raise WorkspaceFileError("missing", "Not found.") from None


def _unsupported(kind_of: str, shown: str) -> WorkspaceFileError:
    return WorkspaceFileError(
        "unsupported", f"{shown} is {kind_of}: only regular files (through real directories) are served."
    )


def _kind_of(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _child_dir_open(parent: int, name: str, shown: str) -> int:
    """``name`` in ``parent`` opened as a directory without following a link."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        raise WorkspaceFileError("missing", "Not found.") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except OSError:
                raise WorkspaceFileError("missing", "Not found.") from None
            if stat.S_ISREG(st.st_mode):
                raise WorkspaceFileError("unsupported", f"{shown} is a file, not a directory.") from None
            raise _unsupported(_kind_of(st), shown) from None
        if exc.errno == errno.ENAMETOOLONG:
            raise WorkspaceFileError("missing", "Not found.") from None
        raise


def _parent_open(
    workspace: Path, parts: tuple[str, ...], *, create: bool = False, owner: int | None = None
) -> int:
    """A descriptor of the directory holding ``parts[-1]``, walked from the workspace without
    following a link. With ``create``, missing directories are made (and given to ``owner``)."""
    fd = _root_open(workspace)
    try:
        for index, name in enumerate(parts[:-1]):
            made = False
            if create:
                try:
                    os.mkdir(name, 0o755, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass
            child = _child_dir_open(fd, name, "/".join(parts[: index + 1]))
            os.close(fd)
            fd = child
            if made and owner is not None:
                os.fchown(fd, owner, owner)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _stat_utc(st: os.stat_result) -> dt.datetime:
    return dt.datetime.fromtimestamp(st.st_mtime, tz=dt.UTC)


def workspace_file_open(workspace: Path, parts: tuple[str, ...]) -> tuple[BinaryIO, os.stat_result]:
    """``parts`` opened for reading (the caller closes it) and its ``fstat``: a regular file
    reached through real directories, else ``WorkspaceFileError``."""
    shown = "/".join(parts)
    parent = _parent_open(workspace, parts)
    try:
        name = parts[-1]
        try:
            before = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            raise WorkspaceFileError("missing", "Not found.") from None
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise WorkspaceFileError("missing", "Not found.") from None
            raise
        if not stat.S_ISREG(before.st_mode):  # never open a FIFO, socket or device at all
            raise _unsupported(_kind_of(before), shown)
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            raise WorkspaceFileError("missing", "Not found.") from None
        except OSError as exc:  # swapped for a link (ELOOP) or a socket (ENXIO) since the stat
            if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENODEV):
                raise _unsupported("not a regular file", shown) from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # the descriptor decides, not the name
            os.close(fd)
            raise _unsupported(_kind_of(st), shown)
        return os.fdopen(fd, "rb"), st
    finally:
        os.close(parent)


# ------------------------------------------------------------------------------------------------
# Listing
# ------------------------------------------------------------------------------------------------


class _Walk:
    def __init__(self, limit: int, hidden: bool) -> None:
        self.limit = max(1, int(limit))
        self.hidden = hidden
        self.walked = 0
        self.truncated = False
        self.files: list[WorkspaceFile] = []

    def directory(self, fd: int, prefix: str, depth: int) -> None:
        with os.scandir(fd) as entries:
            for entry in entries:
                if self.walked >= self.limit:
                    self.truncated = True
                    return
                self.walked += 1
                name = entry.name
                if _name_problem(name) or (not self.hidden and name.startswith(".")):
                    continue  # a name no file route can address (or hidden, when asked)
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                path = f"{prefix}{name}"
                if stat.S_ISREG(st.st_mode):
                    self.files.append(WorkspaceFile(path, st.st_size, _stat_utc(st)))
                elif stat.S_ISDIR(st.st_mode):
                    if depth >= MAX_DEPTH:
                        self.truncated = True
                        continue
                    try:
                        child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except OSError:  # replaced by a link or removed since the scan
                        continue
                    try:
                        self.directory(child, f"{path}/", depth + 1)
                    finally:
                        os.close(child)
                    if self.truncated and self.walked >= self.limit:
                        return
                # symbolic links, FIFOs, sockets, devices: not listed


def workspace_files_list(workspace: Path, *, limit: int, hidden: bool = True) -> WorkspaceListing:
    """The workspace's regular files, sorted by path, walking at most ``limit`` entries (every
    file, directory, link or other entry counts). ``hidden=False`` leaves out names starting
    with a dot (and what is below them). A workspace that does not exist lists empty."""
    try:
        root = _root_open(Path(workspace))
    except WorkspaceFileError:
        return WorkspaceListing([], False)
    walk = _Walk(limit, hidden)
    try:
        walk.directory(root, "", 0)
    finally:
        os.close(root)
    return WorkspaceListing(sorted(walk.files, key=lambda f: f.path), walk.truncated)


# ------------------------------------------------------------------------------------------------
# Uploads
# ------------------------------------------------------------------------------------------------


def _too_large_message(max_bytes: int) -> str:
    return f"The upload is larger than the {max_bytes // (1024 * 1024)} MB limit (AGENT_UPLOAD_MAX_MB)."


def _quota_message(quota_bytes: int, used: int) -> str:
    mb = 1024 * 1024
    return (
        f"This upload would put the workspace of this chat over its quota of {quota_bytes // mb} MB "
        f"({used // mb} MB are used). Delete files to make room."
    )


def workspace_file_write(
    workspace: Path,
    parts: tuple[str, ...],
    chunks: Iterable[bytes],
    *,
    max_bytes: int,
    quota_bytes: int,
    expected_size: int | None = None,
) -> tuple[WorkspaceFile, bool]:
    """Write ``chunks`` to ``parts`` (creating parent directories) atomically: into a temporary
    file beside the target, renamed over it once complete, so readers (the agent included) see
    the old file or the new one, never a part. Returns the file and whether it is new.

    Refused (``WorkspaceFileError``) before anything is written when ``expected_size`` (the
    Content-Length) is over ``max_bytes`` or would take the workspace over ``quota_bytes``, and
    while writing as soon as the bytes received are (a body may be longer than announced). The
    quota counts the workspace's allocated size now, minus the file being replaced, plus the
    upload. When the server is root the file and the directories it creates become the
    workspace's jail uid's (as the agent's own files are), so the agent can read and change it."""
    workspace = Path(workspace)
    shown = "/".join(parts)
    if expected_size is not None and expected_size > max_bytes:
        raise WorkspaceFileError("too_large", _too_large_message(max_bytes))
    uid = jail_uid(workspace) if drops_privileges() else None
    parent = _parent_open(workspace, parts, create=True, owner=uid)
    try:
        name = parts[-1]
        try:
            old = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and not stat.S_ISREG(old.st_mode):
            raise _unsupported(_kind_of(old), shown)
        replaced = old.st_blocks * 512 if old is not None else 0
        used = workspace_usage(workspace, stop_above=quota_bytes + replaced)
        base = used - replaced
        if expected_size is not None and base + expected_size > quota_bytes:
            raise WorkspaceFileError("quota", _quota_message(quota_bytes, used))
        temp = f"{UPLOAD_PREFIX}{secrets.token_hex(8)}.tmp"
        fd = os.open(temp, _CREATE_FLAGS, 0o644, dir_fd=parent)
        try:
            if uid is not None:
                os.fchown(fd, uid, uid)
            os.fchmod(fd, 0o644)
            written = 0
            with os.fdopen(fd, "wb", closefd=False) as out:
                for chunk in chunks:
                    if not chunk:
                        continue
                    written += len(chunk)
                    if written > max_bytes:
                        raise WorkspaceFileError("too_large", _too_large_message(max_bytes))
                    if base + written > quota_bytes:
                        raise WorkspaceFileError("quota", _quota_message(quota_bytes, used))
                    out.write(chunk)
                out.flush()
                os.fsync(fd)
            os.close(fd)
            fd = -1
            try:
                os.rename(temp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except IsADirectoryError:  # a directory appeared there meanwhile
                raise _unsupported("a directory", shown) from None
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=parent)
            raise
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    finally:
        os.close(parent)
    # The directories on the way (made by the server before, say) become the jail's as well.
    hand_over_tree(workspace, workspace.joinpath(*parts))
    return WorkspaceFile(shown, st.st_size, _stat_utc(st)), old is None


# ------------------------------------------------------------------------------------------------
# ZIP
# ------------------------------------------------------------------------------------------------


class _ZipSink:
    """An unseekable output for ``zipfile``: it collects what is written until taken."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def write(self, data: bytes) -> int:
        self.buffer += data
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


def _zip_info(entry: WorkspaceFile, st: os.stat_result, size: int) -> zipfile.ZipInfo:
    when = dt.datetime.fromtimestamp(st.st_mtime, tz=dt.UTC).timetuple()[:6]
    info = zipfile.ZipInfo(entry.path, date_time=max(_ZIP_EPOCH, when))
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.compress_type = (
        zipfile.ZIP_STORED if Path(entry.path).suffix.lower() in _STORED_SUFFIXES else zipfile.ZIP_DEFLATED
    )
    info.file_size = size
    return info


def workspace_zip_stream(workspace: Path, files: Iterable[WorkspaceFile]) -> Iterator[bytes]:
    """``files`` (a listing of ``workspace``) as one ZIP archive, in chunks of about
    ``CHUNK_BYTES``, never all in memory. Each file is opened again the safe way: one that has
    become a link, a special file or has gone since the listing is left out, and no more than
    its listed size is read (a file growing meanwhile cannot grow the archive past the bound
    checked on the listing)."""
    sink = _ZipSink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as archive:  # type: ignore[arg-type]
        for entry in files:
            try:
                handle, st = workspace_file_open(workspace, tuple(entry.path.split("/")))
            except (WorkspaceFileError, OSError):
                continue
            with handle:
                size = min(st.st_size, entry.size)
                with archive.open(_zip_info(entry, st, size), "w") as out:
                    remaining = size
                    while remaining > 0:
                        data = handle.read(min(CHUNK_BYTES, remaining))
                        if not data:
                            break
                        remaining -= len(data)
                        out.write(data)
                        if len(sink.buffer) >= CHUNK_BYTES:
                            yield sink.take()
            if sink.buffer:
                yield sink.take()
    tail = sink.take()  # the central directory, written on close
    if tail:
        yield tail
