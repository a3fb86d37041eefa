"""A file's bytes read with one request and verified, and what a preview shows of them.

:func:`read_verified` fetches exactly the bytes the manifest names (a range of the
file's package, else its blob) and checks size and SHA-256 before returning anything.
:func:`make_preview` is pure: verified bytes in, what to show out. The content type is
decided from the bytes (magic numbers, UTF-8), never from the name alone: a ``.png`` that
is not a PNG is shown as a hex dump.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any, Literal

from dspkg.errors import Integrity
from dspkg.layout import blob_key
from dspkg.manifest import FileEntry, Manifest
from dspkg.sizes import format_size
from dspkg.store import Store

PREVIEW_MAX_BYTES = 4 << 20
"""Larger files are not previewed: verifying a preview means reading the whole file."""
TEXT_LINES = 40
TABLE_ROWS = 40
LINE_CHARS = 300
HEX_BYTES = 512

PreviewKind = Literal["image", "table", "json", "text", "hex", "empty", "too_large", "error"]

_IMAGES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)
_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}


def source_of(manifest: Manifest, entry: FileEntry) -> tuple[str, int]:
    """Where the file's bytes are: ``(key, start)`` in its package, else its blob."""
    if entry.package is not None and entry.offset is not None:
        return manifest.packages[entry.package].key, entry.offset
    return blob_key(entry.sha256), 0


async def read_verified(store: Store, manifest: Manifest, entry: FileEntry) -> bytes:
    """The file's bytes with one ranged GET, checked against the manifest's size and sha256."""
    key, start = source_of(manifest, entry)
    data = await store.get_range(key, start, start + entry.size)
    check_bytes(data, entry, manifest=manifest, where=store.describe(key))
    return data


def check_bytes(data: bytes, entry: FileEntry, *, manifest: Manifest, where: str) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if len(data) != entry.size or digest != entry.sha256:
        raise Integrity(
            f"{manifest.uri} {entry.path}: the bytes read from {where} do not match the "
            f"manifest (size {len(data)}, sha256 {digest[:12]}…; expected {entry.size}, "
            f"{entry.sha256[:12]}…); the store is damaged, publish the version again",
            obj=where,
        )


@dataclass(frozen=True)
class Preview:
    kind: PreviewKind
    media_type: str | None = None
    lines: tuple[str, ...] = ()
    rows: tuple[tuple[str, ...], ...] = ()
    hex: tuple[tuple[str, str, str], ...] = ()
    data_url: str | None = None
    truncated: bool = False
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.kind, "truncated": self.truncated}
        if self.media_type:
            doc["media_type"] = self.media_type
        if self.kind in ("text", "json"):
            doc["lines"] = list(self.lines)
        if self.kind == "table":
            doc["rows"] = [list(r) for r in self.rows]
        if self.kind == "hex":
            doc["hex"] = [{"offset": o, "hex": h, "text": t} for o, h, t in self.hex]
        if self.data_url:
            doc["data_url"] = self.data_url
        if self.message:
            doc["message"] = self.message
        return doc


def too_large(limit: int) -> Preview:
    return Preview(
        "too_large",
        message=f"no preview: the file is larger than {format_size(limit)} "
        "(a preview is verified, so it reads the whole file); download it instead",
    )


def failed(message: str) -> Preview:
    return Preview("error", message=message)


def make_preview(path: str, data: bytes) -> Preview:
    """What to show of a file's verified bytes."""
    if not data:
        return Preview("empty", message="the file is empty")
    for magic, media_type in _IMAGES:
        if data.startswith(magic):
            encoded = base64.b64encode(data).decode("ascii")
            return Preview("image", media_type, data_url=f"data:{media_type};base64,{encoded}")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        encoded = base64.b64encode(data).decode("ascii")
        return Preview("image", "image/webp", data_url=f"data:image/webp;base64,{encoded}")
    text = _as_text(data)
    if text is None:
        return _hex(data)
    suffix = "." + path.rpartition(".")[2].lower() if "." in path else ""
    if suffix in _TABLE_SUFFIXES:
        return _table(text, _TABLE_SUFFIXES[suffix])
    if suffix == ".json":
        try:
            pretty = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            pass
        else:
            return _lines("json", pretty, "application/json")
    return _lines("text", text, "text/plain")


def _as_text(data: bytes) -> str | None:
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _clip(line: str) -> str:
    return line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + "…"


def _lines(kind: PreviewKind, text: str, media_type: str) -> Preview:
    lines = text.splitlines()
    shown = tuple(_clip(line) for line in lines[:TEXT_LINES])
    truncated = len(lines) > TEXT_LINES or any(len(line) > LINE_CHARS for line in shown)
    return Preview(kind, media_type, lines=shown, truncated=truncated)


def _table(text: str, delimiter: str) -> Preview:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows: list[tuple[str, ...]] = []
    try:
        for row in reader:
            if len(rows) == TABLE_ROWS:
                return Preview("table", "text/csv", rows=tuple(rows), truncated=True)
            rows.append(tuple(_clip(cell) for cell in row[:50]))
    except csv.Error:
        return _lines("text", text, "text/plain")
    return Preview("table", "text/csv", rows=tuple(rows))


def _hex(data: bytes) -> Preview:
    shown = data[:HEX_BYTES]
    lines = []
    for start in range(0, len(shown), 16):
        chunk = shown[start : start + 16]
        hex_part = " ".join(f"{b:02x}" for b in chunk)
        text_part = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append((f"{start:08x}", hex_part, text_part))
    return Preview(
        "hex", "application/octet-stream", hex=tuple(lines), truncated=len(data) > HEX_BYTES
    )
