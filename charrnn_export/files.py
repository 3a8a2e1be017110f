"""File safety: atomic writes, the manifest of what the project wrote, and the one-writer lock.

    atomic_write_bytes(path, data) / atomic_write_text(path, text)
        readers see the old file or the whole new one; OSError becomes WriteError (one line)
    Manifest.read(folder, name=MANIFEST) / Manifest.create(folder, kind) / manifest.add(*names) / manifest.remove_all()
        `.charrnn-export.json` in a run or export folder (`.charrnn-export-site.json` in a to-web
        site): every file and folder the project wrote there. `--force` removes exactly those,
        never anything else (a user's notes beside them, a home directory passed as --out).
    foreign_entries(folder, manifest)   what in a folder the project did not write
    check_no_foreign(folder, manifest, what, advice)   the one refusal of a folder holding such files
    FolderLock(folder).acquire()        fcntl.flock on `.charrnn-export.lock`, held while a run or
        export writes; the kernel drops it when the process dies, so a killed run never blocks
        its own --resume. A second writer gets FolderInUse naming the holder's pid.
    make_dirs(path, root=None) / remove_dirs(created)   mkdir -p that remembers what it made, to undo it
    check_no_link_out(path, root)       refuse a symbolic link between `root` and `path` that leads out
        of `root`

Links: every writer here takes `root`, the output folder it writes in (a run, an export, a site,
bench's --out). A symbolic link below `root`, on the way to the file or the file itself, that
leads out of `root` is refused (LinkOutside, one line) and nothing is written or made through it:
replacing the link instead would silently drop what the user linked in, and following it writes
outside --out. Links that stay inside `root` are followed. Without `root` (a file the user names
himself, `sample --out FILE`), the path is the user's choice and a link there is followed.
    check_writable_dir(path, what)      fail before any work unless files can be made there
    staging_dir(folder)                 a hidden folder inside `folder` to build in, removed afterwards
        (a stale one a killed process left is removed first: call it holding the folder's lock)

Standard library only: the sampler (numpy + onnxruntime) writes --out through this module.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from .errors import ConfigError, FolderInUse, LinkOutside, WriteError

MANIFEST = ".charrnn-export.json"
SITE_MANIFEST = ".charrnn-export-site.json"  # a to-web site's (kept apart from run/export manifests)
LITERT_MANIFEST = ".charrnn-export-litert.json"  # a to-tflite folder's
MANIFEST_KINDS = {MANIFEST: ("run", "export"), SITE_MANIFEST: ("site",), LITERT_MANIFEST: ("litert",)}
LOCK = ".charrnn-export.lock"
OWN_NAMES = frozenset({MANIFEST, LOCK})  # never "foreign", whatever the manifest says
STAGING_PREFIX = ".charrnn-export-staging-"  # an export is built in FOLDER/.charrnn-export-staging-XXXX/
TOOL = "charrnn-export"


# ---------------------------------------------------------------- errors


def write_error(path, error: OSError) -> WriteError:
    """One line for a failed write; a full disk says so plainly (its strerror alone is cryptic in context)."""
    # TensorFlow reports a full disk as its own error whose text holds the strerror, not the errno.
    if error.errno in (errno.ENOSPC, errno.EDQUOT) or os.strerror(errno.ENOSPC) in str(error):
        return WriteError(f"cannot write {path}: the disk is full ({error.strerror}); free some space and try again")
    return WriteError(f"cannot write {path} ({error.strerror or error}); choose a writable location")


# ---------------------------------------------------------------- atomic writes


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes, root: str | os.PathLike | None = None) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part.
    With `root` (the output folder), a link on the way that leads out of it is refused."""
    if root is not None:
        check_no_link_out(path, root)
    # Replace what a symlink points at, not the link; never rename over a device or a pipe.
    path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():
        raise WriteError(f"{path} exists and is not a regular file; write to a file path instead")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file normal permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(path, e) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str, root: str | os.PathLike | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), root)


def check_no_link_out(path: str | os.PathLike, root: str | os.PathLike) -> None:
    """Raise LinkOutside when a symbolic link below `root` on the way to `path` (or `path` itself)
    leads out of `root`: writing there would write outside the output folder. `root` itself may
    be a link (the user named it)."""
    root, path = Path(os.path.abspath(root)), Path(os.path.abspath(path))
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        raise LinkOutside(f"{path} is not inside {root}; charrnn-export writes only inside its output folder") from None
    current = root
    for part in parts:
        current = current / part
        if current.is_symlink() and not inside(current, root):
            raise LinkOutside(f"{current} is a symbolic link to {os.path.realpath(current)}, outside {root}; "
                              "charrnn-export never writes through it: remove the link or choose another folder")
        if not current.exists():
            return  # nothing further down exists yet, so no link either


def is_partial_write(name: str) -> bool:
    """The temporary name atomic_write_bytes gives a file before renaming it (`.NAME.XXXX.tmp`)."""
    return name.startswith(".") and name.endswith(".tmp") and name.count(".") >= 3


# ---------------------------------------------------------------- folders


def make_dirs(directory: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Path]:
    """mkdir -p, returning the directories it created (deepest last) so a failure can remove them.
    With `root`, a link on the way that leads out of it is refused."""
    if root is not None:
        check_no_link_out(directory, root)
    directory = Path(os.path.abspath(directory))
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    created: list[Path] = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue  # made meanwhile by another process: not ours to remove
        except OSError as e:
            remove_dirs(created)
            raise write_error(d, e) from None
        created.append(d)
    return created


def remove_dirs(created: list[Path]) -> None:
    """Remove directories make_dirs created, deepest first, only while they are empty."""
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            pass  # something was written there meanwhile: leave it


def nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(directory: str | os.PathLike, what: str) -> None:
    """Fail now, before any work, unless `directory` (or the folder it would be made in) takes new
    files. `what` names it in the message ("--out runs/x"). Creates nothing that stays."""
    directory = Path(os.path.abspath(directory))
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{what} is a file; pass a directory")
    ancestor = nearest_existing(directory)
    if not ancestor.is_dir():
        raise ConfigError(f"cannot write {what}: {ancestor} is a file, not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=ancestor, prefix=".probe."):
            pass
    except OSError as e:
        raise ConfigError(f"cannot write to {ancestor} ({e.strerror or e}); choose a writable {what.split()[0]}") from None


def check_writable_file(path: str | os.PathLike, what: str) -> None:
    """check_writable_dir for the folder a file will be written into (atomically: a new file there)."""
    target = Path(os.path.realpath(path))
    if target.is_dir():
        raise ConfigError(f"{what} is a directory; give a file path")
    if target.exists() and not target.is_file():
        # The atomic write renames a new file over the path: over a device or a pipe (say
        # /dev/stdout) that would replace it, not write into it.
        raise ConfigError(f"{what} is not a regular file; give a file path")
    check_writable_dir(target.parent, what)


@contextmanager
def staging_dir(folder: Path):
    """FOLDER/.charrnn-export-staging-XXXX: what is built there moves into place by renames only
    (no new space needed), so a failure half-way (a full disk) leaves FOLDER as it was."""
    for stale in Path(folder).glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)  # ours by name, and the caller holds the lock
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    except OSError as e:
        raise write_error(folder, e) from None
    os.chmod(staging, 0o777 & ~current_umask())
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------- the manifest


class Manifest:
    """What the project wrote in `folder`: files and folders, as paths relative to it.

    Names are recorded *before* the file is written (write-ahead), so a kill between the two
    leaves a name without a file (harmless) rather than a file the project cannot claim.
    """

    def __init__(self, folder: Path, kind: str, files=(), dirs=(), name: str = MANIFEST):
        self.folder = Path(folder)
        self.kind = kind  # "run" or "export" (MANIFEST), "site" (SITE_MANIFEST)
        self.files = set(files)
        self.dirs = set(dirs)
        self.name = name

    @property
    def path(self) -> Path:
        return self.folder / self.name

    @classmethod
    def read(cls, folder: str | os.PathLike, name: str = MANIFEST) -> "Manifest | None":
        """The folder's manifest `name`; None when it has none. A damaged one is an error: what
        the project wrote there is then unknown, so nothing may be removed."""
        path = Path(folder) / name
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(raw, dict) or raw.get("tool") != TOOL or raw.get("kind") not in MANIFEST_KINDS[name]:
                raise ValueError("not a charrnn-export manifest")
            files, dirs = (list(map(str, raw.get(k, []))) for k in ("files", "dirs"))
            for entry in files + dirs:
                check_relative(entry)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is damaged ({e}); what charrnn-export wrote in {Path(folder)} is unknown, "
                              "so nothing there will be replaced: choose another output folder") from None
        return cls(Path(folder), raw["kind"], files, dirs, name)

    @classmethod
    def create(cls, folder: str | os.PathLike, kind: str) -> "Manifest":
        manifest = cls(Path(folder), kind)
        manifest.save()
        return manifest

    def save(self) -> None:
        record = {"tool": TOOL, "kind": self.kind, "files": sorted(self.files), "dirs": sorted(self.dirs)}
        atomic_write_text(self.path, json.dumps(record, indent=1, ensure_ascii=False) + "\n", self.folder)

    def add(self, *names: str, dirs: tuple[str, ...] = ()) -> None:
        """Record files (and folders) about to be written; saves only when something is new."""
        new_files = {check_relative(n) for n in names} - self.files
        new_dirs = {check_relative(d) for d in dirs} - self.dirs
        if new_files or new_dirs:
            self.files |= new_files
            self.dirs |= new_dirs
            self.save()

    def owns(self, name: str) -> bool:
        return name in OWN_NAMES or name == self.name or name in self.files or name in self.dirs

    def remove_all(self) -> None:
        """remove_files(), then the manifest itself."""
        self.remove_files()
        self.path.unlink(missing_ok=True)

    def remove_files(self) -> None:
        """Delete every recorded file, then every recorded folder that is left empty. A file the
        user put inside one of our folders keeps that folder."""
        for name in sorted(self.files):
            path = self.folder / name
            # A symlinked folder on the way could lead outside: only paths that stay inside.
            if inside(path.parent, self.folder) and (path.is_symlink() or path.is_file()):
                path.unlink()
        for name in sorted(self.dirs, key=lambda d: d.count("/"), reverse=True):
            try:
                (self.folder / name).rmdir()
            except OSError:
                pass  # not empty (holds a user's file) or already gone
        self.files, self.dirs = set(), set()


def inside(path: Path, folder: Path) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def check_relative(name: str) -> str:
    """A manifest entry must name something inside its folder; a damaged or hostile manifest must
    not make --force delete `../elsewhere` or `/home`."""
    parts = PurePosixPath(name).parts
    if not name or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name or "\x00" in name:
        raise ValueError(f"entry {name!r} is not a path inside the folder")
    return str(PurePosixPath(name))


def foreign_entries(folder: str | os.PathLike, manifest: "Manifest | None") -> list[str]:
    """Top-level names in `folder` that the project did not write (empty when the folder is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    owned_tops = set()
    if manifest is not None:
        owned_tops = {PurePosixPath(n).parts[0] for n in manifest.files | manifest.dirs} | {manifest.name}
    return sorted(p.name for p in folder.iterdir()
                  if p.name not in OWN_NAMES and p.name not in owned_tops and not is_partial_write(p.name)
                  and not p.name.startswith(STAGING_PREFIX))


def check_no_foreign(folder: str | os.PathLike, manifest: "Manifest | None", what: str, advice: str) -> None:
    """ConfigError, one line naming the first few, when `folder` holds what the project did not
    write (foreign_entries): `what` names the folder as its user gave it, `advice` what to do."""
    foreign = foreign_entries(folder, manifest)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ConfigError(f"{what} holds files {TOOL} did not write ({shown}); {advice}")


def tree_entries(root: Path) -> tuple[set[str], set[str]]:
    """(files, folders) under `root`, as relative posix paths: what a new export is made of."""
    files, dirs = set(), set()
    for path in root.rglob("*"):
        name = path.relative_to(root).as_posix()
        (dirs if path.is_dir() and not path.is_symlink() else files).add(name)
    return files, dirs


def move_tree(source: Path, target: Path) -> None:
    """Rename `source` to `target`; where `target` is a folder that still exists (it holds a user's
    file the manifest does not list), move the contents in one by one instead."""
    if target.is_dir() and not target.is_symlink() and source.is_dir():
        for child in source.iterdir():
            move_tree(child, target / child.name)
        source.rmdir()
    else:
        os.replace(source, target)


# ---------------------------------------------------------------- the lock


class FolderLock:
    """An exclusive fcntl.flock on FOLDER/.charrnn-export.lock, for one writer per folder."""

    def __init__(self, folder: str | os.PathLike, what: str):
        self.path = Path(folder) / LOCK
        self.what = what  # names the folder in messages ("--out runs/x")
        self.fd: int | None = None

    def acquire(self) -> "FolderLock":
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise write_error(self.path, e) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_pid(fd)
                os.close(fd)
                raise FolderInUse(f"{self.what} is in use by another charrnn-export process "
                                  f"({'pid ' + holder if holder else 'starting up'}); wait for it to finish, "
                                  "stop it, or choose another folder") from None
            # The holder before us unlinks the file when it releases: if it did so between our
            # open and our flock, we locked a file nobody else will open. Try again.
            if same_file(fd, self.path):
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # a full disk: the pid only names the holder in messages; the flock is what locks
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still holding it: see acquire
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""


def same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
