"""The docs pages tools/render_docs.py writes: hidden cells and prompts left out, a sidebar on every page, links to pages,
widgets as their HTML snapshots. Built from notebooks made here (nothing is executed)."""
import sys
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from pathlib import Path
from conftest import ROOT

sys.path.insert(0, str(ROOT/"tools"))
import render_docs

WIDGET = "application/vnd.jupyter.widget-view+json"
GROUPS = [(None, [(Path("index.ipynb"), "aimass")]),
          ("Tutorials", [(Path("tutorials/quickstart.ipynb"), "Quickstart"), (Path("tutorials/serving.ipynb"), "Serving")]),
          ("Layers", [(Path("00_core.ipynb"), "core")])]


def widget_output(model_id, html=None):
    data = {WIDGET: {"model_id": model_id, "version_major": 2, "version_minor": 0}, "text/plain": "VBox(children=(...))"}
    if html: data["text/html"] = html
    return new_output("display_data", data=data)


def notebook():
    nb = new_notebook(cells=[
        new_markdown_cell("# Quickstart\n\n> Every magic.\n\nSee [serving](serving.ipynb#start), [core](../00_core.ipynb) "
                          "and [elsewhere](https://example.org/x.ipynb)."),
        new_code_cell("#| hide\nimport os\nsecret_setup = 1"),
        new_code_cell("#| default_exp quick"),
        new_code_cell("#| export\ndef shown_function(): return 1", execution_count=3),
        new_code_cell("show_doc(shown_function)", outputs=[new_output("display_data", data={"text/markdown": "**shown_function** doc"})]),
        new_code_cell("1 + 1", execution_count=4, outputs=[new_output("execute_result", data={"text/plain": "2"}, execution_count=4)]),
        new_code_cell("dashboard", execution_count=5, outputs=[widget_output("aaa", "<table><tr><td>epoch 8 of 8</td></tr></table>")]),
        new_code_cell("server", execution_count=6, outputs=[widget_output("bbb", "<b>digits:v1 at http://127.0.0.1:8000</b>")]),
    ])
    # the dashboard's state was kept, the server's was not: both show their snapshots
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"aaa": {}}, "version_major": 2, "version_minor": 0}}
    return nb


def test_a_page_shows_what_the_docs_show():
    page = render_docs.page_html(notebook(), Path("tutorials/quickstart.html"), GROUPS)
    assert "secret_setup" not in page and "default_exp" not in page and "#| export" not in page  # hidden cells, directives
    assert "shown_function" in page and "show_doc(" not in page  # an export cell is the docs' code; show_doc shows its output
    body = page[page.index("<body"):]
    assert "jp-InputPrompt" not in body and "jp-OutputPrompt" not in body and "[4]:" not in body  # no In/Out prompts
    assert "epoch 8 of 8" in page and "digits:v1 at http://127.0.0.1:8000" in page  # widgets: their snapshots
    assert WIDGET not in page and "VBox(children" not in page and "html-manager" not in page  # no widget code to load


def test_links_point_to_pages_and_every_page_has_the_sidebar():
    page = render_docs.page_html(notebook(), Path("tutorials/quickstart.html"), GROUPS)
    assert 'href="serving.html#start"' in page and 'href="../00_core.html"' in page
    assert 'href="https://example.org/x.ipynb"' in page  # another site's notebook stays as it is
    assert '<nav class="aimass-sidebar">' in page and 'href="../index.html"' in page
    assert '<a href="quickstart.html" class="current">Quickstart</a>' in page
    assert '&larr; aimass</a><a href="serving.html">Serving &rarr;</a>' in page  # previous and next
    assert 'href="tutorials/quickstart.html"' in render_docs.page_html(notebook(), Path("index.html"), GROUPS)


def test_the_sidebar_is_nbs_sidebar_yml():
    groups = render_docs.sidebar()
    sections = [s for s, _ in groups]
    assert sections[0] is None and {"Tutorials", "Layers", "Front ends"} <= set(sections)
    pages = {str(nb) for _, items in groups for nb, _ in items}
    assert {"index.ipynb", "tutorials/quickstart.ipynb", "21_magics.ipynb"} <= pages
    assert dict(i for _, items in groups for i in items)[Path("21_magics.ipynb")] == "magics"


def test_rendered_pages_have_no_bare_asserts_in_the_tutorials():
    "Tutorials keep their checks in hidden cells: a page shows the work, not the test."
    for path in sorted((ROOT/"nbs"/"tutorials").glob("*.ipynb")):
        nb = render_docs.docs_cells(nbformat.read(path, as_version=4))
        shown = [c.source for c in nb.cells if c.cell_type == "code"]
        assert not [s for s in shown if any(line.lstrip().startswith(("assert ", "np.testing.assert")) for line in s.splitlines())], path.name


def test_slow_cells_name_where_a_notebook_spends_its_time():
    def timed(source, start, end):
        cell = new_code_cell(source)
        cell.metadata["execution"] = {"iopub.execute_input": f"2026-11-30T10:00:{start:02d}.000000Z", "shell.execute_reply": f"2026-11-30T10:00:{end:02d}.500000Z"}
        return cell
    nb = new_notebook(cells=[new_markdown_cell("# x"), timed("%aimass train mlp\n# more", 0, 30), timed("fast()", 30, 31),
                             timed("%aimass bench m", 31, 40), new_code_cell("not run")])
    assert render_docs.slow_cells(nb) == [(30.5, 1, "%aimass train mlp"), (9.5, 3, "%aimass bench m")]
    assert all("execution" not in c.metadata for c in nb.cells)  # the pages and saved notebooks keep no timings
