"""The console in Chromium against a running node and Orthanc: sign in, watch a study arrive and
complete, resend its report and see it arrive in Orthanc, find the action in the audit log; a
viewer gets no resend button and its POST is refused; no page without signing in.

``PACS_NODE_CONSOLE_SHOTS=<folder>`` keeps screenshots of the overview and the study page
(``docs/img/console-*.png``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from pacs_node.db import users
from pacs_node.db.engine import make_engine, upgrade
from pacs_node.db.models import Role, Study
from tests.conftest import free_port, wait_until
from tests.integration.test_send import FAST_RETRIES, _destination, _report_for_received_study

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ADMIN, VIEWER = ("ada", "admin-password-1"), ("vic", "viewer-password-1")
PATIENT = ("Phantom^Synthetic", "PHANTOM-0001")


@pytest.fixture
def browser():  # noqa: ANN201 - a playwright Browser
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the Python package playwright is not installed")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (the Debian package chromium)")
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                             args=["--no-sandbox", "--use-angle=swiftshader"])
        yield browser
        browser.close()


def _sign_in(browser, base: str, who: tuple[str, str]):  # noqa: ANN001, ANN202 - playwright objects
    context = browser.new_context(viewport={"width": 1180, "height": 820})  # a tablet, landscape
    page = context.new_page()
    page.goto(f"{base}/")
    assert page.url == f"{base}/login?next=/"
    page.get_by_label("User name").fill(who[0])
    page.get_by_label("Password").fill(who[1])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/")
    return page


def _shot(page, name: str) -> None:  # noqa: ANN001
    folder = os.environ.get("PACS_NODE_CONSOLE_SHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"console-{name}.png"), full_page=True)


def test_console_in_a_browser(node_factory, orthanc, browser, tmp_path: Path) -> None:  # noqa: ANN001
    database_url = f"sqlite:///{tmp_path / 'node.db'}"
    engine = make_engine(database_url)
    upgrade(engine)
    users.add_user(engine, *ADMIN[:1], Role.ADMIN, ADMIN[1])
    users.add_user(engine, *VIEWER[:1], Role.VIEWER, VIEWER[1])
    engine.dispose()
    port = free_port()
    node = node_factory(database_url=database_url, destinations=[_destination(orthanc)], sending=FAST_RETRIES,
                        console={"enabled": True, "bind_address": "127.0.0.1", "port": port})
    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: "event=console_started" in node.output(), timeout=30)  # started after the listener

    anonymous = browser.new_context().new_page()
    anonymous.goto(f"{base}/studies")
    assert anonymous.url == f"{base}/login?next=/studies"
    assert anonymous.request.get(f"{base}/api/studies").status == 401

    page = _sign_in(browser, base, ADMIN)
    page.get_by_text("Receiving now").wait_for()
    report = _report_for_received_study(node, tmp_path)  # storescu -> node -> pass-through job; a report beside it
    reader = create_engine(database_url)
    with reader.connect() as connection:
        study_id = connection.scalar(select(Study.id).where(Study.study_uid == report["study_uid"]))
    reader.dispose()

    page.goto(f"{base}/studies")
    row = page.locator("tr", has=page.locator(f"a[href='/studies/{study_id}']"))
    assert "complete" in row.inner_text() and "done" in row.inner_text()
    assert PATIENT[0] not in page.content() and PATIENT[1] not in page.content()
    row.get_by_role("link").click()
    page.wait_for_url(f"{base}/studies/{study_id}")
    page.get_by_text(PATIENT[0]).wait_for()

    page.get_by_role("button", name="Resend reports").click()
    page.get_by_text(f"Deliver the reports of study #{study_id}").wait_for()
    page.get_by_role("button", name="Yes, resend").click()
    assert page.get_by_role("status").inner_text() == "queued 1 delivery"
    sent = {report["sr_uid"], *report["sc_uids"]}
    wait_until(lambda: sent <= {i["SOPInstanceUID"] for i in orthanc.instances()}, timeout=60, interval=0.5)

    page.get_by_role("link", name="Back").click()
    wait_until(lambda: page.reload() and "sent" in page.locator("h2:has-text('Deliveries') + div").inner_text(),
               timeout=30)
    _shot(page, "study")
    page.goto(f"{base}/audit")
    first = page.locator("tbody tr").first.inner_text()
    assert "ada" in first and "resend" in first and f"study {study_id}" in first and "ok" in first
    page.goto(f"{base}/")
    _shot(page, "overview")

    viewer = _sign_in(browser, base, VIEWER)
    viewer.goto(f"{base}/events")
    assert "event=node_started" in viewer.content()  # the node's own log records
    viewer.goto(f"{base}/studies/{study_id}")
    assert viewer.get_by_role("button", name="Resend reports").count() == 0
    assert PATIENT[0] not in viewer.content() and PATIENT[1] not in viewer.content()
    csrf = viewer.request.get(f"{base}/api/me").json()["csrf_token"]
    refused = viewer.request.post(f"{base}/actions/resend",
                                  form={"target": str(study_id), "csrf_token": csrf, "confirmed": "yes"})
    assert refused.status == 403
    refused = viewer.request.post(f"{base}/api/studies/{study_id}/resend", headers={"X-CSRF-Token": csrf})
    assert refused.status == 403
    node.stop()
