"""End to end in a real JupyterLab, driven by headless Chromium (Playwright): what a person sees.

Starts JupyterLab on 127.0.0.1, opens a notebook with the quickstart cells, runs them all and checks that the
training dashboard renders and updates, the Stop button ends a run cleanly, the benchmark plot appears, the
server widget shows its URL and request count, and no cell shows an error. Screenshots land in test-artifacts/.
"""
import json, os, re, shutil, signal, socket, subprocess, sys, time, uuid
from pathlib import Path
import pytest
from conftest import ROOT

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (tools/setup-browser.sh installs it)")]
ARTIFACTS = ROOT/"test-artifacts"

CELLS = [
    "%load_ext aimass",
    "%aimass train mlp --data digits --epochs 2000 --name digits-mlp -o run",   # Stop is clicked once it is going
    "print('STATUS', run.status, len(run.history), run.test_metrics['accuracy'])",
    "%aimass export digits-mlp -o exported",
    "%aimass bench digits-mlp --backends torch,onnx --batch-sizes 1,8 -o report",
    "%aimass serve digits-mlp -o server",
    "from aimass.data import load_data\nrows = load_data('digits').X[:5].reshape(5, 64).tolist()\n"
    "print('LABELS', [p['label'] for p in server.predict(rows)], 'EXPECTED', list(run.model.predict(rows)))",
    "import time; time.sleep(2.5)  # the server widget refreshes every second\nprint('STATS', server.stats().get('requests'))",
    "%aimass stop --all",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path, aimass_home):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path/"quickstart.ipynb")
    # Render every cell (JupyterLab 4 only puts cells near the viewport in the page by default) and skip the news prompt.
    settings = tmp_path/".lab-settings"
    (settings/"@jupyterlab"/"notebook-extension").mkdir(parents=True)
    (settings/"@jupyterlab"/"notebook-extension"/"tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    (settings/"@jupyterlab"/"apputils-extension").mkdir(parents=True)
    (settings/"@jupyterlab"/"apputils-extension"/"notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
    port, token = free_port(), uuid.uuid4().hex
    env = {**os.environ, "AIMASS_HOME": str(aimass_home), "JUPYTER_CONFIG_DIR": str(tmp_path/".jupyter"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path/".runtime"), "JUPYTERLAB_SETTINGS_DIR": str(settings)}
    log = open(tmp_path/"jupyterlab.log", "w")
    proc = subprocess.Popen([str(ROOT/".venv"/"bin"/"jupyter"), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}",
                             "--LabApp.expose_app_in_browser=True", "--ServerApp.port_retries=0", "--allow-root"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    import httpx
    for _ in range(120):
        try:
            if httpx.get(f"{base}/api/status", headers={"Authorization": f"token {token}"}, timeout=1).status_code == 200: break
        except httpx.HTTPError: pass
        if proc.poll() is not None: break
        time.sleep(0.5)
    else: proc.kill()
    if proc.poll() is not None:
        log.close()
        pytest.fail("JupyterLab did not start:\n" + (tmp_path/"jupyterlab.log").read_text()[-3000:])
    try: yield base, token, tmp_path
    finally:
        try: os.killpg(proc.pid, signal.SIGTERM); proc.wait(15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try: os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError: pass
        log.close()


def output_text(page, i):
    return page.evaluate(f"""() => {{
        const cells = document.querySelectorAll('.jp-Notebook .jp-Cell');
        return cells[{i}] ? cells[{i}].querySelector('.jp-Cell-outputWrapper')?.innerText || '' : ''; }}""")


def prompts(page):
    return page.evaluate("() => [...document.querySelectorAll('.jp-Notebook .jp-Cell .jp-InputPrompt')].map(e => e.innerText.trim())")


def test_quickstart_in_jupyterlab(jupyterlab):
    from playwright.sync_api import sync_playwright
    base, token, root = jupyterlab
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/lab/tree/quickstart.ipynb?token={token}", timeout=120_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
            page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-Notebook-ExecutionIndicator, .jp-Toolbar')", timeout=60_000)
            page.wait_for_timeout(3000)  # the kernel starts
            # Record every state the dashboards pass through (a training run on digits takes seconds).
            page.evaluate("""() => {
                window.__seen = [];
                const note = (i, t) => { if (t && !window.__seen.some(s => s[0] === i && s[1] === t)) window.__seen.push([i, t]); };
                new MutationObserver(() => {
                    document.querySelectorAll('.aimass-dashboard').forEach((d, i) => note(i, d.innerText));
                    const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[5];
                    note(-1, cell ? cell.querySelector('.jp-Cell-outputWrapper')?.innerText : '');
                }).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
            }""")
            def run_cell(i, wait=True, timeout=300_000):
                "Select cell i and run it, as a person does with Shift+Enter; wait until its prompt shows a number."
                page.evaluate("""(i) => { const nb = window.jupyterapp.shell.currentWidget.content;
                                         nb.activeCellIndex = i; window.jupyterapp.commands.execute('notebook:run-cell'); }""", i)
                if wait: page.wait_for_function("""(i) => /\\[\\d+\\]/.test(document.querySelectorAll('.jp-Notebook .jp-Cell .jp-InputPrompt')[i].innerText)""",
                                                arg=i, timeout=timeout)

            run_cell(0)  # (not awaiting the command's promise: it resolves only when the cell finishes)
            # Train: the dashboard appears and updates live; Stop ends the run cleanly after a few epochs.
            run_cell(1, wait=False)
            page.wait_for_function("() => /epoch ([3-9]|\\d\\d+)\\//.test(document.querySelector('.aimass-dashboard')?.innerText || '')", timeout=300_000)
            page.screenshot(path=str(ARTIFACTS/"01-training-dashboard.png"), full_page=True)
            page.locator(".aimass-dashboard").first.locator("button", has_text="Stop").click()
            page.wait_for_function("() => /\\[\\d+\\]/.test(document.querySelectorAll('.jp-Notebook .jp-Cell .jp-InputPrompt')[1].innerText)", timeout=120_000)
            page.screenshot(path=str(ARTIFACTS/"02-stopped.png"), full_page=True)
            seen = {int(m.group(1)) for i, t in page.evaluate("() => window.__seen") if i == 0 for m in [re.search(r"epoch (\d+)/2000", t)] if m}
            assert len(seen) >= 3, f"dashboard epochs seen: {sorted(seen)}"
            dashboard = page.locator(".aimass-dashboard").first
            assert "stopped" in dashboard.inner_text().lower() and "best epoch" in dashboard.inner_text()
            assert page.locator(".aimass-dashboard svg polyline").count() >= 2
            button = dashboard.locator("button").first  # no longer styled as Stop once the run is over
            assert "Run stopped" in button.inner_text() and "mod-warning" not in button.get_attribute("class") and button.is_disabled()
            assert any("epochs/s · ETA" in t for i, t in page.evaluate("() => window.__seen") if i == 0), "no speed or time left shown"
            for i in range(2, len(CELLS)): run_cell(i)
            page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS/"03-all-cells.png"), full_page=True)

            texts = [output_text(page, i) for i in range(len(CELLS))]
            errors = [i for i, t in enumerate(texts) if re.search(r"Traceback|UsageError|Error:", t)]
            assert not errors, f"cells {errors} show errors: {[texts[i][-500:] for i in errors]}"
            status = re.search(r"STATUS (\w+) (\d+) ([\d.]+)", texts[2])
            assert status and status.group(1) == "stopped" and 3 <= int(status.group(2)) < 2000, texts[2][-300:]
            labels = re.search(r"LABELS (\[.*?\]) EXPECTED (\[.*?\])", texts[6])
            assert labels and labels.group(1) == labels.group(2)
            assert page.locator(".jp-Notebook .jp-Cell").nth(4).locator("img").count() >= 1, "no benchmark plot"
            assert re.search(r"http://127\.0\.0\.1:\d+", texts[5]), texts[5][-300:]
            stats = re.search(r"STATS (\d+)", texts[7])
            assert stats and int(stats.group(1)) >= 1
            widget_states = [t for i, t in page.evaluate("() => window.__seen") if i == -1]
            counts = [int(m.group(1).replace(",", "")) for t in widget_states for m in [re.search(r"requests\s+([\d,]+)", t)] if m]
            assert counts and max(counts) >= 1, f"server widget never showed a request count: {widget_states[-3:]}"
            page.locator(".jp-Notebook .jp-Cell").nth(5).screenshot(path=str(ARTIFACTS/"04-server-widget.png"))
            page.locator(".jp-Notebook .jp-Cell").nth(4).screenshot(path=str(ARTIFACTS/"05-bench-plot.png"))
        finally:
            try:  # what the page showed, for the artifacts (also when an assertion failed)
                (ARTIFACTS/"outputs.json").write_text(json.dumps({"cells": [output_text(page, i) for i in range(len(CELLS))],
                                                                  "seen": page.evaluate("() => window.__seen || []")}, indent=1))
                page.screenshot(path=str(ARTIFACTS/"99-last.png"), full_page=True)
            except Exception: pass
            browser.close()
