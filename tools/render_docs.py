"""CI's one execution of the notebooks: runs every notebook nbdev-test would (nbs/, recursively) top to bottom in a
real Jupyter kernel, two at a time, fails on any error, and renders each to HTML with nbconvert in _site_check/
(Quarto is not installed here; the pages are not committed). It skips the cells nbdev-test skips: those with a
`tst_flags` directive from pyproject.toml (`#| notest`, `#| gpu`, `#| slow`) and those with `#| eval: false`.

    .venv/bin/python tools/render_docs.py [--flags gpu,slow] [--save] [NOTEBOOK ...]

--flags  also run the cells with these flags, as `nbdev-test --flags` (e.g. `--flags gpu` on a machine with a GPU)
--save   write the executed outputs back into the notebooks (then nbdev-clean them), so the docs show them;
         only when every notebook passed, and review the diff before committing it
"""
import os, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import nbformat
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
    client = NotebookClient(nb, timeout=900, kernel_name="python3", skip_cells_with_tag=SKIP_TAG, record_timing=False,
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


def render(path: Path, force_flags=()) -> tuple:
    "Execute one notebook and write its HTML page; `(path, executed notebook, error or None, seconds)`."
    nb, error, dt = execute(path, force_flags)
    if error is None:
        html, _ = HTMLExporter().from_notebook_node(nb)
        page = path.relative_to(ROOT/"nbs") if path.is_relative_to(ROOT/"nbs") else Path(path.name)
        dest = OUT/page.with_suffix(".html")
        dest.parent.mkdir(parents=True, exist_ok=True); dest.write_text(html)
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
    paths = notebooks(args)
    # Two kernels at a time (this machine has two cores), the end-to-end notebooks (the longest) first.
    order = sorted(paths, key=lambda p: not (p.parent.name == "tutorials" or p.name == "index.ipynb"))
    with ThreadPoolExecutor(2) as pool:
        done = {r[0]: r for r in pool.map(lambda p: render(p, force), order)}
    results = [done[p] for p in paths]
    failed = [r for r in results if r[2]]
    for p, _, e, dt in results:
        print(f"{'FAIL' if e else 'ok  '} {dt:6.1f}s {os.path.relpath(p, ROOT)}" + (f"\n      {e}" if e else ""))
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if do_save and not failed:
        save(results); print(f"saved the outputs into {len(results)} notebooks (nbdev-clean ran)")
    elif do_save: print("nothing saved: a notebook failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
