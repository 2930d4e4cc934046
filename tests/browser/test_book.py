"""`make book`: the site builds offline in under two minutes and every page loads with its figures."""

import re
import time

import nbformat

from tests.browser.conftest import ROOT, load_tool

book = load_tool("book")


def test_every_page_loads_with_its_figures_and_fetches_nothing(tmp_path, browser, artifacts):
    start = time.perf_counter()
    pages = book.build(tmp_path / "book")
    seconds = time.perf_counter() - start
    assert seconds < 120, f"the book took {seconds:.0f} s to build"
    rows = book.notebook_rows()
    assert [p.name for p in pages] == ["index.html", "api.html"] + [book._page(r["file"]) for r in rows]

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    fetched = []  # anything but the pages themselves and embedded data
    page.on("request", lambda request: fetched.append(request.url)
            if not request.url.startswith(("file:", "data:", "blob:")) else None)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    anchors = set(re.findall(r'id="([^"]+)"', (tmp_path / "book" / "api.html").read_text()))
    for path in pages:
        page.goto(path.as_uri(), wait_until="load")
        images = page.eval_on_selector_all("img", "els => els.map(e => e.complete && e.naturalWidth > 0)")
        assert all(images), f"{path.name}: {images.count(False)} of {len(images)} images did not load"
        if path.name.startswith(tuple("0123456789")):
            notebook = nbformat.read(ROOT / "notebooks" / path.with_suffix(".ipynb").name, as_version=4)
            figures = sum("image/png" in o.get("data", {}) for c in notebook.cells if c.cell_type == "code"
                          for o in c.outputs)
            assert len(images) == figures, f"{path.name}: {len(images)} images shown, {figures} in the notebook"
            assert page.locator("nav.book a", has_text="index").count() == 1
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))"):
            target, _, anchor = href.partition("#")
            if target.endswith(".html") and "/" not in target:
                assert (tmp_path / "book" / target).exists(), f"{path.name} links to a missing page {href}"
                if target == "api.html" and anchor:
                    assert anchor in anchors, f"{path.name} links to a missing API entry {href}"
    assert not fetched, f"pages tried to fetch {sorted(set(fetched))[:5]}"
    assert not errors, errors[:3]
    page.goto(pages[0].as_uri())
    page.screenshot(path=str(artifacts / "book-index.png"))
    page.goto(pages[3].as_uri())
    page.screenshot(path=str(artifacts / "book-notebook.png"))
    page.close()
