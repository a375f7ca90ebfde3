"""Checks the docs where Quarto is not installed: executes every notebook in nbs/ in a real Jupyter kernel and
renders it to HTML with nbconvert, failing on any error. The pages land in _site_check/ (not committed).

    .venv/bin/python tools/render_docs.py [--flags gpu] [NOTEBOOK ...]
"""
import os, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT/"_site_check"

SKIP_FLAGS = {"notest", "gpu", "slow"}  # as nbdev-test: cells marked `#| gpu` need hardware this machine may lack

def _flags(src: str) -> set:
    return {w for l in src.splitlines() if l.startswith("#|") for w in l[2:].split()}

def render(path: Path) -> tuple:
    t = time.perf_counter()
    nb = nbformat.read(path, as_version=4)
    skipped = {i: c.source for i, c in enumerate(nb.cells) if c.cell_type == "code" and _flags(c.source) & SKIP_FLAGS}
    for i in skipped: nb.cells[i].source = ""
    env_home = tempfile.mkdtemp(prefix="aimass-docs-")
    os.environ.setdefault("AIMASS_HOME", env_home)
    try:
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as e:
        return path, f"{type(e).__name__}: {str(e)[-1500:]}", time.perf_counter() - t
    for i, src in skipped.items(): nb.cells[i].source = src  # shown in the page, not run
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    if errors: return path, f"error output: {errors[0].get('ename')}: {errors[0].get('evalue')}", time.perf_counter() - t
    html, _ = HTMLExporter().from_notebook_node(nb)
    dest = OUT/path.relative_to(ROOT/"nbs").with_suffix(".html")
    dest.parent.mkdir(parents=True, exist_ok=True); dest.write_text(html)
    return path, None, time.perf_counter() - t

def main(args):
    if "--flags" in args:
        i = args.index("--flags"); SKIP_FLAGS.difference_update(args[i+1].split(",")); args = args[:i] + args[i+2:]
    nbs = [Path(a).resolve() for a in args] or sorted(p for p in (ROOT/"nbs").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    with ThreadPoolExecutor(2) as pool:  # two kernels at a time: this machine has two cores
        results = list(pool.map(render, nbs))
    failed = [(p, e) for p, e, _ in results if e]
    for p, e, dt in results: print(f"{'FAIL' if e else 'ok  '} {dt:6.1f}s {p.relative_to(ROOT)}" + (f"\n      {e}" if e else ""))
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
