"""Atomic writes, content hashes and the cache directory: outputs are never half-written and caches
are keyed by what they were computed from."""
from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable


def cache_dir() -> Path:
    """Where parses and task models are cached (`SYNPRUNE_CACHE`, default ~/.cache/synprune)."""
    root = Path(os.environ.get("SYNPRUNE_CACHE", Path.home() / ".cache" / "synprune"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def png_bytes(fig: Any, *, tight: bool = True, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes (cropped to its content unless `tight=False`); a figure that pyplot
    made is closed, so long runs do not accumulate open figures."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    if (plt := sys.modules.get("matplotlib.pyplot")) is not None:
        plt.close(fig)
    return buf.getvalue()


def write_png(path: str | Path, fig: Any, **options: Any) -> Path:
    """Save a matplotlib figure as a PNG file atomically (see `png_bytes` for the options)."""
    return atomic_write_bytes(path, png_bytes(fig, **options))


def to_jsonable(obj: Any) -> Any:
    """Turn numpy/torch scalars and arrays, tuples and paths into plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def refuse_to_replace(path: str | Path, overwrite: bool, option: str, flag: str = "--overwrite") -> None:
    """A user's existing non-empty folder (or a file where a folder goes) is replaced only with --overwrite."""
    from .errors import SynpruneError

    p = Path(path)
    if p.exists() and not overwrite and (not p.is_dir() or any(p.iterdir())):
        raise SynpruneError(f"{option} {p} already exists and is not empty; choose another folder or add {flag}")


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file, or a one-line error naming the file, the problem and what the file should be."""
    from .errors import SynpruneError

    p = Path(path)
    if not p.is_file():
        raise SynpruneError(f"{p} does not exist; pass {what}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SynpruneError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start}); pass {what}") from None
    except json.JSONDecodeError as e:
        raise SynpruneError(f"{p} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); pass {what}") from None


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2) + "\n")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_texts(parts: Iterable[str]) -> str:
    """Hash of a sequence of strings, unambiguous about where each one ends."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def sha256_dir(path: str | Path, suffixes: tuple[str, ...] = (".safetensors", ".bin", ".json", ".txt", ".model")) -> str:
    """Hash of a model folder's weight and config files (names and contents), for provenance and cache keys."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and q.suffix in suffixes):
        h.update(str(p.relative_to(root)).encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()
