"""Atomic file writes (temp file in the same folder + ``os.replace``), safe reads and file locks."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml


def current_umask() -> int:
    """The process's umask (read from /proc on Linux, else set and restored at once)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: ``0o666 & ~umask`` (so shared run folders stay
    readable by the group the user's umask allows)."""
    return 0o666 & ~current_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` atomically. The file gets the
    permissions the umask gives (``mkstemp`` alone would make it 0600); folders are made with ``mkdir``,
    which applies the umask too."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no spaces: equal objects give equal text (what ids and keys are hashed from)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def yaml_error_message(where: str | os.PathLike, exc: yaml.YAMLError) -> str:
    """``<where>:<line>:<column>: invalid YAML: <problem>`` (1-based, from the error's mark when it has one)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    return f"{where}{at}: invalid YAML: {problem}"


def read_yaml(path: str | os.PathLike, mapping: bool = False) -> Any:
    """``yaml.safe_load`` of one file: the one YAML reader of presets, grid specs and run configs.

    A syntax error (a tab, an unclosed bracket, a bad indent) or undecodable bytes are a ConfigError naming the
    file, line and column; ``mapping``: the top level must be a mapping (an empty file reads as ``{}``)."""
    from canbench.config import ConfigError

    try:
        with open(path, encoding="utf-8") as f:
            obj = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(yaml_error_message(path, e)) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: expected a YAML file, found a folder") from None
    if mapping:
        if obj is None:
            return {}
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}:1:1: expected a mapping of keys at the top level, got a {type(obj).__name__}")
    return obj


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line (a single write call, so concurrent readers never see half a line)."""
    line = json.dumps(obj, sort_keys=True, default=str) + "\n"
    with open(path, "a") as f:
        f.write(line)
        f.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """All complete JSON lines of ``path`` (a torn last line from a crash is skipped)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def torch_load(path: str | os.PathLike, map_location: Any = "cpu", **kw: Any) -> Any:
    """``torch.load(weights_only=True)``, also for checkpoints written by facebookresearch/mae's training script,
    which hold their ``argparse.Namespace`` of arguments: exactly that one type is allowed besides tensors and
    plain containers. Anything else that cannot be loaded safely is a ConfigError naming the file."""
    import argparse
    import pickle

    import torch

    from canbench.config import ConfigError

    if os.path.isfile(path) and (corrupt := checksum_error(path)) is not None:  # recorded when it was written
        raise ConfigError(corrupt)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True, **kw)
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path}") from None
    except pickle.UnpicklingError as e:  # damaged bytes, or a type outside the safe list
        text = str(e).strip()
        detail = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
        detail = " ".join(detail.split()) or type(e).__name__
        raise ConfigError(f"{path} cannot be loaded safely (torch.load weights_only=True): {detail[:300]}. It is "
                          "damaged (truncated or corrupt) or holds more than canbench reads: tensors, plain "
                          "containers and argparse.Namespace only; re-save the weights as a plain state dict "
                          "(torch.save(model.state_dict(), path))") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, AttributeError, TypeError,
            zipfile.BadZipFile, MemoryError, OverflowError) as e:  # torn, empty or foreign bytes
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else "no detail"
        size = os.path.getsize(path) if os.path.isfile(path) else 0
        raise ConfigError(f"{path} is not a readable checkpoint ({size} bytes; truncated or corrupt?): "
                          f"{type(e).__name__}: {first[:200]}") from None


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What a protocol-2 pickle made by Python 3 calls to rebuild ``bytes`` (``_codecs.encode(text, 'latin1')``);
    other codecs are refused."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _plain_data_globals() -> dict[tuple[str, str], Any]:
    """The only globals :func:`safe_pickle_load` resolves: what NumPy arrays, dtypes and scalars pickle as
    (under NumPy 1's ``numpy.core`` and NumPy 2's ``numpy._core`` module names), latin-1 ``bytes``, and the
    ``set`` / ``frozenset`` / ``bytearray`` constructors (no other builtin: ``exec``, ``eval``, ``getattr`` and
    ``__import__`` live there too)."""
    import numpy as np

    try:
        from numpy._core import multiarray, numeric  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_encode}
    for mod in ("builtins", "__builtin__"):  # protocol <= 3 pickles name these containers (Python 3, Python 2)
        allowed.update({(mod, "set"): set, (mod, "frozenset"): frozenset, (mod, "bytearray"): bytearray})
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data only. Dicts, lists, tuples, sets, str, bytes, numbers, booleans and
    None come from pickle opcodes and need no lookup; every global the stream names (a class or a function,
    which ``REDUCE`` would call) must be one of :func:`_plain_data_globals`, else it is refused *before* it is
    imported, so ``os.system``, ``builtins.exec`` or ``subprocess.Popen`` can never be reached."""

    def __init__(self, f: Any, encoding: str) -> None:
        super().__init__(f, encoding=encoding)
        self._allowed = _plain_data_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None


def safe_pickle_load(path: str | os.PathLike, encoding: str = "ASCII") -> Any:
    """Unpickle a data file someone else may have written (e.g. the CIFAR python batches) without running code.

    Only plain data and NumPy arrays are built (:class:`_PlainDataUnpickler`); a pickle that names anything
    else, or bytes that are not a pickle at all, are a ConfigError naming the file. ``encoding``: how Python 2
    ``str`` objects are decoded (``"latin1"`` for the CIFAR batches, which are Python 2 pickles)."""
    from canbench.config import ConfigError

    try:
        with open(path, "rb") as f:
            return _PlainDataUnpickler(f, encoding=encoding).load()
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: expected a pickle file, found a folder") from None
    except pickle.UnpicklingError as e:
        if str(e).startswith("refused"):
            raise ConfigError(f"{path}: {e}: the file holds more than plain data (dicts, lists, strings, numbers, "
                              "NumPy arrays), and unpickling it could run code, so it is not loaded") from None
        raise ConfigError(f"{path} is not a readable pickle (truncated or corrupt?): {e}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError, OverflowError) as e:
        raise ConfigError(f"{path} is not a readable pickle (truncated or corrupt?): "
                          f"{type(e).__name__}: {str(e)[:200]}") from None


def _acquire(fd: int, wait_s: float | None) -> bool:
    """An exclusive ``flock`` on the open ``fd``: blocks when ``wait_s`` is None, else polls for up to ``wait_s``
    seconds; False when another open file still holds it then."""
    if wait_s is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _open_lock_file(path: str | os.PathLike) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies


@contextmanager
def file_lock(path: str | os.PathLike, timeout_s: float | None = None) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path`` (created if missing) for the ``with`` block; TimeoutError after
    ``timeout_s`` seconds of waiting (None: wait forever). Closing the descriptor releases the lock."""
    fd = _open_lock_file(path)
    try:
        if not _acquire(fd, timeout_s):
            raise TimeoutError(f"could not lock {path} within {timeout_s:.0f} s")
        yield
    finally:
        os.close(fd)


# ---- checksums of written files -------------------------------------------------------------------------------
# Every file written by :func:`torch_save_atomic` has its SHA-256 recorded in ``.checksums.json`` in its folder
# (the newest :data:`CHECKSUMS_KEPT` sums, keyed by the sum: a checkpoint keeps its sum when it is renamed, e.g.
# ``last.pt`` -> ``prev.pt``); :func:`torch_load` verifies a file against that record before it reads it.
CHECKSUMS = ".checksums.json"
CHECKSUMS_KEPT = 64


def _checksums(folder: Path) -> dict[str, Any] | None:
    """The folder's checksum record ({"sha256": {sum: {"file", "time"}}, "names": [...]}), or None when there is
    none (or it is torn)."""
    try:
        obj = read_json(folder / CHECKSUMS)
    except (FileNotFoundError, ValueError, OSError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("sha256"), dict):
        return None
    return {"sha256": obj["sha256"], "names": [n for n in obj.get("names") or [] if isinstance(n, str)]}


def record_checksum(path: str | os.PathLike, sha: str, aliases: tuple[str, ...] = ()) -> None:
    """Add ``sha`` (the sum of the file that is, or is about to become, ``path``) to its folder's record;
    ``aliases``: other names the same file will carry (e.g. ``prev.pt`` after a rotation)."""
    folder = Path(path).parent
    rec = _checksums(folder) or {"sha256": {}, "names": []}
    sums = rec["sha256"]
    sums[sha] = {"file": Path(path).name, "time": time.time()}
    newest = sorted(sums.items(), key=lambda kv: kv[1].get("time", 0) if isinstance(kv[1], dict) else 0)
    names = list(dict.fromkeys([*rec["names"], Path(path).name, *aliases]))
    write_json(folder / CHECKSUMS, {"sha256": dict(newest[-CHECKSUMS_KEPT:]), "names": names[-CHECKSUMS_KEPT:]})


def verify_checksum(path: str | os.PathLike) -> bool | None:
    """True when ``path``'s SHA-256 is one its folder recorded, False when the folder records sums for files of
    this name and this file's is not among them (its bytes changed after they were written), None when nothing
    was recorded for it (files written by other tools or by older versions)."""
    path = Path(path)
    rec = _checksums(path.parent)
    if not rec or path.name not in rec["names"]:
        return None
    return file_sha256(path) in rec["sha256"]


def torch_save_atomic(obj: Any, path: str | os.PathLike, *, previous: str | os.PathLike | None = None) -> str:
    """``torch.save`` to a temp file, record its SHA-256 (:func:`record_checksum`), then replace ``path``
    atomically; with ``previous``, the file that was at ``path`` is first renamed to ``previous`` (one older good
    copy to fall back on). Returns the sum. A crash at any point leaves ``path`` or ``previous`` whole."""
    import torch

    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch reports a failed write (e.g. a full disk) as "unexpected pos ..."
            import errno
            import shutil

            free = shutil.disk_usage(path.parent).free
            code = errno.ENOSPC if free < (256 << 20) else errno.EIO
            raise OSError(code, f"{os.strerror(code)} ({free} bytes free; torch.save: "
                                f"{' '.join(str(e).split())[:160]})", str(path)) from e
        sha = file_sha256(tmp)
        record_checksum(path, sha, aliases=(Path(previous).name,) if previous is not None else ())
        if previous is not None and path.exists():
            os.replace(path, previous)
    return sha


def checksum_error(path: str | os.PathLike) -> str | None:
    """The message for a file whose bytes no longer match the sum recorded when it was written (None if they
    do, or nothing was recorded)."""
    if verify_checksum(path) is False:
        return (f"{path} is corrupted: its SHA-256 matches none recorded in {Path(path).parent / CHECKSUMS} when "
                "it was written (the bytes changed on disk)")
    return None


def remove_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files (``.<name>.*.tmp``) that an atomic write killed mid-way left in ``folder``; call it
    only while owning the folder (no other process may be writing there). Returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.glob(".*.tmp"):
        try:
            p.unlink()
            removed.append(p)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            continue
    return removed


# ---- owner locks ----------------------------------------------------------------------------------------------
def try_lock(path: str | os.PathLike, wait_s: float = 0.0) -> int | None:
    """An exclusive ``flock`` on ``path`` (created if missing) held until the returned descriptor is closed, or
    None when another open file holds it after ``wait_s`` seconds. Unlike :func:`file_lock` the caller keeps
    it as long as it lives (a process that dies releases it: the kernel closes its files)."""
    fd = _open_lock_file(path)
    if _acquire(fd, wait_s):
        return fd
    os.close(fd)
    return None


def is_locked(path: str | os.PathLike) -> bool:
    """Whether some process holds an exclusive ``flock`` on ``path`` now (a probe: never creates the file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
