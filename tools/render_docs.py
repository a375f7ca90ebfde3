"""CI's one execution of the notebooks: runs every notebook nbdev-test would (nbs/, recursively) top to bottom in a
real Jupyter kernel, two at a time, fails on any error, and renders each to HTML with nbconvert in _site_check/
(Quarto is not installed here; the pages are not committed). It skips the cells nbdev-test skips: those with a
`tst_flags` directive from pyproject.toml (`#| notest`, `#| gpu`, `#| slow`) and those with `#| eval: false`.

The pages read as the docs do: `#| hide` and `#| default_exp` cells are left out, `#|` directive lines and In/Out
prompts are not shown (nor the source of a cell that only calls `show_doc`), links between notebooks point to their
pages, a widget whose display data carries an HTML snapshot of its final state shows that snapshot (a static page
cannot run it), and every page has the sidebar of nbs/sidebar.yml, with the previous and next page at its foot.

    .venv/bin/python tools/render_docs.py [--flags gpu,slow] [--save] [NOTEBOOK ...]

--flags  also run the cells with these flags, as `nbdev-test --flags` (e.g. `--flags gpu` on a machine with a GPU)
--save   write the executed outputs back into the notebooks (then nbdev-clean them), so the docs show them;
         only when every notebook passed, and review the diff before committing it
"""
import copy, functools, glob, html, os, re, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
import nbformat, yaml
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from nbdev.config import get_config
from nbdev.doclinks import nbglob
from nbdev.test import nb_test_cells

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT/"_site_check"
SKIP_TAG = "aimass-skip"  # nbclient leaves cells with this tag unrun, outputs as they were


def skipped_cells(path: Path, nb, force_flags=()) -> list:
    "Indices of the code cells nbdev-test would not run (flagged, `eval: false`, or a `skip_exec` notebook)."
    flags = get_config(ROOT).tst_flags
    flags = flags.split() if isinstance(flags, str) else list(flags)
    runs = {c.get("id") for c in nb_test_cells(path, flags, list(force_flags))}
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.get("id") not in runs]


def execute(path: Path, force_flags=()) -> tuple:
    "`(executed notebook, error or None, seconds)` for one notebook run in its own kernel."
    t = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    skipped = skipped_cells(path, nb, force_flags)
    for i in skipped: nb.cells[i].metadata.setdefault("tags", []).append(SKIP_TAG)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", skip_cells_with_tag=SKIP_TAG, record_timing=True,
                            coalesce_streams=True, resources={"metadata": {"path": str(path.parent)}})
    try: client.execute()
    except Exception as e: return nb, f"{type(e).__name__}: {str(e)[-1500:]}", time.perf_counter() - t
    finally:
        for i in skipped:
            tags = nb.cells[i].metadata["tags"]; tags.remove(SKIP_TAG)
            if not tags: del nb.cells[i].metadata["tags"]
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if errors: return nb, f"error output: {errors[0].get('ename')}: {errors[0].get('evalue')}", time.perf_counter() - t
    return nb, None, time.perf_counter() - t


_DIRECTIVE = re.compile(r"^\s*#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def directives(cell) -> dict:
    "The `#| name value` lines a cell starts with: `{name: value}`."
    found = {}
    for line in cell.source.splitlines():
        m = _DIRECTIVE.match(line)
        if not m: break
        found[m[1]] = m[2]
    return found


def docs_cells(nb):
    "The cells a docs page shows, as it shows them: no hidden cells, no directive lines, no show_doc calls, widgets as their snapshots."
    cells = []
    for cell in nb.cells:
        d = directives(cell) if cell.cell_type == "code" else {}
        if "hide" in d or "default_exp" in d or d.get("include") == "false": continue
        if cell.cell_type == "code":
            lines = cell.source.splitlines()
            cell.source = "\n".join(lines[next((i for i, l in enumerate(lines) if not _DIRECTIVE.match(l)), len(lines)):]).strip("\n")
            if d.get("output") == "false": cell.outputs = []
            if d.get("echo") == "false" or re.fullmatch(r"(show_doc\([^\n]*\)\s*)+", cell.source):
                cell.metadata.setdefault("tags", []).append("remove_input")
            for o in cell.get("outputs", []):
                data = o.get("data", {})
                if WIDGET_VIEW in data and "text/html" in data: del data[WIDGET_VIEW]  # the snapshot of its final state
        cells.append(cell)
    nb.cells = cells
    if not any(WIDGET_VIEW in o.get("data", {}) for c in cells for o in c.get("outputs", [])):
        nb.metadata.pop("widgets", None)  # no widget left to run: the page loads no widget code
    return nb


def page_of(path: Path) -> Path:
    "Where the page of notebook `path` goes, relative to _site_check/: `tutorials/quickstart.html`."
    page = path.relative_to(ROOT/"nbs") if path.is_relative_to(ROOT/"nbs") else Path(path.name)
    return page.with_suffix(".html")


def link_pages(html_text: str) -> str:
    "Links to notebooks (`serving.ipynb`, `../00_core.ipynb#ref`) point to their pages (`.html`); other sites' links stay."
    def page(m):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:|//", m[1]): return m[0]  # https://..., another site's notebook
        return f'href="{m[1]}.html{m[2] or ""}"'
    return re.sub(r'href="([^"#]*)\.ipynb(#[^"]*)?"', page, html_text)


def notebook_title(path: Path) -> str:
    "A notebook's title: its first markdown heading, else its file name."
    for cell in nbformat.read(path, as_version=4).cells:
        m = re.search(r"^#\s+(.+)$", cell.source, re.M) if cell.cell_type == "markdown" else None
        if m: return m[1].strip()
    return path.stem


@functools.lru_cache(maxsize=None)  # once per run: every page has the same sidebar
def sidebar(nbs: Path = ROOT/"nbs") -> list:
    "nbs/sidebar.yml as `[(section or None, [(notebook path relative to nbs/, title), ...]), ...]`, `auto:` globs expanded."
    def entries(contents):
        out = []
        for c in contents:
            found = sorted(glob.glob(str(nbs/c["auto"].lstrip("/")))) if isinstance(c, dict) else [str(nbs/c)]
            out += [(Path(f).relative_to(nbs), notebook_title(Path(f))) for f in found if Path(f).exists()]
        return out
    spec = yaml.safe_load((nbs/"sidebar.yml").read_text())["website"]["sidebar"]["contents"]
    groups = []
    for c in spec:
        if isinstance(c, dict) and "section" in c: groups.append((c["section"], entries(c["contents"])))
        else: groups.append((None, entries([c])))
    return groups


_NAV_CSS = """<style>
body { margin-left: 17rem !important; }
nav.aimass-sidebar { position: fixed; top: 0; left: 0; bottom: 0; width: 15rem; overflow-y: auto; padding: 1rem;
  font: 14px/1.4 system-ui, sans-serif; background: #f7f7f9; border-right: 1px solid #ddd; }
nav.aimass-sidebar ul { list-style: none; margin: 0; padding: 0 0 0 .6rem; }
nav.aimass-sidebar .section { margin-top: .8rem; font-weight: 600; }
nav.aimass-sidebar a { text-decoration: none; } nav.aimass-sidebar a.current { font-weight: 700; }
nav.aimass-pager { display: flex; justify-content: space-between; margin: 2rem 1rem; font: 14px system-ui, sans-serif; }
</style>"""


def navigation(page: Path, groups: list) -> tuple:
    "`(sidebar HTML, previous/next HTML)` for the page at `page` (relative to _site_check/), links relative to it."
    here = page.with_suffix("")
    href = lambda nb: html.escape(os.path.relpath(nb.with_suffix(".html"), page.parent))
    item = lambda nb, title: (f'<li><a href="{href(nb)}"' + (' class="current"' if nb.with_suffix("") == here else "")
                              + f">{html.escape(title)}</a></li>")
    side = ['<nav class="aimass-sidebar"><ul>']
    for section, items in groups:
        body = "".join(item(nb, t) for nb, t in items)
        side.append(f'<li class="section">{html.escape(section)}<ul>{body}</ul></li>' if section else body)
    side.append("</ul></nav>")
    order = [(nb, t) for _, items in groups for nb, t in items]
    at = next((i for i, (nb, _) in enumerate(order) if nb.with_suffix("") == here), None)
    prev = f'<a href="{href(order[at-1][0])}">&larr; {html.escape(order[at-1][1])}</a>' if at else "<span></span>"
    nxt = f'<a href="{href(order[at+1][0])}">{html.escape(order[at+1][1])} &rarr;</a>' if at is not None and at + 1 < len(order) else ""
    return "".join(side), f'<nav class="aimass-pager">{prev}{nxt}</nav>'


def page_html(nb, page: Path, groups: list | None = None) -> str:
    "The docs page of executed notebook `nb`, to be written at `page` (relative to _site_check/)."
    from nbconvert.preprocessors import TagRemovePreprocessor
    exporter = HTMLExporter(template_name="lab", exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"remove_input"}), enabled=True)
    body, _ = exporter.from_notebook_node(docs_cells(copy.deepcopy(nb)))
    side, pager = navigation(page, sidebar() if groups is None else groups)
    body = body.replace("</head>", _NAV_CSS + "\n</head>", 1)
    body = re.sub(r"(<body[^>]*>)", lambda m: m[1] + "\n" + side, body, count=1)
    body = body.replace("</body>", pager + "\n</body>", 1)
    return link_pages(body)


def slow_cells(nb, at_least=5.0, most=3) -> list:
    "`(seconds, cell index, first line)` of the slowest cells that took `at_least` seconds: where a notebook's time goes."
    from datetime import datetime
    found = []
    for i, cell in enumerate(nb.cells):
        timing = cell.metadata.pop("execution", {}) if cell.cell_type == "code" else {}  # not kept in the pages
        start, end = timing.get("iopub.execute_input"), timing.get("shell.execute_reply")
        if not (start and end): continue
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
        if seconds >= at_least: found.append((seconds, i, cell.source.splitlines()[0][:80] if cell.source else ""))
    return sorted(found, reverse=True)[:most]


def render(path: Path, force_flags=()) -> tuple:
    "Execute one notebook and write its HTML page; `(path, executed notebook, error or None, seconds)`."
    nb, error, dt = execute(path, force_flags)
    nb.metadata["aimass_slow_cells"] = slow_cells(nb)
    if error is None:
        dest = OUT/page_of(path)
        dest.parent.mkdir(parents=True, exist_ok=True); dest.write_text(page_html(nb, page_of(path)))
    return path, nb, error, dt


def save(results):
    "Write the executed notebooks back, then let nbdev-clean tidy them as a commit needs."
    for path, nb, _, _ in results: nbformat.write(nb, path)
    for path, *_ in results:
        subprocess.run([str(Path(sys.executable).parent/"nbdev-clean"), "--fname", str(path)], check=True, cwd=ROOT)


def notebooks(args) -> list:
    "The notebooks named, or every one nbdev-test would test (nbs/, recursively, not `_*`, `.*` or beside a `.notest`)."
    if args: return [Path(a).resolve() for a in args]
    return sorted(p.resolve() for p in nbglob(ROOT/"nbs", as_path=True) if not (p.parent/".notest").exists())


def main(args):
    force = []
    if "--flags" in args:
        i = args.index("--flags"); force = args[i+1].replace(",", " ").split(); args = args[:i] + args[i+2:]
    do_save = "--save" in args
    args = [a for a in args if a != "--save"]
    os.environ["IN_TEST"] = "1"  # as nbdev-test
    os.environ["AIMASS_HOME"] = tempfile.mkdtemp(prefix="aimass-docs-")  # never the user's (notebooks set their own)
    # Two kernels share two cores: one torch thread each, or their OpenMP threads spin waiting on each other (beside
    # the images tutorial, the README's 10-epoch digits MLP took 33 s instead of 5.5 s). The tests run so too.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    paths = notebooks(args)
    # Two kernels at a time (this machine has two cores), the end-to-end notebooks (the longest) first.
    order = sorted(paths, key=lambda p: not (p.parent.name == "tutorials" or p.name == "index.ipynb"))
    done, t0 = {}, time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        for fut in as_completed([pool.submit(render, p, force) for p in order]):  # each line as its notebook ends: CI logs show progress
            p, nb, e, dt = done.setdefault(fut.result()[0], fut.result())
            slow = "".join(f"\n        {s:5.1f}s cell {i}: {line}" for s, i, line in nb.metadata.pop("aimass_slow_cells"))
            print(f"{'FAIL' if e else 'ok  '} {dt:6.1f}s {os.path.relpath(p, ROOT)}  ({time.perf_counter() - t0:.0f} s)"
                  + slow + (f"\n      {e}" if e else ""), flush=True)
    results = [done[p] for p in paths]
    failed = [r for r in results if r[2]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if do_save and not failed:
        save(results); print(f"saved the outputs into {len(results)} notebooks (nbdev-clean ran)")
    elif do_save: print("nothing saved: a notebook failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
