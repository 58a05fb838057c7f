"""Atomic file writes (temp file in the same folder + ``os.replace``), safe reads and file locks."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def read_yaml(path: str | os.PathLike) -> Any:
    with open(path) as f:
        return yaml.safe_load(f)


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

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location=map_location, weights_only=True, **kw)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path} cannot be loaded safely (torch.load weights_only=True): {first}. canbench "
                          "reads tensors, plain containers and argparse.Namespace only; re-save the weights as "
                          "a plain state dict (torch.save(model.state_dict(), path))") from None


def torch_save_atomic(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@contextmanager
def file_lock(path: str | os.PathLike, timeout_s: float | None = None) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path`` (created if missing) for the ``with`` block; TimeoutError after
    ``timeout_s`` seconds of waiting (None: wait forever). Closing the descriptor releases the lock."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if timeout_s is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"could not lock {path} within {timeout_s:.0f} s") from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)
