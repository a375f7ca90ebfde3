"""Writes README.md from nbs/index.ipynb (nbdev's own nbdev-readme needs Quarto, which is not installed here).

    .venv/bin/python tools/readme.py          # write README.md
    .venv/bin/python tools/readme.py --check  # exit 1 when README.md is out of date
"""
import re, sys
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]

def render() -> str:
    nb = nbformat.read(ROOT/"nbs"/"index.ipynb", as_version=4)
    nb.cells = [c for c in nb.cells if not c.source.lstrip().startswith(("#| hide", "#|hide"))]
    for c in nb.cells:
        if c.cell_type == "code": c.source = "\n".join(l for l in c.source.splitlines() if not l.startswith("#|")); c.outputs = []
    nb.metadata["language_info"] = {"name": "python"}  # fenced code blocks marked as python
    body, _ = MarkdownExporter().from_notebook_node(nb)
    body = re.sub(r"\]\((?![a-z]+:|/|#)([^)]+\.ipynb)\)", r"](nbs/\1)", body)  # links between notebooks, from the repo root
    return "<!-- Generated from nbs/index.ipynb by tools/readme.py: edit the notebook, not this file. -->\n\n" + body.strip() + "\n"

if __name__ == "__main__":
    text, readme = render(), ROOT/"README.md"
    if "--check" in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            sys.exit("README.md is out of date with nbs/index.ipynb: run .venv/bin/python tools/readme.py")
    else: readme.write_text(text)
