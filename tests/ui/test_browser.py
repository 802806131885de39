"""The whole UI path in a real browser: log in, trigger ``fruits_pipeline`` through the form, read its report.

Headless Chromium (Debian's ``chromium``, driven by Playwright) against the session's Airflow (tests/ui/conftest.py:
api-server, scheduler and dag-processor as local processes, the pipeline in local mode on 5 real images of each of
the 8 labels of the Fruits-360 sample). The test logs in through the login page, opens ``fruits_pipeline`` from the
DAG list, checks that the trigger form renders the params' help as Markdown, triggers a run with ``pca_k`` = 20
(and the sample as input), waits for it to succeed, opens the run's "Fruits report" tab and checks its numbers
against ``report.json`` and that its plots load, then the "Fruits reports" entry of the navigation, and that the
plugin's endpoints refuse requests without the session. Each step saves a screenshot under
``$FRUITS_TEST_ARTIFACTS`` (default ``local/test-artifacts/``, git-ignored); a failing step fails with its path.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

import pytest
import requests

from airflow_servers import ADMIN_PASSWORD
from repo import DAG_ID, REPO_ROOT
from sample_images import copy_images

CHROMIUM = os.environ.get("FRUITS_CHROMIUM", "/usr/bin/chromium")
# Headless in a container: no sandbox (no user namespaces), no GPU, nothing that phones home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(os.environ.get("FRUITS_TEST_ARTIFACTS", REPO_ROOT / "local" / "test-artifacts")) / "browser"
DATASET = "datasets/fruits-360-sample"
IMAGES_PER_LABEL = 5  # x 8 labels: 40 real images, as in the REST test
PCA_K = 20
RUN_TIMEOUT_S = 30 * 60
TIMEOUT_MS = 60_000  # one UI action on a 2-core machine running Spark
SUMMARY_FIELDS = ("images_read", "kept", "rejected", "duplicates", "final_rows")


class Steps:
    """Named test steps, each ending with a screenshot; a failing one fails the test with its screenshot's path."""

    def __init__(self, page, folder: Path) -> None:  # noqa: ANN001 - playwright's Page
        self.page = page
        self.folder = folder
        self.count = 0

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run the block as step ``name``; screenshot ``NN-name.png`` after it (``NN-name-FAILED.png`` on error)."""
        self.count += 1
        stem = f"{self.count:02d}-{name}"
        try:
            yield
        except Exception as exc:
            path = self.shot(f"{stem}-FAILED")
            raise AssertionError(f"browser step '{name}' failed: {exc}\nscreenshot: {path}") from exc
        self.shot(stem)

    def shot(self, stem: str) -> Path:
        path = self.folder / f"{stem}.png"
        try:
            self.page.screenshot(path=str(path))
        except Exception as exc:  # a crashed page must not hide the step's own error
            return Path(f"{path} (not written: {exc})")
        return path


@pytest.fixture
def browser_page() -> Iterator:
    """A Chromium page (1400x1000) of a fresh browser; Playwright cannot download browsers here."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium) or set FRUITS_CHROMIUM"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def test_trigger_from_the_form_and_read_the_report_in_the_browser(fruits_airflow, sample_dir, browser_page):
    from playwright.sync_api import expect

    servers, root, page = fruits_airflow.servers, fruits_airflow.root, browser_page
    base = servers.base_url
    copied = copy_images(sample_dir, root / DATASET, per_label=IMAGES_PER_LABEL, splits=("Training",))
    assert len(copied) >= 30
    folder = ARTIFACTS
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    steps = Steps(page, folder)
    t0 = time.monotonic()

    with steps.step("login-page"):
        page.goto(base + "/")
        expect(page).to_have_url(re.compile(r"/auth/login"))
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    with steps.step("logged-in"):
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page).not_to_have_url(re.compile(r"/auth/login"))
        assert "_token" in {c["name"] for c in page.context.cookies()}  # the UI's session: a JWT cookie

    with steps.step("dag-page"):
        page.goto(base + "/dags")
        page.get_by_role("link", name=DAG_ID, exact=True).first.click()
        expect(page).to_have_url(re.compile(rf"/dags/{DAG_ID}(/|$)"))
        # The DAG's own page, rendered: the list's row has a trigger button too, and a dialog opened from the list
        # goes away with it when the navigation completes (seen on a loaded machine).
        expect(page.get_by_text("Latest Dag Version")).to_be_visible(timeout=30_000)
        expect(page.get_by_role("button", name="Trigger")).to_be_visible()

    dialog = page.get_by_role("dialog")
    with steps.step("trigger-form"):
        page.get_by_role("button", name="Trigger").click()
        expect(dialog.locator("input[name=element_input_uri]")).to_be_visible()
        # The params' help is Markdown (description_md): `pca_variance` is rendered as code, no backtick shows.
        help_texts = dialog.locator('[data-part="helper-text"]')
        expect(help_texts.locator("code", has_text="pca_variance")).to_be_visible()
        assert help_texts.count() >= 7 and not [t for t in help_texts.all_inner_texts() if "`" in t]
        # Paused until now; the form shows the switch once it has read the DAG (slow on a loaded machine).
        expect(dialog.get_by_label(f"Unpause {DAG_ID} on trigger")).to_be_checked(timeout=30_000)
        dialog.locator("input[name=element_input_uri]").fill(DATASET)
        dialog.get_by_role("combobox").first.click()
        page.get_by_role("option", name="full", exact=True).click()
        dialog.locator("input[name=element_pca_k]").fill(str(PCA_K))
        expect(dialog.locator("input[name=element_pca_k]")).to_have_value(str(PCA_K))
    with steps.step("triggered"):
        dialog.get_by_test_id("trigger-dag-submit").click()
        expect(page).to_have_url(re.compile(rf"/dags/{DAG_ID}/runs/[^/]+$"))
        run_id = unquote(page.url.rsplit("/runs/", 1)[1])

    servers.login()  # REST calls of the test itself: the run's state and conf
    run = servers.wait_for_run(DAG_ID, run_id, timeout=RUN_TIMEOUT_S)
    print(f"run {run_id} {run['state']} after {time.monotonic() - t0:.0f} s")
    with steps.step("run-finished"):
        page.reload()
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()  # the run's state badge
        assert run["state"] == "success", run
        assert run["conf"]["pca_k"] == PCA_K and run["conf"]["mode"] == "full", run["conf"]

    day = dt.datetime.fromisoformat(run["logical_date"].replace("Z", "+00:00")).astimezone(dt.UTC).date()
    report = json.loads((root / "reports" / day.isoformat() / "report.json").read_text())
    assert report["k"] == PCA_K and report["images_read"] == len(copied)
    frame = page.frame_locator('iframe[title="Fruits report"]')
    with steps.step("report-view"):
        page.get_by_role("link", name="Fruits report", exact=True).click()  # the run page's tabs are links
        expect(page).to_have_url(re.compile(r"/plugin/fruits-report$"))
        expect(frame.locator("#run-id")).to_have_text(run_id)
        for key in SUMMARY_FIELDS:
            expect(frame.locator(f'[data-field="{key}"]')).to_have_text(f"{report[key]:,}")
        expect(frame.locator('[data-field="k"]')).to_have_text(str(PCA_K))
        cumulative = report["cumulative_explained_variance"]
        expect(frame.locator('[data-field="explained_variance"]')).to_have_text(f"{cumulative[-1]:.1%}")
        for label, rows in report["rows_per_label"].items():
            expect(frame.locator(f'#rows-per-label tr[data-label="{label}"] td.n').first).to_have_text(f"{rows:,}")
        expect(frame.locator("#rows-per-label tr[data-label]")).to_have_count(len(report["rows_per_label"]))
        for reason, count in report["rejected_by_reason"].items():
            expect(frame.locator(f'tr[data-reason="{reason}"] td.n')).to_have_text(f"{count:,}")
        plots = frame.locator("img[data-plot]")
        expect(plots).to_have_count(3)
        for i in range(3):
            plot = plots.nth(i)
            plot.scroll_into_view_if_needed()
            # Loaded and decoded: the PNG's own width (report.py draws 900x600), not the layout's.
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=plot.element_handle())
            assert plot.evaluate("img => [img.naturalWidth, img.naturalHeight]") == [900, 600]
        href = frame.locator('a[data-file="report.json"]').get_attribute("href")
        served = page.context.request.get(base + href)  # with the browser's session cookie
        assert served.status == 200 and served.json() == report
        frame.locator("h1").scroll_into_view_if_needed()

    with steps.step("reports-in-navigation"):
        page.get_by_text("Browse", exact=True).first.click()
        page.get_by_role("menuitem", name="Fruits reports").click()
        expect(page).to_have_url(re.compile(r"/plugin/fruits-reports(/|$)"))  # the UI appends the frame's path
        nav_frame = page.frame_locator('iframe[title="Fruits reports"]')
        expect(nav_frame.locator(f'tr[data-day="{day}"]')).to_be_visible()
        expect(nav_frame.locator(f'tr[data-day="{day}"] td.n').first).to_have_text(f"{report['images_read']:,}")

    with steps.step("plugin-refuses-without-session"):
        plugin_urls = [f"{base}/fruits-report/", f"{base}/fruits-report/files/{day}/report.json"]
        for url in plugin_urls:
            assert requests.get(url, timeout=30).status_code == 401, url
            forged = requests.get(url, cookies={"_token": "forged"}, timeout=30)
            assert forged.status_code in (401, 403), url
        # With the session, still nothing outside reports/<date>/<report file>.
        escape = page.context.request.get(f"{base}/fruits-report/files/{day}/..%2F..%2Fstages%2Fpca%2F_SUCCESS")
        assert escape.status == 404


def test_every_param_of_the_trigger_form_has_markdown_help():
    """The form renders ``description_md`` as Markdown and ``description`` as raw text (backticks and all)."""
    from fruits_dag.params import dag_params

    for name, param in dag_params().items():
        assert param.description is None and param.schema.get("description_md"), name
