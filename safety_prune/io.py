"""Atomic file writes and hashing: a crash never leaves a half-written output."""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

_UMASK = os.umask(0)
os.umask(_UMASK)
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def short_name(target: Path) -> str:
    """``target``'s name as its hidden siblings (temps, checkpoints) carry it: a long name is cut and tagged with
    a digest, so that a sibling's name (this, host, pid, random part) stays within the 255 bytes allowed."""
    name = target.name
    if len(name.encode()) <= 120:
        return name
    cut = name.encode()[:100].decode("utf-8", "ignore")
    return f"{cut}~{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def temp_prefix(target: Path) -> str:
    """Hidden temp-sibling prefix that names its host and process, so a later run can tell it is stale."""
    return f".{short_name(target)}.{_HOST}-{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, under another user
        pass
    return True


def is_stale_temp(path: Path, target: Path) -> bool:
    """Whether ``path`` is a temp of ``target`` left by a process of this host that no longer runs."""
    head = f".{short_name(target)}.{_HOST}-"
    if not (path.name.startswith(head) and path.name.endswith(".tmp")):
        return False
    pid = path.name[len(head):].split(".", 1)[0]
    return pid.isdigit() and not _alive(int(pid))


def sweep_stale_temps(target: Path) -> None:
    """Remove temp siblings of ``target`` left by a killed process (same host, pid no longer running).

    A SIGKILL cannot run cleanup, so the temp sibling of an interrupted write survives; the next write to
    the same target removes it. Temps of live processes and of other hosts are left alone.
    """
    pattern = f".{glob.escape(short_name(target))}.{_HOST}-*.tmp"
    inside = list(target.glob(pattern)) if target.is_dir() else []  # temps built inside an existing folder
    for sib in [*target.parent.glob(pattern), *inside]:
        if is_stale_temp(sib, target):
            if sib.is_dir() and not sib.is_symlink():
                shutil.rmtree(sib, ignore_errors=True)
            else:
                sib.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it into place only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp (and some writers) create 0600; outputs read like others
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike[str], data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")


def write_jsonl(target: str | os.PathLike[str], rows: Iterable[dict[str, Any]]) -> None:
    with atomic_path(target) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")


_COMMITTED: list[Path] = []


def committed() -> list[Path]:
    """Every output this process finished and kept (run folders, saved models), oldest first."""
    return list(_COMMITTED)


def note_committed(path: Path) -> None:
    _COMMITTED.append(path)


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them: a commit is never cut in half.

    Python runs signal handlers in the main thread only, so elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    # a handler installed outside Python (getsignal None) could not be put back, so that signal is left alone
    sigs = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not None]
    previous = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum)) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)  # the handler in force again decides (KeyboardInterrupt for SIGINT)


def move_into(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing a file or folder there.

    A rename where it can; where it cannot cross filesystems (EXDEV), a copy into a temporary sibling of
    ``dst`` (on ``dst``'s filesystem) renamed into place, then ``src`` is removed.
    """
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    tmp = dst.parent / f"{temp_prefix(dst)}{secrets.token_hex(4)}.tmp"
    try:
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, tmp, symlinks=True)
        else:
            shutil.copy2(src, tmp, follow_symlinks=False)
        os.replace(tmp, dst)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists() or tmp.is_symlink():
            tmp.unlink()
    if src.is_dir() and not src.is_symlink():
        shutil.rmtree(src)
    else:
        src.unlink()


def move_items(src_dir: Path, dst_dir: Path) -> None:
    """Move every entry of ``src_dir`` into ``dst_dir`` (replacing same-named entries); ``src_dir`` stays."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(src_dir.iterdir()):
        move_into(item, dst_dir / item.name)


def publish_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` at ``target`` (absent or an empty folder), with umask permissions.

    One rename where it can. Where a rename cannot land (another filesystem, a mount point, a folder that
    appeared meanwhile) the entries move in one by one, and ``tmp`` is removed.
    """
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp creates 0700; a published folder reads like any other
    try:
        os.replace(tmp, target)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EBUSY, errno.ENOTEMPTY, errno.EEXIST):
            raise
    move_items(tmp, target)
    tmp.rmdir()


def build_inside(target: Path) -> bool:
    """Whether a staged folder for ``target`` is built inside it: an existing folder (maybe a mount point).

    Building there keeps the staging on the target's own filesystem, so the final moves are renames.
    """
    return target.is_dir()


@contextmanager
def atomic_dir(target: str | os.PathLike[str], *, record: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary folder and move it into place on success.

    The temporary folder is a hidden sibling of ``target``, or a hidden entry inside ``target`` when that is
    an existing (empty) folder or a mount point, so it is always on the target's filesystem. Callers check
    that an existing ``target`` is empty. ``record``: list it in ``committed`` (an output the user asked for).
    """
    target = Path(target)
    inside = build_inside(target)
    if not inside:
        target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), suffix=".tmp", dir=target if inside else target.parent))
    try:
        yield tmp
        with deferred_signals():
            if inside:
                move_items(tmp, target)
                tmp.rmdir()
            else:
                publish_dir(tmp, target)
            if record:
                note_committed(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without anchors' aliases: an alias bomb (billion laughs) cannot expand."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"found the alias *{event.anchor}; YAML anchors and aliases (&name, *name, <<: *name) "
                "are not allowed here, because a few aliases can expand into billions of values. Write the "
                "values out", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """Refuse a key given twice in one mapping: PyYAML silently keeps the last, so a setting written twice
        (say ``max_prompt_tokens``) would change a run without a word."""
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if earlier is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"found the key {key!r} a second time in one mapping (first on line "
                    f"{earlier.start_mark.line + 1}); YAML would silently keep only the last value. Keep one of "
                    "them", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def safe_yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that refuses aliases and duplicate keys (raises ``yaml.YAMLError``)."""
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
