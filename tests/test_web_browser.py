"""The pages in a real browser: Debian's Chromium, headless, driven by Playwright.

A person's path through the pages: datasets -> a dataset -> a version -> its Packages ->
folders -> an image and a CSV previewed -> a diff; hostile names stay text; the token
works through a browser's cookie. Screenshots land in the test's temporary directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Dialog, Page, sync_playwright

from dspkg import api
from dspkg.store import open_store
from dspkg.web.app import create_app
from dspkg.web.screenshots import chromium_available, launch, serve_in_thread
from dspkg.web.views import Limits
from tests.helpers import write_outputs
from tests.test_web import (
    BIG,
    CSV,
    HOSTILE,
    PACKAGING,
    Published,
    manifest_of,
    publish_pets,
    store_file,
)

pytestmark = pytest.mark.skipif(not chromium_available(), reason="chromium not installed")


@pytest.fixture(scope="module")
def pets(tmp_path_factory: pytest.TempPathFactory) -> Published:
    return publish_pets(tmp_path_factory.mktemp("browser-store"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    with sync_playwright() as playwright:
        context = launch(playwright, tmp_path_factory.mktemp("chromium-profile"))
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def base(pets: Published) -> Iterator[str]:
    # The default app: it answers only to loopback Host names, as `dspkg serve` does.
    with serve_in_thread(create_app(open_store(pets.url))) as url:
        yield url


class Watched:
    """A page whose console errors (CSP violations included) and dialogs are recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(str(exc)))
        page.on("dialog", self._dialog)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(message.text)

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


@pytest.fixture
def watched(browser: BrowserContext) -> Iterator[Watched]:
    page = browser.new_page()
    w = Watched(page)
    try:
        yield w
    finally:
        page.close()


def shot(page: Page, tmp_path: Path, name: str) -> None:
    target = tmp_path / f"{name}.png"
    page.screenshot(path=str(target), full_page=True)
    assert target.stat().st_size > 1000


def test_from_the_datasets_to_a_version_its_packages_and_previews(
    base: str, watched: Watched, tmp_path: Path
) -> None:
    page = watched.page
    page.goto(base + "/")
    assert page.locator("h1").inner_text() == "Datasets"
    rows = page.locator("table.datasets tbody tr")
    assert rows.count() == 2
    assert rows.nth(0).locator("td").nth(0).inner_text() == "pets"
    shot(page, tmp_path, "datasets")

    page.get_by_role("link", name="pets", exact=True).click()
    page.wait_for_url(base + "/datasets/pets")
    assert page.locator("h1").inner_text().startswith("dataset://pets")
    versions = page.locator("table.versions tbody tr td:first-child").all_inner_texts()
    assert versions == ["v2", "v1"]
    assert page.locator("ul.lineage li").all_inner_texts() == [
        "v1",
        "v2 from dataset://pets/v1",
    ]
    shot(page, tmp_path, "dataset")

    page.locator("table.versions").get_by_role("link", name="v2", exact=True).click()
    page.wait_for_url(base + "/datasets/pets/v2")
    summary = page.locator("section.summary").inner_text()
    assert "latest" in summary and "dataset://pets/v1" in summary

    packages = page.locator("details#packages")
    assert packages.get_attribute("open") is None
    assert not page.locator("details#packages table").is_visible()
    page.locator("details#packages summary").click()
    assert packages.get_attribute("open") is not None
    package_rows = page.locator("details#packages tbody tr")
    assert package_rows.count() >= 1
    names = [
        package_rows.nth(i).locator("td").nth(0).inner_text() for i in range(package_rows.count())
    ]
    assert "pets.v2.vhpkgzip" in names
    assert page.url.endswith("#packages")  # the page's script remembers the open section
    shot(page, tmp_path, "version-packages")

    page.get_by_role("link", name="images/").click()
    page.get_by_role("link", name="cat/").click()
    page.wait_for_url(base + "/datasets/pets/v2/tree/images/cat")
    assert page.locator("table.files tbody tr.file td:first-child").all_inner_texts() == [
        "1.png",
        "2.png",
        "3.png",
    ]
    page.get_by_role("link", name="1.png").click()
    page.wait_for_url(base + "/datasets/pets/v2/files/images/cat/1.png")
    image = page.locator("img.preview-image")
    assert image.is_visible()
    # The browser decoded the verified bytes into the 8x6 picture they are.
    assert image.evaluate("i => [i.complete, i.naturalWidth, i.naturalHeight]") == [True, 8, 6]
    shot(page, tmp_path, "file-image")

    page.go_back()
    page.go_back()
    page.get_by_role("link", name="..").click()
    page.wait_for_url(base + "/datasets/pets/v2")
    page.get_by_role("link", name="labels.csv").click()
    header = page.locator("table.preview-table th").all_inner_texts()
    assert header == ["id", "label"]
    cells = page.locator("table.preview-table td").all_inner_texts()
    expected = [cell for line in CSV.decode().splitlines()[1:] for cell in line.split(",")]
    assert cells[: len(expected)] == expected  # "<b>bird</b>" shown as text, not bold
    assert page.locator("table.preview-table b").count() == 0
    shot(page, tmp_path, "file-csv")
    assert watched.problems == [] and watched.dialogs == []


def test_a_diff_from_the_version_page(base: str, watched: Watched, tmp_path: Path) -> None:
    page = watched.page
    page.goto(base + "/datasets/pets/v2")
    page.get_by_role("link", name="diff with it").click()
    page.wait_for_url("**/diff?**")
    assert page.locator("h1").inner_text() == "dataset://pets/v1 → dataset://pets/v2"
    summary = page.locator("section.diff-summary tbody tr")
    assert summary.nth(0).inner_text().split("\t")[:2] == ["added", "1 files"]
    assert summary.nth(1).inner_text().split("\t")[:2] == ["removed", "1 files"]
    assert summary.nth(2).inner_text().split("\t")[:2] == ["changed", "1 files"]
    paths = page.locator("table.changes td.path").all_inner_texts()
    assert paths == ["images/cat/3.png", "images/dog/1.png", "labels.csv"]
    shot(page, tmp_path, "diff")
    page.locator("nav.tabs").get_by_role("link", name="removed").click()
    assert page.locator("table.changes td.path").all_inner_texts() == ["images/dog/1.png"]

    # The compare form on the dataset page leads to the same diff.
    page.goto(base + "/datasets/pets")
    page.locator("form.compare button").click()
    page.wait_for_url("**/diff?**")
    assert page.locator("table.changes td.path").all_inner_texts() == paths
    assert watched.problems == []


def test_hostile_names_stay_text_in_the_browser(base: str, watched: Watched) -> None:
    page = watched.page
    page.goto(base + "/datasets/pets/v1")
    names = page.locator("table.files tbody td:first-child").all_inner_texts()
    assert HOSTILE in names and "<script>alert(1)</" in names
    page.goto(f"{base}/datasets/pets/v1/files/{quote(HOSTILE)}")
    assert page.locator("h1").inner_text() == HOSTILE
    assert page.locator("main img").count() == 0  # the name made no element
    page.goto(f"{base}/datasets/pets/v1/files/{quote('<script>alert(1)</script>.jpg')}")
    assert page.locator("pre.preview-text").inner_text().strip() == "<script>alert(2)</script>"
    assert watched.dialogs == []
    assert watched.problems == []


def test_token_through_the_browser(pets: Published, browser: BrowserContext) -> None:
    app = create_app(open_store(pets.url), token="browser-token-123", hosts=None)
    with serve_in_thread(app) as url:
        page = browser.new_page()
        try:
            denied = page.goto(url + "/datasets/pets")
            assert denied is not None and denied.status == 401
            assert "needs its token" in page.locator("p").inner_text()
            page.goto(url + "/datasets/pets?token=browser-token-123")
            assert page.url == url + "/datasets/pets"  # the token left the address bar
            assert page.locator("h1").inner_text().startswith("dataset://pets")
            again = page.goto(url + "/datasets/pets/v1")  # the cookie carries it on
            assert again is not None and again.status == 200
        finally:
            page.close()


def test_a_damaged_big_download_fails_in_the_browser(
    tmp_path: Path, browser: BrowserContext
) -> None:
    url = f"file://{tmp_path / 'store'}"
    files = {"big.bin": BIG, "good.bin": BIG[::-1]}
    entry = [{"uri": "dataset://big/v1", "packaging": True}]
    api.publish(write_outputs(tmp_path / "o", files, entry), store=url, env=PACKAGING)
    published = Published(url, tmp_path)
    m = manifest_of(published, "big", "v1")
    damaged = next(f for f in m.files if f.path == "big.bin")
    assert damaged.offset is not None
    package = store_file(published, m.packages[0].key)
    data = bytearray(package.read_bytes())
    data[damaged.offset + 100] ^= 0x01
    package.write_bytes(bytes(data))
    # Streamed (not buffered) downloads: verified on the way, the last chunk held back.
    app = create_app(open_store(url), limits=Limits(buffered_max=1000, preview_max=1000))
    with serve_in_thread(app) as base:
        page = browser.new_page()
        try:
            page.goto(base + "/datasets/big/v1/files/good.bin")
            with page.expect_download() as good_info:
                page.get_by_role("link", name="download").click()
            good = good_info.value
            assert good.failure() is None
            assert Path(good.path()).read_bytes() == files["good.bin"]

            page.goto(base + "/datasets/big/v1/files/big.bin")
            with page.expect_download() as bad_info:
                page.get_by_role("link", name="download").click()
            assert bad_info.value.failure() is not None  # never a complete file
        finally:
            page.close()
