"""How the v2 shard encoding was chosen: ``python -m dspkg.bench.shard_formats [FILES]``.

Encodes the records of a synthetic version (``manifest_bench.synthetic``) in shards of
100,000 in three candidate forms, raw and gzip'd, and times turning the bytes back into
checked columns: the same checks (:mod:`dspkg.manifest_checks`) follow every form, so the
difference is the parsing. Best of three, wall and CPU seconds.

- JSON lines: one object per file, as v1 records (``json.loads`` builds a dict per file);
- TSV: ``path<TAB>size<TAB>sha256<TAB>package<TAB>offset`` lines (paths hold no tab or
  newline), split in one pass, integers parsed as one JSON array per column;
- columns: one JSON object of lists (what dspkg writes, :mod:`dspkg.shards`).
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from dspkg.bench.manifest_bench import synthetic
from dspkg.manifest import FileEntry, collector_paused, make_entries
from dspkg.manifest_checks import check_records

Columns = tuple[list[Any], list[Any], list[Any], list[Any], list[Any]]


def _json_lines(files: Sequence[FileEntry]) -> bytes:
    dumps = json.dumps
    return "".join(
        f'{{"offset":{f.offset},"package":{f.package},"path":{dumps(f.path)},'
        f'"sha256":"{f.sha256}","size":{f.size}}}\n'
        for f in files
    ).encode()


def _from_json_lines(data: bytes) -> Columns:
    raw = json.loads(b"[" + data.rstrip(b"\n").replace(b"\n", b",") + b"]")
    return (
        [r["path"] for r in raw],
        [r["size"] for r in raw],
        [r["sha256"] for r in raw],
        [r.get("package") for r in raw],
        [r.get("offset") for r in raw],
    )


def _tsv(files: Sequence[FileEntry]) -> bytes:
    return "".join(
        f"{f.path}\t{f.size}\t{f.sha256}\t{f.package}\t{f.offset}\n" for f in files
    ).encode()


def _from_tsv(data: bytes) -> Columns:
    cells = data.decode().replace("\n", "\t").split("\t")
    cells.pop()
    if len(cells) % 5:
        raise ValueError("ragged")

    def ints(column: list[str]) -> list[Any]:
        return list(json.loads("[" + ",".join(column) + "]"))

    return cells[0::5], ints(cells[1::5]), cells[2::5], ints(cells[3::5]), ints(cells[4::5])


def _columns(files: Sequence[FileEntry]) -> bytes:
    doc = {
        "offset": [f.offset for f in files],
        "package": [f.package for f in files],
        "path": [f.path for f in files],
        "sha256": [f.sha256 for f in files],
        "size": [f.size for f in files],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _from_columns(data: bytes) -> Columns:
    doc = json.loads(data)
    return doc["path"], doc["size"], doc["sha256"], doc["package"], doc["offset"]


FORMS: dict[str, tuple[Callable[[Sequence[FileEntry]], bytes], Callable[[bytes], Columns]]] = {
    "json-lines": (_json_lines, _from_json_lines),
    "tsv": (_tsv, _from_tsv),
    "columns": (_columns, _from_columns),
}


def _bad(message: str, entry: str | None = None) -> Exception:
    return ValueError(message)


def _best(run: Callable[[], Any]) -> tuple[float, float]:
    wall = cpu = float("inf")
    for _ in range(3):
        w, c = time.perf_counter(), time.process_time()
        run()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu


def _load(decode: Callable[[bytes], Columns], blobs: list[bytes], *, inflate: bool) -> None:
    with collector_paused():
        for blob in blobs:
            columns = decode(gzip.decompress(blob) if inflate else blob)
            check_records(*columns, _bad)  # type: ignore[arg-type]
            make_entries(*columns)


def measure(files: int) -> list[dict[str, Any]]:
    entries = synthetic(files).files
    shards = [entries[i : i + 100_000] for i in range(0, len(entries), 100_000)]
    rows = []
    for name, (encode, decode) in FORMS.items():
        raw = [encode(s) for s in shards]
        started = time.perf_counter()
        packed = [gzip.compress(b, compresslevel=1, mtime=0) for b in raw]
        gzip_seconds = time.perf_counter() - started
        best = [gzip.compress(b, compresslevel=6, mtime=0) for b in raw]

        def load_raw(dec: Callable[[bytes], Columns] = decode, blobs: list[bytes] = raw) -> None:
            _load(dec, blobs, inflate=False)

        def load_packed(
            dec: Callable[[bytes], Columns] = decode, blobs: list[bytes] = packed
        ) -> None:
            _load(dec, blobs, inflate=True)

        rows.append(
            {
                "form": name,
                "bytes": sum(map(len, raw)),
                "gzip1_bytes": sum(map(len, packed)),
                "gzip6_bytes": sum(map(len, best)),
                "gzip1_seconds": gzip_seconds,
                "load_raw": _best(load_raw),
                "load_gzip1": _best(load_packed),
            }
        )
    return rows


def main(argv: list[str]) -> int:
    files = int(argv[0]) if argv else 1_000_000
    print(f"{files:,} records in shards of 100,000; load = parse + check + entries, best of 3")
    for row in measure(files):
        raw, packed = row["load_raw"], row["load_gzip1"]
        gzip1, gzip6 = row["gzip1_bytes"] / 1e6, row["gzip6_bytes"] / 1e6
        print(
            f"  {row['form']:<11} {row['bytes'] / 1e6:6.1f} MB, gzip-1 {gzip1:5.1f}"
            f" MB ({row['gzip1_seconds']:.1f} s), gzip-6 {gzip6:5.1f} MB;"
            f" load raw {raw[0]:.2f} s (cpu {raw[1]:.2f}), gzip-1 {packed[0]:.2f} s"
            f" (cpu {packed[1]:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
