"""tools/book.py (`make book`): the index follows the README's table, links resolve, nothing is fetched."""

import importlib.util
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("book", ROOT / "tools" / "book.py")
book = sys.modules["book"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(book)

README = """# Title

Intro paragraph.

## Notebooks

| # | notebook | what it shows | committed run |
|---|---|---|---|
| 00 | [first](notebooks/00_first.ipynb) | a | smoke, CPU |
| 01 | [second](notebooks/01_second.ipynb) | b | full, H200 |

## Other
not in the index
"""


def _notebook(path: Path, markdown: str) -> None:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_markdown_cell(markdown),
                      nbformat.v4.new_code_cell("1 + 1", execution_count=1,
                                                outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"},
                                                                                execution_count=1)])]
    nbformat.write(notebook, path)


def test_site_from_a_readme_table(tmp_path):
    (tmp_path / "nb").mkdir()
    (tmp_path / "README.md").write_text(README)
    _notebook(tmp_path / "nb" / "00_first.ipynb", "See [the next one](01_second.ipynb) and `train.Trainer`, "
                                                   "`lora.apply_lora(model)`, `no.such_thing`.")
    _notebook(tmp_path / "nb" / "01_second.ipynb", "$x^2$ stays TeX.")
    pages = book.build(tmp_path / "out", readme=tmp_path / "README.md", notebooks=tmp_path / "nb")
    assert [p.name for p in pages] == ["index.html", "api.html", "00_first.html", "01_second.html"]
    index = pages[0].read_text()
    assert 'href="00_first.html"' in index and "full, H200" in index and "not in the index" not in index
    first = pages[2].read_text()
    assert 'href="01_second.html"' in first and ".ipynb" not in re.sub(r"<title>.*?</title>", "", first)
    assert '<a href="api.html#cookbook.train.trainer.Trainer"><code>train.Trainer</code></a>' in first
    assert '<a href="api.html#cookbook.finetune.lora.apply_lora"><code>lora.apply_lora(model)</code></a>' in first
    assert "<code>no.such_thing</code>" in first  # unknown names stay plain
    assert "→" in first and "←" not in first and "←" in pages[3].read_text()  # neighbours in the bar
    api = pages[1].read_text()
    for anchor in ("cookbook.train.trainer.Trainer", "cookbook.finetune.lora.apply_lora"):
        assert f'id="{anchor}"' in api
    assert api.count('id="cookbook.train.trainer.Trainer"') == 1  # re-exports are documented once
    for page in pages:
        assert not re.findall(r'<script[^>]+src="https?://', page.read_text()), page.name


def test_a_missing_notebook_or_table_is_named(tmp_path):
    (tmp_path / "README.md").write_text(README)
    with pytest.raises(FileNotFoundError, match="00_first.ipynb"):
        book.build(tmp_path / "out", readme=tmp_path / "README.md", notebooks=tmp_path)
    (tmp_path / "README.md").write_text("# no table\n")
    with pytest.raises(ValueError, match="no notebook table"):
        book.notebook_rows(tmp_path / "README.md")

