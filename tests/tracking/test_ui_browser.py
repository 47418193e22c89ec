"""The MLflow UI in a real browser: a small finished sweep's store, served by ``mlflow ui`` and driven through
Debian's Chromium, headless, by playwright (its own browser is never downloaded).

One module fixture runs a 4-trial smoke sweep (4 runs: enough for the correlation report, hence the parent's
description and headline metrics; no analysis but the norms, 3 epochs so that the curves have points) and serves its
store; the tests then look at what a researcher looks at: the experiment opens on its training runs, the parent run
lists its children and its headline, ``report.html`` renders in the artifact viewer with its figures, and a child's
metric charts show the per-epoch curves. Screenshots go to a temporary directory the tests print and are copied to
``/tmp/ui-screenshots/``.

Where Chromium is missing: ``make test`` installs Debian's package (the Makefile's ``chromium`` target, as root or
with passwordless sudo), so on such a machine the tests fail; anywhere else they are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from landscape_core import keys
from landscape_core.config import ANALYSES
from tests.sweeps.conftest import SMOKE, free_port, run_cli, wait_healthy
from tracking.headline import N_FINISHED, ui_route
from tracking.store import EXPERIMENT_KIND_TAG, TRAINING_KIND, default_tracking_uri

#: Debian's Chromium (``apt-get install chromium``) and the flags a machine without outside connections needs.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EPOCHS = 3
N_TRIALS = 4
#: The first load of the UI's bundles takes 10+ s on a busy 2-core machine.
TIMEOUT_MS = 90_000
SHOTS_COPY = Path("/tmp/ui-screenshots")


@pytest.fixture(scope="module", autouse=True)
def _patient_expect() -> Iterator[None]:
    """``expect`` waits as long as the pages may take (its own default is 5 s), for this module only."""
    expect.set_options(timeout=TIMEOUT_MS)
    yield
    expect.set_options(timeout=5_000)


def _installable_here() -> bool:
    """True where ``make test`` installs Chromium itself: Debian (its own ``chromium`` package; Ubuntu's is a snap),
    with apt-get, as root or with passwordless sudo."""
    os_release = Path("/etc/os-release")
    debian = os_release.exists() and "ID=debian" in os_release.read_text().split()
    if not debian or shutil.which("apt-get") is None:
        return False
    if os.geteuid() == 0:
        return True
    sudo = shutil.which("sudo")
    return sudo is not None and subprocess.run([sudo, "-n", "true"], capture_output=True).returncode == 0


def _chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    why = f"no Chromium at {CHROMIUM}"
    if _installable_here():
        pytest.fail(f"{why}: `make test` installs Debian's chromium package here (make chromium)", pytrace=False)
    pytest.skip(f"{why}, and this machine cannot apt-get it (Debian's chromium package is what these tests drive)")


@dataclass(frozen=True)
class Served:
    url: str
    client: MlflowClient
    experiment_id: str
    parent_id: str
    children: dict[str, str]  # run name -> run id
    shots: Path

    def shot(self, page: Page, name: str) -> Path:
        """Save a screenshot as ``<shots>/<name>.png`` (and a copy under /tmp/ui-screenshots) and return its path."""
        path = self.shots / f"{name}.png"
        page.screenshot(path=str(path))
        SHOTS_COPY.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SHOTS_COPY / path.name)
        return path


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[Served]:
    """A finished 4-trial smoke sweep, served by ``mlflow ui`` on a free loopback port."""
    _chromium()  # skip or fail before the minute of setup
    base = tmp_path_factory.mktemp("ui")
    root = base / "mlruns"
    root.mkdir()
    uri = default_tracking_uri(root)
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments()  # creates the database first, so that the server and the sweep never both do
    port = free_port()
    log = base / "mlflow-ui.log"
    # The README's `make ui`, on this store; the artifacts are the runs' own file:// URIs (no flag needed).
    command = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", uri]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with open(log, "w") as out:  # it starts (some 15 s) while the sweep runs
        server = subprocess.Popen(
            command, cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        skip = ",".join(ANALYSES)  # the norms are always measured: the report has measures
        sweep = ["--n", str(N_TRIALS), *SMOKE, "--train-size", "256", "--test-size", "128", "--epochs", str(EPOCHS)]
        # a primary hypothesis the norms-only population has, so that the report draws its scatter panels too
        result = run_cli("sweeps.seeds", *sweep, "--skip", skip, "--root", str(root), "--primary", "norm/weights")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        experiment = client.get_experiment_by_name("seeds")
        runs = client.search_runs([experiment.experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("run_kind") == "parent"]
        children = {r.info.run_name: r.info.run_id for r in runs if r.data.tags.get("run_kind") == "trial"}
        assert len(children) == N_TRIALS

        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, log)
        shots = base / "screenshots"
        shots.mkdir()
        print(f"\nMLflow UI screenshots in {shots} (copied to {SHOTS_COPY})")
        yield Served(url, client, experiment.experiment_id, parent.info.run_id, children, shots)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


@pytest.fixture(scope="module")
def browser(served) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def _context(browser: Browser) -> BrowserContext:
    """A fresh browser profile (nothing remembered), with MLflow's assistant panel closed (it covers a third of the
    page, and opens by itself on a first visit)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(
        "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
        "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
    )
    return context


@pytest.fixture()
def page(browser) -> Iterator[Page]:
    context = _context(browser)
    yield context.new_page()
    context.close()


def _open(page: Page, served: Served, route: str) -> None:
    page.goto(f"{served.url}/{route}", wait_until="domcontentloaded")


def test_the_experiment_opens_on_its_training_runs(served, browser, page):
    # The experiment is a model-training one, and the UI is told so (the tag the UI reads from the REST API).
    api = f"{served.url}/ajax-api/2.0/mlflow/experiments/get?experiment_id={served.experiment_id}"
    experiment = json.load(urllib.request.urlopen(api, timeout=30))["experiment"]
    tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    assert tags.get(EXPERIMENT_KIND_TAG) == TRAINING_KIND, f"experiment tags: {tags}"

    # As the README says: open the UI, switch the sidebar to "Model training" once, open experiment `seeds`.
    _open(page, served, "")
    page.get_by_text("Model training", exact=True).first.click()
    _open(page, served, "#/experiments")
    page.get_by_role("link", name="seeds", exact=True).first.click()
    _expect_training_runs(page, served, expand=True)
    served.shot(page, "1-experiment-runs")

    # The direct link (the form the parent's description links with) opens there too, in a fresh profile.
    context = _context(browser)
    fresh = context.new_page()
    _open(fresh, served, ui_route(served.experiment_id))
    _expect_training_runs(fresh, served)
    context.close()


def _expect_training_runs(page: Page, served: Served, expand: bool = False) -> None:
    """The runs table with the sweep's parent run, its trial runs nested under it (shown with ``expand``), not the
    GenAI overview of traces."""
    runs = re.escape(f"{served.url}/#/experiments/{served.experiment_id}/runs?workflowType=machine_learning")
    expect(page).to_have_url(re.compile(runs))
    parent = page.get_by_role("link", name="seeds-smoke", exact=True)
    expect(parent).to_be_visible()
    expect(page.get_by_text(f"{N_TRIALS + 1} matching runs")).to_be_visible()
    expect(page.get_by_text("No data available for the selected time range")).to_have_count(0)
    if expand:  # the unnamed button before the parent's name shows its children
        row = page.get_by_role("row").filter(has=parent)
        row.locator("button[data-component-id*='runnamecellrenderer']").first.click()
        for name in served.children:
            expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()


def test_the_parent_run_lists_its_children_and_its_headline(served, page):
    _open(page, served, ui_route(served.experiment_id, served.parent_id))
    expect(page.get_by_text("Child runs", exact=True)).to_be_visible()
    for name in served.children:
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    # The description: n and the verdicts (what the report said about the norms here).
    expect(page.get_by_text(f"{N_TRIALS} finished trials.").first).to_be_visible()
    expect(page.get_by_text("norm/dist_init", exact=True).first).to_be_visible()
    expect(page.get_by_role("link", name="report.html", exact=True)).to_be_visible()
    # The headline metrics, in the run's metrics table.
    expect(page.get_by_text(N_FINISHED, exact=True)).to_be_visible()
    served.shot(page, "2-parent-run")


def test_report_html_renders_in_the_artifact_viewer_with_its_figures(served, page):
    _open(page, served, ui_route(served.experiment_id, served.parent_id))
    with page.context.expect_page() as opened:  # the description's link (MLflow opens note links in a new tab)
        page.get_by_role("link", name="report.html", exact=True).click()
    page = opened.value
    route = ui_route(served.experiment_id, served.parent_id, "artifacts/report.html")
    expect(page).to_have_url(f"{served.url}/{route}")
    frame = page.frame_locator("iframe").first  # the artifact viewer shows an HTML file in an iframe
    expect(frame.get_by_role("heading", name=f"Sweep report: parent run {served.parent_id}")).to_be_visible()
    images = frame.locator("img")
    expect(images.first).to_be_visible()
    n_images = images.count()
    loaded = images.evaluate_all("imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).length")
    saved = Path(served.client.download_artifacts(served.parent_id, "report.html", str(served.shots)))
    assert n_images == saved.read_text().count("<img") and n_images >= 1
    assert loaded == n_images, f"{n_images - loaded} of {n_images} figures of report.html did not load"
    # the correlation section is figures: the primary hypothesis raw and given train loss, the forest plot, the heatmap
    alts = images.evaluate_all("imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).map(i => i.alt)")
    for start in ("Primary: norm/weights:test_loss", "Forest plot:", "Heatmap:"):
        assert any(alt.startswith(start) for alt in alts), (start, alts)
    expect(frame.get_by_text("Full tables: every measure and target")).to_be_visible()  # collapsed, not gone
    served.shot(page, "3-report-html")
    images.first.scroll_into_view_if_needed()
    served.shot(page, "3-report-html-figures")


def test_a_child_runs_charts_show_the_per_epoch_curves(served, page):
    name, run_id = sorted(served.children.items())[0]
    _open(page, served, ui_route(served.experiment_id, run_id, "model-metrics"))
    page.get_by_placeholder("Search metric charts").fill(keys.TRAIN_LOSS)
    expect(page.get_by_text(f"{name} ({keys.TRAIN_LOSS})", exact=True)).to_be_visible()  # the curve's legend
    expect(page.get_by_text("Step", exact=True).first).to_be_visible()  # a line chart over steps, not a bar
    plot = page.locator(".js-plotly-plot").first
    expect(plot).to_be_visible()
    traces = plot.evaluate("el => el.data.map(t => ({x: Array.from(t.x), y: Array.from(t.y)}))")
    history = sorted(served.client.get_metric_history(run_id, keys.TRAIN_LOSS), key=lambda m: m.step)
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))  # one point per epoch
    assert traces[0]["x"] == [m.step for m in history]
    assert traces[0]["y"] == pytest.approx([m.value for m in history])
    served.shot(page, "4-child-train-loss")
