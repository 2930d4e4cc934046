"""The committed notebooks are clean (DESIGN.md, notebook conventions): executed top to bottom, small, no stale
widgets, no paths of the machine that ran them, and the first output names the profile, device and commit."""

import ast
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def _texts(cell) -> list[str]:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            out.append("".join(o["text"]))
        for key in ("text/plain", "text/html"):
            out.append("".join(o.get("data", {}).get(key, "")))
    return out


def test_each_notebook_has_its_own_number_and_a_readme_row():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert len(numbers) == len(set(numbers)) and numbers[0] == "00", numbers
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"(notebooks/{path.name})" in readme, f"README's notebook table has no row for {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_committed_notebook_is_clean(path):
    nb = json.loads(path.read_text())
    cells = _code_cells(nb)
    counts = [c["execution_count"] for c in cells]
    assert None not in counts and counts == list(range(1, len(cells) + 1)), "execute top to bottom, in one kernel"
    assert path.stat().st_size < 1_000_000, f"{path.stat().st_size / 1e6:.2f} MB: keep notebooks well under 1 MB"
    assert "widgets" not in nb.get("metadata", {}), "saved widget state: strip it before committing"
    kernel = nb["metadata"]["kernelspec"]
    assert kernel["name"] == "python3", kernel

    outputs = json.dumps([c.get("outputs", []) for c in cells])
    for marker in ("/root/", "/home/", "/tmp/ipykernel", "/Users/", str(Path(__file__).parents[1])):
        assert marker not in outputs, f"an output shows a path of the machine that ran it ({marker})"
    assert "application/vnd.jupyter.widget-view+json" not in outputs, "a stale progress widget in the outputs"

    first = "".join(_texts(cells[0]))
    assert re.search(r"profile (smoke|full) · device \S+ · seed \d+ · commit \S+", first), first[:200]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_no_record_dict_is_echoed_and_no_warning_is_printed_twice(path):
    nb = json.loads(path.read_text())
    for cell in _code_cells(nb):
        body = ast.parse("\n".join(line for line in "".join(cell["source"]).splitlines()
                                   if not line.lstrip().startswith(("%", "!")))).body
        last = body[-1] if body else None
        echoed = (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
                  and getattr(last.value.func, "id", None) == "record"
                  and not "".join(cell["source"]).rstrip().endswith(";"))  # IPython shows no value after ";"
        assert not echoed, "record(...) as the last expression echoes its dict: make it a statement"
        stderr = ["".join(o["text"]) for o in cell.get("outputs", []) if o.get("name") == "stderr"]
        lines = [line for text in stderr for line in text.splitlines() if "Warning" in line]
        assert len(lines) == len(set(lines)), f"a warning printed twice: {lines}"


def _commit_of(path: Path) -> str:
    first = "".join(_texts(_code_cells(json.loads(path.read_text()))[0]))
    return re.search(r"· commit (\S+) ·", first).group(1)


def test_the_book_was_executed_from_one_clean_commit():
    """One commit reproduces every committed output: none ran with uncommitted changes, all ran at the same commit."""
    commits = {path.name[:2]: _commit_of(path) for path in NOTEBOOKS}
    dirty = sorted(n for n, c in commits.items() if c.endswith("+changes"))
    assert not dirty, f"notebooks {dirty} ran with uncommitted changes: re-run the book on a clean tree"
    assert len(set(commits.values())) == 1, f"the book ran at several commits: {commits}"


_PLOT_CALL = re.compile(r"\bplots\.(?!STYLE\b|smooth\b)\w+\(")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_every_plots_call_leaves_a_figure_and_every_chapter_has_one(path):
    cells = _code_cells(json.loads(path.read_text()))
    images = [sum("image/png" in o.get("data", {}) for o in c.get("outputs", [])) for c in cells]
    for cell, count in zip(cells, images, strict=True):
        calls = _PLOT_CALL.findall("".join(cell["source"]))
        assert count >= min(1, len(calls)), f"a cell calls {calls} and shows no figure:\n{''.join(cell['source'])[:300]}"
    assert sum(images) >= 1, "every chapter shows at least one figure"


_LINK = re.compile(r"\[(← )?([^\]]*?)( →)?\]\(([^)]+\.ipynb)\)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_every_chapter_ends_with_the_closer(path):
    """Takeaways, what this scale cannot show, exercises whose solutions CI runs, and links to both neighbours."""
    cells = json.loads(path.read_text())["cells"]
    last_code = max(i for i, c in enumerate(cells) if c["cell_type"] == "code")
    closer = "\n".join("".join(c["source"]) for c in cells[last_code + 1:] if c["cell_type"] == "markdown")
    headings = re.findall(r"^## (.+)$", closer, flags=re.M)
    assert headings[-3:] == ["Takeaways", "What this scale cannot show", "Exercises"], \
        f"the markdown after the last code cell has headings {headings}"
    assert re.search(r"^> ", closer, flags=re.M), "the limits of this scale stand in a quoted box"
    assert len(re.findall(r"^\d\. \*\*", closer, flags=re.M)) >= 2, "two or more numbered exercises"
    solutions = re.findall(r"Solutions, run by CI: `(tests/exercises/test_\w+\.py)`", closer)
    assert len(solutions) == 1 and (path.parents[1] / solutions[0]).is_file(), solutions
    index = NOTEBOOKS.index(path)
    # the last chapter leads back to the first
    expected = ([("←", NOTEBOOKS[index - 1].name)] if index > 0 else []) + [("→", NOTEBOOKS[(index + 1) % len(NOTEBOOKS)].name)]
    found = _LINK.findall(closer.splitlines()[-1])
    links = [("←" if back else "→", target) for back, _, _, target in found]
    assert links == expected, f"the last line links {links}, expected {expected}"
    for _, label, _, target in found:  # each link reads as its chapter's own title
        title = json.loads((path.parent / target).read_text())["cells"][0]["source"][0].removeprefix("# ").strip()
        assert label == title, f"link to {target} reads {label!r}; the chapter is called {title!r}"
