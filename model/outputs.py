"""Writing moesim's outputs safely: never over what moesim did not write, whole or not at all.

Every command that writes goes through this module:

- `output_dir(out, command, force)` is a context manager for an output
  folder. It refuses an ``out`` that exists unless it is empty or an earlier
  output of the same command (it holds the marker file `MARKER`, which this
  module writes into every folder it publishes). With ``force`` an existing
  folder is replaced anyway, except `dangerous` ones (``/``, the home folder,
  the working directory and their parents, and any folder holding a
  ``.git``). Inside the block the caller writes into a temporary sibling
  folder; on success it gets the marker, its files are fsynced and it is
  renamed into place (the old folder moved aside first and removed after);
  on any exception, Ctrl-C included, the temporary folder is removed. A
  ``kill -9`` leaves the temporary folder behind: its name carries the pid,
  and the next run into the same ``out`` removes it once that pid is gone.
- `write_file(path, write, owned)` writes one file the same way (a temporary
  name in the same folder, fsync, `os.replace`); an existing file is
  replaced only when ``owned(path)`` says moesim wrote it.
- Files and folders get the user's umask (``0o666``/``0o777`` masked), not
  the ``0o600``/``0o700`` of `tempfile`.
- An `OSError` while writing (a read-only folder, a full disk, a path that
  is a file) becomes one `MoesimError` line naming the path.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from moesim.model.errors import MoesimError
from moesim.model.inputs import os_reason

#: The marker file moesim writes into every output folder it publishes (JSON: command, pid, time).
MARKER = ".moesim-output"
#: Temporary folders and files carry this tag and the writer's pid in their names.
_TAG = ".moesim-tmp-"


def umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def dangerous(path: str | Path) -> str | None:
    """Why replacing ``path`` would destroy what is not moesim's, or None when it may be replaced."""
    p = Path(path).expanduser().resolve()
    if p == Path(p.anchor):
        return "it is the root folder"
    home = Path.home().resolve()
    cwd = Path.cwd().resolve()
    if p == home or p in home.parents:
        return "it is the home folder or holds it"
    if p == cwd or p in cwd.parents:
        return "it is the working folder or holds it"
    if (p / ".git").exists():
        return "it holds a .git repository"
    return None


def write_error(path: str | Path, exc: OSError) -> MoesimError:
    """A `MoesimError` for an `OSError` met while writing ``path``."""
    return MoesimError(f"cannot write {path}: {os_reason(exc)}", "choose a writable path with free space")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(folder: Path, name: str) -> list[Path]:
    """Remove the temporary files and folders for ``name`` in ``folder`` left by dead moesim processes."""
    removed = []
    with contextlib.suppress(OSError):
        for p in folder.glob(f".{name}{_TAG}*"):
            try:
                pid = int(p.name[len(f".{name}{_TAG}") :].split(".", 1)[0])
            except ValueError:
                continue
            if _pid_alive(pid):
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


def marker_command(folder: Path) -> str | None:
    """The command that wrote ``folder`` (from its marker), or None when moesim did not."""
    try:
        return str(json.loads((folder / MARKER).read_text()).get("command"))
    except (OSError, ValueError, AttributeError):
        return None


def check_replaceable(
    out: str | Path,
    command: str,
    force: bool = False,
    legacy: Callable[[Path], bool] | None = None,
    flag: str = "--out",
) -> None:
    """Raise `MoesimError` unless ``out`` may be (re)written by ``command``.

    Args:
        out: the output folder.
        command: the moesim command writing it (``simulate``, ``train``, ...).
        force: replace an existing folder that moesim did not write (never a `dangerous` one).
        legacy: recognises an output of ``command`` written before markers existed.
        flag: the option that named ``out``, for messages.
    """
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise MoesimError(f"{flag} {out} exists and is not a folder", f"give a folder path for {flag}")
    why = dangerous(out)
    if why is not None:
        raise MoesimError(f"refusing to write into {flag} {out}: {why}", f"give {flag} a new folder, e.g. runs/NAME")
    if not out.exists():
        return
    try:
        empty = not any(out.iterdir())
    except OSError as exc:
        raise MoesimError(f"cannot read {flag} {out}: {os_reason(exc)}", f"give {flag} a new folder") from None
    if empty or force:
        return
    wrote = marker_command(out)
    if wrote == command or (wrote is None and legacy is not None and legacy(out)):
        return
    what = f"the output of 'moesim {wrote}'" if wrote else "files moesim did not write"
    raise MoesimError(
        f"{flag} {out} already holds {what}; refusing to replace it",
        f"give {flag} a new folder, or add --force to replace it",
    )


def _mode_dirs_and_files(root: Path) -> None:
    """Give ``root`` and everything in it the umask's permissions; fsync the files."""
    mask = umask()
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for f in files:
            fp = os.path.join(dirpath, f)
            if os.path.islink(fp):
                continue
            os.chmod(fp, 0o666 & ~mask)
            fd = os.open(fp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def output_dir(
    out: str | Path,
    command: str,
    force: bool = False,
    legacy: Callable[[Path], bool] | None = None,
    flag: str = "--out",
) -> Iterator[Path]:
    """Stage an output folder: yields a temporary folder that becomes ``out`` when the block succeeds.

    See the module docstring; `check_replaceable` decides whether ``out`` may be replaced.
    """
    out = Path(out)
    check_replaceable(out, command, force, legacy, flag)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(parent, exc) from None
    remove_leftovers(parent, out.name)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{_TAG}{os.getpid()}.", dir=parent))
    except OSError as exc:
        raise write_error(out, exc) from None
    old: Path | None = None
    try:
        try:
            yield tmp
            (tmp / MARKER).write_text(json.dumps({"command": command, "pid": os.getpid(), "time": time.time()}))
            _mode_dirs_and_files(tmp)
            if out.exists():
                old = parent / f".{out.name}{_TAG}{os.getpid()}.old"
                os.rename(out, old)
            os.rename(tmp, out)
            _fsync_dir(parent)
        except OSError as exc:
            if old is not None and not out.exists():
                os.rename(old, out)
                old = None
            raise write_error(out, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_file(
    path: str | Path,
    write: Callable[[str], None],
    owned: Callable[[Path], bool] | None = None,
    force: bool = False,
    flag: str = "--out",
) -> Path:
    """Write one file whole or not at all: ``write(tmp)`` fills a temporary sibling, then `os.replace`.

    Args:
        path: the file to write.
        write: called with the temporary file's path (str); writes the content.
        owned: recognises a file moesim wrote; an existing file is replaced only when it says so
            (or ``force``). None: any existing file may be replaced (for files inside moesim's own folders).
        force: replace an existing file moesim did not write.
        flag: the option that named ``path``, for messages.
    """
    path = Path(path)
    if path.is_dir():
        raise MoesimError(f"{flag} {path} is a folder", f"give {flag} a file path")
    if path.exists() and owned is not None and not force and not owned(path):
        raise MoesimError(
            f"{flag} {path} exists and was not written by moesim; refusing to overwrite it",
            f"give {flag} a new file name, or add --force",
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{_TAG}{os.getpid()}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise write_error(path, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str, owned: Callable[[Path], bool] | None = None, force: bool = False) -> Path:
    """`write_file` for a text (UTF-8)."""
    return write_file(path, lambda p: Path(p).write_text(text, encoding="utf-8"), owned, force)
