"""The web app through Starlette's TestClient: every page and its JSON twin, errors, escaping,
verified previews and downloads, the token and the Host check."""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.testclient import TestClient

from dspkg import api
from dspkg.catalog import Catalog
from dspkg.concurrency import run_sync
from dspkg.layout import blob_key, manifest_key
from dspkg.manifest import Manifest
from dspkg.names import VersionUri
from dspkg.store import open_store
from dspkg.web.app import create_app
from dspkg.web.manifests import ManifestCache
from dspkg.web.measure import measure
from dspkg.web.screenshots import png, serve_in_thread
from dspkg.web.security import check_bind, host_name, is_loopback
from dspkg.web.views import Limits, lineage_tree
from tests.helpers import write_outputs

HOSTILE_DIR = "<script>alert(1)</script>.jpg"  # a folder "<script>alert(1)<" and a file
HOSTILE = "<img src=x onerror=alert(1)>.png"
ODD = "with space/naïve #1?&.txt"  # characters that mean something in a URL
# Starlette's TestClient decodes "%2520" twice; a real server does not (checked over HTTP).
PERCENT = "with space/100%20.txt"
PNG = png(8, 6, lambda x, y: (x * 30, y * 40, 200))
CSV = b"id,label\n1,cat\n2,dog\n3,<b>bird</b>\n"
PACKAGING = {"VH_ENABLE_DATASET_VERSION_PACKAGING": "1"}


def v1_files() -> dict[str, bytes]:
    return {
        "images/cat/1.png": PNG,
        "images/cat/2.png": png(4, 4, lambda x, y: (255, x * 60, y * 60)),
        "images/dog/1.png": png(5, 5, lambda x, y: (0, 0, x * 50)),
        "labels.csv": CSV,
        "meta.json": b'{"classes": ["cat", "dog"], "n": 3}',
        "notes.txt": "line one\nline two — ünïcode\n".encode(),
        "weights.bin": bytes(range(256)) * 3,
        "fake.png": b"just text, not a PNG\n",
        "empty.txt": b"",
        HOSTILE_DIR: b"<script>alert(2)</script>",
        HOSTILE: b"hostile",
        ODD: b"odd name\n",
        PERCENT: b"percent\n",
    }


def v2_files() -> dict[str, bytes]:
    files = v1_files()
    del files["images/dog/1.png"]
    files["labels.csv"] = CSV + b"4,fish\n"
    files["images/cat/3.png"] = png(3, 3, lambda x, y: (9, 9, 9))
    return files


@dataclass(frozen=True)
class Published:
    url: str
    root: Path

    def client(self, **kwargs: Any) -> TestClient:
        kwargs.setdefault("hosts", None)
        return TestClient(create_app(open_store(self.url), **kwargs))


def publish_pets(root: Path) -> Published:
    url = f"file://{root / 'store'}"
    v1 = [{"uri": "dataset://pets/v1", "packaging": True, "targeting_aliases": ["prod"]}]
    api.publish(write_outputs(root / "o1", v1_files(), v1), store=url, env=PACKAGING)
    v2 = [
        {
            "uri": "dataset://pets/v2",
            "packaging": True,
            "from": "dataset://pets/v1",
            "exclude": ["images/dog/1.png"],
        }
    ]
    new = {p: d for p, d in v2_files().items() if v1_files().get(p) != d}
    api.publish(write_outputs(root / "o2", new, v2), store=url, env=PACKAGING)
    plain = {"a.txt": b"alpha\n", "sub/b.txt": b"beta\n"}
    api.publish(write_outputs(root / "o3", plain, ["dataset://plain/v1"]), store=url, env=PACKAGING)
    return Published(url, root)


@pytest.fixture(scope="module")
def pets(tmp_path_factory: pytest.TempPathFactory) -> Published:
    return publish_pets(tmp_path_factory.mktemp("web"))


@pytest.fixture
def own_pets(tmp_path: Path) -> Published:
    """A store of its own, for tests that damage it."""
    return publish_pets(tmp_path)


@pytest.fixture(scope="module")
def client(pets: Published) -> Iterator[TestClient]:
    with pets.client() as c:
        yield c


def manifest_of(published: Published, dataset: str, version: str) -> Manifest:
    store = open_store(published.url)
    return run_sync(Catalog(store).read_manifest(VersionUri(dataset, version)))


def stored_bytes(published: Published, version: str) -> int:
    """The bytes of a version's manifest as stored: its root and its shards."""
    root = store_file(published, manifest_key("pets", version))
    shards: list[int] = [s["size"] for s in json.loads(root.read_bytes())["shards"]]
    return root.stat().st_size + sum(shards)


def store_file(published: Published, key: str) -> Path:
    return published.root / "store" / key


def one_line_error(response: httpx.Response, status: int, *needles: str) -> str:
    """An HTML error page: the status, one ``dspkg: error:`` line, no traceback."""
    assert response.status_code == status, response.text[:500]
    lines = re.findall(r'<p class="error" role="alert">(.*?)</p>', response.text, re.S)
    assert len(lines) == 1, response.text
    assert "Traceback" not in response.text
    text = html.unescape(lines[0])
    assert text.startswith("dspkg: error: ") and "\n" not in text
    for needle in needles:
        assert needle in text, text
    return text


def api_error(response: httpx.Response, status: int, *needles: str) -> None:
    assert response.status_code == status, response.text[:500]
    doc = response.json()
    assert doc["status"] == status
    assert "\n" not in doc["error"]
    for needle in needles:
        assert needle in doc["error"], doc["error"]


# --- pages and their JSON twins ----------------------------------------------------------


def test_datasets_page_and_api(client: TestClient) -> None:
    doc = client.get("/api/datasets").json()
    rows = {d["dataset"]: d for d in doc["datasets"]}
    assert set(rows) == {"pets", "plain"}
    assert rows["pets"]["versions"] == 2 and rows["pets"]["latest"] == "v2"
    assert rows["pets"]["files"] == len(v2_files())
    assert rows["pets"]["bytes"] == sum(map(len, v2_files().values()))
    assert rows["pets"]["packaged"] is True and rows["plain"]["packaged"] is False
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for name, row in rows.items():
        assert f'href="/datasets/{name}"' in page.text
        assert f">{row['files']:,}<" in page.text


def test_dataset_page_lists_versions_newest_first_with_lineage(client: TestClient) -> None:
    doc = client.get("/api/datasets/pets").json()
    assert [v["version"] for v in doc["versions"]] == ["v2", "v1"]
    v2, v1 = doc["versions"]
    assert v2["aliases"] == ["latest"] and v1["aliases"] == ["prod"]
    assert v2["from"] == "dataset://pets/v1" and v1["from"] is None
    assert v2["packaged"] and v2["files"] == len(v2_files())
    assert [(n["version"], n["from"]) for n in doc["lineage"]] == [
        ("v1", None),
        ("v2", "dataset://pets/v1"),
    ]
    page = client.get("/datasets/pets").text
    assert page.index('href="/datasets/pets/v2"') < page.index('href="/datasets/pets/v1"')
    assert ">prod<" in page and ">latest<" in page
    assert 'action="/diff"' in page


def test_version_page_summary_packages_and_root_folder(pets: Published, client: TestClient) -> None:
    doc = client.get("/api/datasets/pets/v2").json()
    m = manifest_of(pets, "pets", "v2")
    assert doc["uri"] == "dataset://pets/v2" and doc["requested"] is None
    assert doc["files"] == len(m.files) and doc["bytes"] == m.total_bytes
    assert doc["aliases"] == ["latest"]
    assert [a["uri"] for a in doc["lineage"]] == ["dataset://pets/v1"]
    assert [p["name"] for p in doc["packages"]] == [p.name for p in m.packages]
    used = [sum(1 for f in m.files if f.package == i) for i in range(len(m.packages))]
    assert [p["files_used"] for p in doc["packages"]] == used
    assert doc["packaged_files"] == len(m.files)
    items = doc["folder"]["items"]
    names = [(i["type"], i["name"]) for i in items]
    # Subfolders first, then files, each by name.
    assert names[:3] == [
        ("folder", "<script>alert(1)<"),
        ("folder", "images"),
        ("folder", "with space"),
    ]
    assert ("file", "labels.csv") in names
    images = next(i for i in items if i["name"] == "images")
    assert images["files"] == 3
    page = client.get("/datasets/pets/v2").text
    assert '<details id="packages"' in page
    for p in doc["packages"]:
        assert f'/datasets/pets/v2/packages/{p["name"]}"' in page
        assert f">{p['entries']:,}<" in page


def test_alias_in_the_url_shows_its_version(client: TestClient) -> None:
    doc = client.get("/api/datasets/pets/prod").json()
    assert doc["version"] == "v1" and doc["requested"] == "prod"
    assert "prod → v1" in client.get("/datasets/pets/prod").text


def test_folder_pages_are_paged(pets: Published) -> None:
    with pets.client(limits=Limits(per_page=4)) as c:
        root = c.get("/api/datasets/pets/v1").json()["folder"]
        assert root["entries"] == 3 + 7 and root["pages"] == 3 and len(root["items"]) == 4
        second = c.get("/api/datasets/pets/v1?page=2").json()["folder"]
        third = c.get("/api/datasets/pets/v1?page=3").json()["folder"]
        every = [i["path"] for i in root["items"] + second["items"] + third["items"]]
        assert every == sorted(every[:3]) + sorted(every[3:]) and len(set(every)) == 10
        page = c.get("/datasets/pets/v1?page=2").text
        assert 'href="?page=1"' in page and 'href="?page=3"' in page
        for item in second["items"]:
            assert f">{html.escape(item['name'])}" in page
        api_error(c.get("/api/datasets/pets/v1?page=4"), 404, "page 4", "pages 1-3")
        one_line_error(c.get("/datasets/pets/v1?page=x"), 400, "'x' is not a whole number")


def test_folder_page(client: TestClient) -> None:
    doc = client.get("/api/datasets/pets/v1/tree/images/cat").json()
    folder = doc["folder"]
    assert folder["path"] == "images/cat" and folder["files"] == 2
    assert [i["name"] for i in folder["items"]] == ["1.png", "2.png"]
    assert [c["path"] for c in folder["breadcrumbs"]] == ["images", "images/cat"]
    first = folder["items"][0]
    assert first["size"] == len(PNG) and first["sha256"] == hashlib.sha256(PNG).hexdigest()
    assert first["package"] == "pets.v1.vhpkgzip" and first["offset"] > 0
    page = client.get("/datasets/pets/v1/tree/images/cat").text
    assert 'href="/datasets/pets/v1/files/images/cat/1.png"' in page
    assert f">{first['offset']:,}<" in page
    assert 'href="/datasets/pets/v1/tree/images">..' in page


def test_file_page_previews(client: TestClient) -> None:
    image = client.get("/api/datasets/pets/v1/files/images/cat/1.png").json()
    assert image["size"] == len(PNG) and image["package"] == "pets.v1.vhpkgzip"
    assert image["source"]["kind"] == "package"
    assert image["preview"]["kind"] == "image"
    assert image["preview"]["data_url"].startswith("data:image/png;base64,")
    page = client.get("/datasets/pets/v1/files/images/cat/1.png").text
    assert '<img class="preview-image" src="data:image/png;base64,' in page

    table = client.get("/api/datasets/pets/v1/files/labels.csv").json()["preview"]
    assert table["kind"] == "table"
    assert table["rows"] == [["id", "label"], ["1", "cat"], ["2", "dog"], ["3", "<b>bird</b>"]]
    page = client.get("/datasets/pets/v1/files/labels.csv").text
    assert "<th>id</th>" in page and "<td>&lt;b&gt;bird&lt;/b&gt;</td>" in page

    data = client.get("/api/datasets/pets/v1/files/meta.json").json()["preview"]
    assert data["kind"] == "json" and data["lines"][0] == "{"
    text = client.get("/api/datasets/pets/v1/files/notes.txt").json()["preview"]
    assert text["lines"] == ["line one", "line two — ünïcode"]
    raw = client.get("/api/datasets/pets/v1/files/weights.bin").json()["preview"]
    assert raw["kind"] == "hex" and raw["hex"][0]["hex"].startswith("00 01 02 03")
    assert raw["truncated"] is True  # 768 bytes, 512 shown
    fake = client.get("/api/datasets/pets/v1/files/fake.png").json()["preview"]
    assert fake["kind"] == "text"  # decided by the bytes, not the name
    empty = client.get("/api/datasets/pets/v1/files/empty.txt").json()["preview"]
    assert empty["kind"] == "empty"
    odd = client.get(f"/api/datasets/pets/v1/files/{quote_path(ODD)}").json()
    assert odd["path"] == ODD and odd["preview"]["lines"] == ["odd name"]
    folder = client.get("/datasets/pets/v1/tree/with%20space").text
    assert f'href="/datasets/pets/v1/files/{html.escape(quote_path(ODD))}"' in folder


def test_blob_preview_and_download(client: TestClient) -> None:
    doc = client.get("/api/datasets/plain/v1/files/sub/b.txt").json()
    assert doc["package"] is None and doc["source"]["kind"] == "blob"
    assert doc["preview"]["lines"] == ["beta"]
    got = client.get("/datasets/plain/v1/download/sub/b.txt")
    assert got.status_code == 200 and got.content == b"beta\n"
    assert got.headers["content-disposition"].startswith('attachment; filename="b.txt"')


def test_large_files_are_not_previewed(pets: Published) -> None:
    with pets.client(limits=Limits(preview_max=100)) as c:
        preview = c.get("/api/datasets/pets/v1/files/weights.bin").json()["preview"]
        assert preview["kind"] == "too_large" and "download it" in preview["message"]


def test_downloads_are_the_verified_bytes(client: TestClient) -> None:
    files = v1_files()
    for path in ("images/cat/1.png", "labels.csv", "empty.txt", HOSTILE, ODD):
        got = client.get(f"/datasets/pets/v1/download/{quote_path(path)}")
        assert got.status_code == 200, path
        assert got.content == files[path]
        assert got.headers["content-type"] == "application/octet-stream"
        assert got.headers["x-content-type-options"] == "nosniff"


def test_percent_in_a_name_over_real_http(pets: Published) -> None:
    with serve_in_thread(create_app(open_store(pets.url))) as base:
        folder = httpx.get(f"{base}/datasets/pets/v1/tree/with%20space").text
        link = f"/datasets/pets/v1/files/{quote_path(PERCENT)}"
        assert f'href="{link}"' in folder
        assert httpx.get(base + link.replace("/files/", "/download/")).content == b"percent\n"
        doc = httpx.get(f"{base}/api{link}").json()
        assert doc["path"] == PERCENT


def test_package_download_is_the_package(pets: Published, client: TestClient) -> None:
    m = manifest_of(pets, "pets", "v1")
    package = m.packages[0]
    got = client.get(f"/datasets/pets/v1/packages/{package.name}")
    assert got.status_code == 200
    assert hashlib.sha256(got.content).hexdigest() == package.sha256
    assert got.content == store_file(pets, package.key).read_bytes()


def test_diff_page_and_api(client: TestClient) -> None:
    query = "a=dataset://pets/v1&b=dataset://pets/latest"
    doc = client.get(f"/api/diff?{query}").json()
    assert (doc["a"], doc["b"]) == ("dataset://pets/v1", "dataset://pets/v2")
    assert doc["added"] == {"files": 1, "bytes": len(v2_files()["images/cat/3.png"])}
    assert doc["removed"]["files"] == 1 and doc["changed"]["files"] == 1
    assert doc["unchanged"]["files"] == len(v1_files()) - 2
    assert [(i["change"], i["path"]) for i in doc["items"]] == [
        ("added", "images/cat/3.png"),
        ("removed", "images/dog/1.png"),
        ("changed", "labels.csv"),
    ]
    assert doc["bytes_a_to_b"] == doc["added"]["bytes"] + len(v2_files()["labels.csv"])
    only = client.get(f"/api/diff?{query}&change=removed").json()
    assert [i["path"] for i in only["items"]] == ["images/dog/1.png"]
    page = client.get(f"/diff?{query}").text
    assert 'href="/datasets/pets/v2/files/images/cat/3.png"' in page
    assert "images/dog/1.png" in page and "labels.csv" in page
    assert 'class="bytes-a-to-b"' in page


def test_api_index_lists_the_endpoints(client: TestClient) -> None:
    assert "/api/diff" in client.get("/api/").json()["endpoints"]


def test_every_page_links_its_json(client: TestClient) -> None:
    for url, api_url in [
        ("/", "/api/datasets"),
        ("/datasets/pets/v1/tree/images", "/api/datasets/pets/v1/tree/images"),
        ("/diff?a=dataset://pets/v1&b=dataset://pets/v2", "/api/diff?a=dataset://pets/v1"),
    ]:
        page = client.get(url).text
        assert f'href="{html.escape(api_url)}' in page, url


# --- errors --------------------------------------------------------------------------------


def test_unknown_things_are_404_with_one_line(client: TestClient) -> None:
    one_line_error(client.get("/datasets/nope"), 404, "dataset nope not found")
    api_error(client.get("/api/datasets/nope"), 404, "dataset nope not found")
    one_line_error(client.get("/datasets/pets/v9"), 404, "dataset://pets/v9 not found", "v1")
    api_error(client.get("/api/datasets/pets/v9"), 404, "not found")
    one_line_error(client.get("/datasets/pets/v1/files/nope.txt"), 404, "no file 'nope.txt'")
    api_error(client.get("/api/datasets/pets/v1/files/images"), 404, "no file 'images'")
    one_line_error(client.get("/datasets/pets/v1/tree/nope"), 404, "no folder 'nope'")
    one_line_error(client.get("/datasets/pets/v1/tree/labels.csv"), 404, "no folder")
    one_line_error(client.get("/datasets/pets/v1/download/nope"), 404, "no file 'nope'")
    one_line_error(client.get("/datasets/pets/v1/packages/x.vhpkgzip"), 404, "no package")
    one_line_error(client.get("/datasets/.hidden"), 404, "invalid dataset name")
    one_line_error(client.get("/no/such/page"), 404, "no such page")
    api_error(client.get("/api/nothing"), 404, "no such page")
    one_line_error(client.get("/diff"), 400, "a diff needs two versions")
    api_error(client.get("/api/diff?a=dataset://pets/v1&b=pets"), 404, "invalid")
    one_line_error(
        client.get("/diff?a=dataset://pets/v1&b=dataset://pets/v2&change=moved"),
        400,
        "unknown change 'moved'",
    )


def test_paths_never_reach_the_file_system(client: TestClient, pets: Published) -> None:
    # Only what the manifest names can be read: no ../, no absolute paths, no store keys.
    for path in (
        "../../../etc/passwd",
        "%2e%2e/%2e%2e/etc/passwd",
        "/etc/passwd",
        "datasets/pets/versions/v1.json",
        "packages/pets/v1/pets.v1.vhpkgzip",
    ):
        got = client.get(f"/datasets/pets/v1/download/{path}")
        assert got.status_code == 404, path
        assert "root:" not in got.text
        got = client.get(f"/api/datasets/pets/v1/files/{path}")
        assert got.status_code == 404, path


def test_damaged_manifest_is_one_line_page_not_a_traceback(own_pets: Published) -> None:
    store_file(own_pets, manifest_key("pets", "v1")).write_bytes(b'{"schema_version": 1, "x')
    with own_pets.client() as c:
        one_line_error(c.get("/datasets/pets/v1"), 502, "manifest", "not valid JSON")
        api_error(c.get("/api/datasets/pets/v1"), 502, "not valid JSON")
        # The dataset page still lists the versions, the damaged one with its error.
        doc = c.get("/api/datasets/pets").json()
        broken = next(v for v in doc["versions"] if v["version"] == "v1")
        assert "not valid JSON" in broken["error"]
        assert c.get("/datasets/pets").status_code == 200


def test_unreachable_store_is_one_line(tmp_path: Path) -> None:
    store = open_store("s3://bucket/prefix", {"endpoint": "http://127.0.0.1:9", "region": "x"})
    store.retry = type(store.retry)(attempts=1)
    with TestClient(create_app(store, hosts=None)) as c:
        text = one_line_error(c.get("/"), 502)
        assert "127.0.0.1:9" in text or "s3://bucket" in text
        api_error(c.get("/api/datasets"), 502)


def test_corrupt_package_range_shows_an_error_never_the_bytes(own_pets: Published) -> None:
    m = manifest_of(own_pets, "pets", "v1")
    entry = next(f for f in m.files if f.path == "labels.csv")
    assert entry.package is not None and entry.offset is not None
    package = store_file(own_pets, m.packages[entry.package].key)
    data = bytearray(package.read_bytes())
    data[entry.offset : entry.offset + 3] = b"EVL"  # "id," -> "EVL"
    package.write_bytes(bytes(data))
    with own_pets.client() as c:
        doc = c.get("/api/datasets/pets/v1/files/labels.csv").json()
        assert doc["preview"]["kind"] == "error"
        assert "do not match the manifest" in doc["preview"]["message"]
        assert "rows" not in doc["preview"]
        page = c.get("/datasets/pets/v1/files/labels.csv")
        assert page.status_code == 200
        assert "do not match the manifest" in page.text
        assert "EVL" not in page.text and "cat" not in page.text
        got = c.get("/datasets/pets/v1/download/labels.csv")
        one_line_error(got, 502, "labels.csv", "do not match the manifest")
        assert b"EVL" not in got.content
        # The package itself no longer matches its manifest hash: the stream is cut short.
        whole = c.get(f"/datasets/pets/v1/packages/{m.packages[0].name}")
        assert len(whole.content) < m.packages[0].size


def test_corrupt_blob_shows_an_error(own_pets: Published) -> None:
    m = manifest_of(own_pets, "plain", "v1")
    entry = next(f for f in m.files if f.path == "a.txt")
    store_file(own_pets, blob_key(entry.sha256)).write_bytes(b"omega\n")
    with own_pets.client() as c:
        preview = c.get("/api/datasets/plain/v1/files/a.txt").json()["preview"]
        assert preview["kind"] == "error" and "omega" not in json.dumps(preview)
        one_line_error(c.get("/datasets/plain/v1/download/a.txt"), 502, "do not match")


def test_missing_package_is_an_error_line(own_pets: Published) -> None:
    m = manifest_of(own_pets, "pets", "v1")
    store_file(own_pets, m.packages[0].key).unlink()
    with own_pets.client() as c:
        preview = c.get("/api/datasets/pets/v1/files/labels.csv").json()["preview"]
        assert preview["kind"] == "error" and "not found" in preview["message"]
        one_line_error(c.get("/datasets/pets/v1/download/labels.csv"), 502, "not found")


# --- big files: streamed, verified on the way ------------------------------------------------


BIG = bytes(range(256)) * 12_000  # 3 MB


@pytest.fixture
def big(tmp_path: Path) -> Published:
    url = f"file://{tmp_path / 'store'}"
    entry = [{"uri": "dataset://big/v1", "packaging": True}]
    api.publish(
        write_outputs(tmp_path / "o", {"big.bin": BIG, "small.txt": b"s"}, entry),
        store=url,
        env=PACKAGING,
    )
    return Published(url, tmp_path)


def test_big_download_streams_the_verified_bytes(big: Published) -> None:
    with big.client(limits=Limits(buffered_max=1000)) as c:
        got = c.get("/datasets/big/v1/download/big.bin")
        assert got.status_code == 200
        assert got.headers["content-length"] == str(len(BIG))
        assert got.content == BIG


def test_big_download_of_damaged_bytes_is_cut_short(big: Published) -> None:
    m = manifest_of(big, "big", "v1")
    entry = next(f for f in m.files if f.path == "big.bin")
    assert entry.offset is not None
    package = store_file(big, m.packages[0].key)
    data = bytearray(package.read_bytes())
    data[entry.offset + len(BIG) - 10] ^= 0xFF  # damage the very end
    package.write_bytes(bytes(data))
    app = create_app(open_store(big.url), hosts=None, limits=Limits(buffered_max=1000))
    with TestClient(app) as c:
        got = c.get("/datasets/big/v1/download/big.bin")
        assert len(got.content) < len(BIG)  # the last chunk was never sent
    # Over real HTTP the client sees the connection closed before Content-Length bytes.
    with serve_in_thread(app) as base, httpx.Client() as http:
        received = 0
        with (
            pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|closed"),
            http.stream("GET", f"{base}/datasets/big/v1/download/big.bin") as response,
        ):
            assert response.headers["content-length"] == str(len(BIG))
            for chunk in response.iter_raw():
                received += len(chunk)
        assert 0 < received < len(BIG)


# --- escaping --------------------------------------------------------------------------------


def test_hostile_names_are_shown_as_text(client: TestClient) -> None:
    pages = [
        client.get("/datasets/pets/v1").text,
        client.get(f"/datasets/pets/v1/files/{quote_path(HOSTILE)}").text,
        client.get(f"/datasets/pets/v1/files/{quote_path(HOSTILE_DIR)}").text,
        client.get(f"/datasets/pets/v1/tree/{quote_path('<script>alert(1)<')}").text,
        client.get("/diff?a=dataset://pets/plain&b=dataset://pets/v1").text,
        client.get("/diff?a=dataset://plain/v1&b=dataset://pets/v1").text,
    ]
    for page in pages:
        assert "<script>alert" not in page
        assert "<img src=x" not in page
        assert "onerror=alert(1)>" not in page.replace("&gt;", ">").split("&lt;img")[0]
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in pages[0]
    assert "&lt;script&gt;alert(1)&lt;/" in pages[0]
    assert '<h1 class="filename">&lt;img src=x onerror=alert(1)&gt;.png</h1>' in pages[1]
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in pages[2]  # its text preview
    doc = client.get(f"/api/datasets/pets/v1/files/{quote_path(HOSTILE)}").json()
    assert doc["name"] == HOSTILE


def quote_path(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


def test_security_headers(client: TestClient) -> None:
    got = client.get("/")
    csp = got.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["referrer-policy"] == "no-referrer"


# --- who may ask ------------------------------------------------------------------------------


def test_token_is_needed_on_every_request(pets: Published) -> None:
    token = "s3cret-token-1234"
    with pets.client(token=token) as c:
        one_line_error_401 = c.get("/datasets/pets")
        assert one_line_error_401.status_code == 401
        assert "needs its token" in one_line_error_401.text
        api_error(c.get("/api/datasets"), 401, "needs its token")
        assert c.get("/static/style.css").status_code == 401
        assert c.get("/datasets/pets/v1/download/labels.csv").status_code == 401
        api_error(c.get("/api/datasets", headers={"Authorization": "Bearer nope"}), 401)
        ok = c.get("/api/datasets", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["datasets"]
        wrong = c.get("/datasets/pets?token=wrong", follow_redirects=False)
        assert wrong.status_code == 401
        assert "set-cookie" not in wrong.headers
        # ?token= sets a cookie and sends the browser to the same page without the token.
        first = c.get(f"/datasets/pets?page=1&token={token}", follow_redirects=False)
        assert first.status_code == 303
        assert first.headers["location"] == "/datasets/pets?page=1"
        assert "HttpOnly" in first.headers["set-cookie"]
        assert c.get("/datasets/pets").status_code == 200  # the cookie now goes along
        assert c.get("/static/app.js").status_code == 200


def test_loopback_server_answers_only_loopback_host_names(pets: Published) -> None:
    app = create_app(open_store(pets.url))  # the default: loopback names only
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/").status_code == 200
    with TestClient(app, base_url="http://localhost") as c:
        assert c.get("/api/datasets").status_code == 200
    with TestClient(app, base_url="http://evil.example:8000") as c:
        api_error(c.get("/api/datasets"), 400, "localhost")


def test_bind_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.0.0.2") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert not is_loopback("example.com")
    assert host_name("[::1]:8000") == "::1" and host_name("LOCALHOST:80") == "localhost"
    assert host_name("127.0.0.1") == "127.0.0.1"
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "a-long-token")
    with pytest.raises(Exception, match=r"--host 0\.0\.0\.0 lets other machines"):
        check_bind("0.0.0.0", None)
    with pytest.raises(Exception, match="token must be 8-200 characters"):
        check_bind("0.0.0.0", "short")
    with pytest.raises(Exception, match="token must be"):
        check_bind("127.0.0.1", "has spaces in it")


def test_versions_are_read_once_and_aliases_each_time(pets: Published) -> None:
    store = open_store(pets.url)
    with TestClient(create_app(store, hosts=None)) as c:
        c.get("/api/datasets/pets/v1/tree/images")
        before = store.stats.requests
        for _ in range(3):
            assert c.get("/api/datasets/pets/v1/tree/images/cat").status_code == 200
        assert store.stats.requests == before  # a cached exact version needs no request
        c.get("/api/datasets/pets/latest/tree/images")
        assert store.stats.requests > before  # an alias is resolved again


def test_pages_and_api_agree(client: TestClient) -> None:
    """Each page shows what its JSON twin says (both come from one function)."""
    folder = client.get("/api/datasets/pets/v1/tree/images/cat").json()["folder"]
    page = client.get("/datasets/pets/v1/tree/images/cat").text
    for item in folder["items"]:
        assert f">{html.escape(item['name'])}</a>" in page
        assert f'title="{item["sha256"]}"' in page
    version = client.get("/api/datasets/pets/v1").json()
    page = client.get("/datasets/pets/v1").text
    assert f"{version['files']:,} (" in page
    for item in version["folder"]["items"]:
        assert html.escape(item["name"]) in page
    diff = client.get("/api/diff?a=dataset://pets/v1&b=dataset://pets/v2").json()
    page = client.get("/diff?a=dataset://pets/v1&b=dataset://pets/v2").text
    for item in diff["items"]:
        assert html.escape(item["path"]) in page
    for kind in ("added", "removed", "changed", "unchanged"):
        assert f"{diff[kind]['files']:,} files" in page


def test_measure_runs_and_pages_stay_light() -> None:
    # The million-file measurement at a small size: every page answers, and a folder
    # page weighs the same at any size (200 entries), far below 200 KB.
    result = run_sync(measure(3000, repeat=1))
    assert len(result["pages"]) == 8
    for page in result["pages"]:
        assert page["bytes"] < 200_000, page
    assert sum(result["assets_bytes"].values()) < 20_000


def test_requests_at_once_share_one_manifest_read(pets: Published) -> None:
    store = open_store(pets.url)
    cache, catalog = ManifestCache(), Catalog(store)

    async def at_once() -> list[object]:
        uri = VersionUri("pets", "v1")
        return list(await asyncio.gather(*(cache.view(catalog, uri) for _ in range(4))))

    views = run_sync(at_once())
    assert all(v is views[0] for v in views)
    assert store.stats.bytes_down == stored_bytes(pets, "v1")  # read once, not four times


def test_cache_keeps_recent_versions_within_its_file_budget(pets: Published) -> None:
    store = open_store(pets.url)
    catalog = Catalog(store)
    v1_files_count = len(manifest_of(pets, "pets", "v1").files)
    cache = ManifestCache(max_files=v1_files_count + 1)
    for version in ("v1", "v2", "v1"):
        run_sync(cache.view(catalog, VersionUri("pets", version)))
    # v2 pushed v1 out (they do not fit together), so v1 was read twice.
    assert store.stats.bytes_down == 2 * stored_bytes(pets, "v1") + stored_bytes(pets, "v2")


def _rows(parents: dict[str, str | None]) -> list[dict[str, Any]]:
    return [
        {"version": v, "created_at": f"2026-01-{i + 1:02d}", "from": p and f"dataset://d/{p}"}
        for i, (v, p) in enumerate(parents.items())
    ]


def test_lineage_tree_indents_only_at_branches() -> None:
    chain = lineage_tree(_rows({"v1": None, "v2": "v1", "v3": "v2"}), "d")
    assert [(n["version"], n["depth"]) for n in chain] == [("v1", 0), ("v2", 0), ("v3", 0)]
    fork = lineage_tree(_rows({"v1": None, "a": "v1", "b": "v1", "a2": "a"}), "d")
    assert [(n["version"], n["depth"]) for n in fork] == [
        ("v1", 0),
        ("a", 1),
        ("a2", 1),
        ("b", 1),
    ]
    cycle = lineage_tree(_rows({"x": "y", "y": "x", "z": "gone"}), "d")
    assert sorted(n["version"] for n in cycle) == ["x", "y", "z"]


@given(st.lists(st.integers(-1, 11), min_size=1, max_size=12))
def test_lineage_tree_lists_every_version_once(parents: list[int]) -> None:
    names = [f"v{i}" for i in range(len(parents))]
    rows = _rows({n: (f"v{p}" if p >= 0 else None) for n, p in zip(names, parents, strict=True)})
    tree = lineage_tree(rows, "d")
    assert sorted(n["version"] for n in tree) == sorted(names)
    where = {n["version"]: i for i, n in enumerate(tree)}
    for n in tree:  # a parent in the dataset comes before its child, unless in a cycle
        parent = n["from"] and n["from"].rpartition("/")[2]
        if parent in where and parent != n["version"] and where[parent] > where[n["version"]]:
            chain, seen = parent, set()
            while chain in where and chain not in seen:
                seen.add(chain)
                chain = next(r["from"] for r in rows if r["version"] == chain)
                chain = chain and chain.rpartition("/")[2]
            assert chain in seen  # only a cycle puts a child first
