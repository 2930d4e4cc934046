"""`make book`: the executed notebooks as a static HTML site, built offline.

    python tools/book.py                      # writes build/book/
    python tools/book.py --out /tmp/book

- `index.html`: the README's introduction and its notebook table (whose last column says which profile and
  machine produced each committed run), every notebook linked to its page;
- `NN_name.html`: each committed notebook as it was executed (nbconvert's lab template), with a bar to the
  index, the neighbouring notebooks and the API page; links between notebooks point at their pages, and inline
  code that names a documented helper (`train.Trainer`, `lora.apply_lora`) links to its entry;
- `api.html`: every public name of every cookbook module (its `__all__`), with signature and docstring read
  from the code; "Shown in notebooks/NN §k." links back to the notebook.

Nothing is fetched, at build time or when the pages are read: figures are embedded in the pages, and the
MathJax and require.js scripts that nbconvert would load from a CDN are left out (formulas show as TeX source).
"""

from __future__ import annotations

import argparse
import html
import importlib
import inspect
import pkgutil
import re
import shutil
import sys
import time
from pathlib import Path

import mistune
import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
_ROW = re.compile(r"^\| *(\d\d) *\| *\[([^\]]+)\]\(notebooks/([\w.-]+\.ipynb)\) *\|")
_STYLE = """
nav.book { position: sticky; top: 0; z-index: 10; background: #f6f8fa; border-bottom: 1px solid #d0d7de;
           padding: 6px 16px; font: 14px system-ui, sans-serif; }
nav.book a { margin-right: 1.2em; }
body.book-page { max-width: 1000px; margin: 0 auto; padding: 0 16px 48px; font: 15px/1.5 system-ui, sans-serif; }
body.book-page table { border-collapse: collapse; } body.book-page td, body.book-page th
{ border: 1px solid #d0d7de; padding: 4px 8px; vertical-align: top; }
dl.api dt { font-family: monospace; margin-top: 1.2em; font-weight: bold; }
dl.api dd pre { white-space: pre-wrap; background: #f6f8fa; padding: 8px; }
"""


def notebook_rows(readme: Path = ROOT / "README.md") -> list[dict]:
    """The README's notebook table: number, title, file, and the row's cells as written."""
    rows = []
    for line in readme.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match:
            rows.append(dict(number=match[1], title=match[2], file=match[3], line=line))
    if not rows:
        raise ValueError(f"{readme} has no notebook table (rows like '| 00 | [title](notebooks/00_x.ipynb) | ...')")
    return rows


def _page(name: str) -> str:
    return Path(name).with_suffix(".html").name


def _document(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head>\n<body class=\"book-page\">{body}</body></html>\n")


# ----------------------------------------------------------------------------- the API page
def _public_modules() -> list[str]:
    """Every cookbook module or sub-package that declares `__all__`, in name order."""
    import cookbook

    names = ["cookbook"] + [m.name for m in pkgutil.walk_packages(cookbook.__path__, "cookbook.")]
    return sorted(n for n in names if not n.endswith("__main__"))


def _entry(qualified: str, obj) -> str:
    try:
        signature = str(inspect.signature(obj)) if callable(obj) else ""
    except (TypeError, ValueError):  # builtins and some C types have none
        signature = "(...)"
    kind = "class " if inspect.isclass(obj) else ""
    doc = html.escape(inspect.getdoc(obj) or "(no docstring)")
    return (f'<dt id="{qualified}">{kind}{html.escape(qualified)}{html.escape(signature)}</dt>'
            f"<dd><pre>{doc}</pre></dd>")


def api_page(pages: dict[str, str]) -> tuple[str, dict[str, str]]:
    """The API page's HTML, and {short reference: anchor} for linking inline code in the notebooks.

    A name is documented where its module lists it in `__all__` (re-exports by a sub-package's `__init__` point
    at the defining module's entry). Short references are `module.name` and `package.name` (`lora.apply_lora`,
    `finetune.apply_lora`). A module whose optional dependency is missing is listed with the import error.
    """
    sections, anchors = [], {}
    for module_name in _public_modules():
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:  # an optional extra that is not installed
            sections.append(f"<h2>{module_name}</h2><p>not importable here: {html.escape(str(error))}</p>")
            continue
        names = getattr(module, "__all__", None)
        if not names:
            continue
        entries = []
        for name in names:
            obj = getattr(module, name)
            home = getattr(obj, "__module__", module_name)
            qualified = f"{module_name}.{name}"
            if home != module_name and home.startswith("cookbook") and getattr(sys.modules.get(home), "__all__", None) \
                    and name in sys.modules[home].__all__:
                anchors.setdefault(f"{module_name.rsplit('.', 1)[-1]}.{name}", f"{home}.{name}")
                continue  # documented once, in the module that defines it
            entries.append(_entry(qualified, obj))
            anchors[f"{module_name.rsplit('.', 1)[-1]}.{name}"] = qualified
            anchors[qualified] = qualified
        if entries:
            doc = html.escape((inspect.getdoc(module) or "").split("\n\n")[0])
            sections.append(f'<h2 id="{module_name}">{module_name}</h2><p>{doc}</p><dl class="api">'
                            + "".join(entries) + "</dl>")
    body = "".join(sections)
    body = re.sub(r"notebooks/(\d\d)( §\d+)?", lambda m: _shown_in(m, pages), body)
    nav = '<nav class="book"><a href="index.html">index</a></nav>'
    return _document("cookbook API", nav + "<h1>cookbook API</h1>" + body), anchors


def _shown_in(match: re.Match, pages: dict[str, str]) -> str:
    page = pages.get(match[1])
    return f'<a href="{page}">{match[0]}</a>' if page else match[0]


# ----------------------------------------------------------------------------- notebook pages
def _link_code(body: str, anchors: dict[str, str]) -> str:
    """Inline code naming a documented helper links to its API entry (`train.Trainer`, `lora.merge(...)`)."""

    def link(match: re.Match) -> str:
        target = anchors.get(match[2]) or anchors.get(f"cookbook.{match[2]}")
        return f'<a href="api.html#{target}">{match[0]}</a>' if target else match[0]

    return re.sub(r"<code>(cookbook\.)?([A-Za-z_]\w*\.[A-Za-z_]\w*)(\([^<]*\))?</code>", link, body)


def _nav(rows: list[dict], i: int) -> str:
    links = ['<a href="index.html">index</a>']
    if i > 0:
        links.append(f'<a href="{_page(rows[i - 1]["file"])}">← {rows[i - 1]["number"]} {rows[i - 1]["title"]}</a>')
    if i + 1 < len(rows):
        links.append(f'<a href="{_page(rows[i + 1]["file"])}">{rows[i + 1]["number"]} {rows[i + 1]["title"]} →</a>')
    links.append('<a href="api.html">API</a>')
    return '<nav class="book">' + "".join(links) + "</nav>"


def notebook_page(exporter: HTMLExporter, path: Path, nav: str, anchors: dict[str, str]) -> str:
    body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
    body = re.sub(r'href="(?:\.\./notebooks/|notebooks/)?(\d\d_[\w-]+)\.ipynb', r'href="\1.html', body)
    body = _link_code(body, anchors)
    return re.sub(r"(<body[^>]*>)", lambda m: m[1] + f"<style>{_STYLE}</style>" + nav, body, count=1)


def index_page(readme: Path, rows: list[dict]) -> str:
    text = readme.read_text(encoding="utf-8")
    intro = text.split("\n## ", 1)[0]
    section = text.split("\n## Notebooks", 1)[1].split("\n## ", 1)[0]
    markdown = mistune.create_markdown(plugins=["table"])
    body = markdown(intro + "\n\n## Notebooks" + section)
    body = re.sub(r'href="notebooks/(\d\d_[\w-]+)\.ipynb"', r'href="\1.html"', body)
    nav = '<nav class="book"><a href="index.html">index</a><a href="api.html">API</a></nav>'
    return _document("DeepSeek training cookbook", nav + body)


def build(out: Path, readme: Path = ROOT / "README.md", notebooks: Path = NOTEBOOKS) -> list[Path]:
    """Write the site into `out` (replacing it); the pages written, index first."""
    rows = notebook_rows(readme)
    missing = [r["file"] for r in rows if not (notebooks / r["file"]).exists()]
    if missing:
        raise FileNotFoundError(f"the README's notebook table names notebooks that do not exist: {missing}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pages = {r["number"]: _page(r["file"]) for r in rows}
    api, anchors = api_page(pages)
    exporter = HTMLExporter(template_name="lab", mathjax_url="", require_js_url="")
    written = [out / "index.html", out / "api.html"]
    written[0].write_text(index_page(readme, rows), encoding="utf-8")
    written[1].write_text(api, encoding="utf-8")
    for i, row in enumerate(rows):
        page = out / _page(row["file"])
        page.write_text(notebook_page(exporter, notebooks / row["file"], _nav(rows, i), anchors), encoding="utf-8")
        written.append(page)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "book")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    pages = build(args.out)
    print(f"book: {len(pages)} pages in {args.out} ({time.perf_counter() - start:.0f} s); open {pages[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
