"""nbs/sidebar.yml lists the tutorials by name, in reading order: a tutorial left out of it would have no page link."""
import sys
from pathlib import Path
from conftest import ROOT

sys.path.insert(0, str(ROOT/"tools"))
import render_docs


def test_every_tutorial_is_in_the_sidebar_once_quickstart_first():
    tutorials = dict(render_docs.sidebar())["Tutorials"]
    listed = [str(nb) for nb, _ in tutorials]
    on_disk = {str(p.relative_to(ROOT/"nbs")) for p in (ROOT/"nbs"/"tutorials").glob("*.ipynb")}
    assert sorted(listed) == sorted(on_disk), "add the new tutorial to nbs/sidebar.yml"
    assert listed[0] == "tutorials/quickstart.ipynb" and "tutorials/images.ipynb" in listed
