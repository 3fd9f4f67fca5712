"""The REST API and pages for both roles: what they show (no patient data in lists), what they do, the audit log."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select, update

from pacs_node.db.deliveries import claim_delivery
from pacs_node.db.models import (
    AuditEntry, Delivery, DeliveryState, DestinationHealth, Job, JobState, ReportObject, utcnow,
)
from tests.conftest import free_port
from tests.console.conftest import ADMIN, PATIENT_ID, PATIENT_NAME, RESULT, STUDY_UID, VIEWER, Console

READS = ["/api/me", "/api/overview", "/api/studies", "/api/studies/{study}", "/api/destinations", "/api/audit",
         "/api/config", "/api/events"]
PHI = (PATIENT_NAME, PATIENT_ID, STUDY_UID, "DOE", "ACC-55", "19600101")


def _bearer(console: Console, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {console.tokens[role]}"}


def _audit(console: Console) -> list[tuple[str, str, str, str]]:
    with console.engine.connect() as connection:
        return [(r.actor, r.action, r.target, r.outcome)
                for r in connection.execute(select(AuditEntry).order_by(AuditEntry.id)).all()]


def _no_phi(text: str) -> None:
    for value in PHI:
        assert value not in text


@pytest.mark.parametrize("role", ["viewer", "admin"])
def test_both_roles_read_everything(console: Console, role: str) -> None:
    for path in READS:
        response = console.client.get(path.format(study=console.study), headers=_bearer(console, role))
        assert response.status_code == 200, path


def test_openapi_lists_every_endpoint(console: Console) -> None:
    paths = console.client.get("/api/openapi.json").json()["paths"]
    expected = {p.replace("{study}", "{study_id}") for p in READS} | {
        "/api/studies/{study_id}/resend", "/api/studies/{study_id}/reanalyse", "/api/deliveries/{delivery_id}/retry",
        "/api/destinations/{name}/pause", "/api/destinations/{name}/resume", "/api/destinations/{name}/echo"}
    assert expected <= set(paths)
    assert not any(path in paths for path in ("/", "/login", "/studies"))


def test_overview_numbers(console: Console) -> None:
    overview = console.client.get("/api/overview", headers=_bearer(console, "viewer")).json()
    assert overview["studies_today"] in (0, 1)  # 0 right after midnight UTC
    assert overview["deliveries_failed"] == 1 and overview["queue_depth"] == 0
    assert overview["listener_up"] and overview["model"] == "lung-nodule-synthetic-v3"
    assert overview["uptime_s"] >= 7200 and overview["spool_free_bytes"] > 0


def test_study_list_shows_numbers_and_outcomes_without_patient_data(console: Console) -> None:
    for role in ("viewer", "admin"):
        response = console.client.get("/api/studies", headers=_bearer(console, role))
        _no_phi(response.text)
    [row] = response.json()["items"]
    assert (row["id"], row["state"], row["series"], row["instances"]) == (console.study, "complete", 2, 4)
    assert (row["job"]["findings"], row["job"]["lung_rads"], row["job"]["outcome"]) == (2, "4A", "analysed")
    assert row["deliveries"] == {"pacs": "sent", "web": "failed"}


def test_study_list_filters_and_pages(console: Console) -> None:
    get = lambda query: console.client.get(f"/api/studies?{query}", headers=_bearer(console, "viewer"))  # noqa: E731
    assert get("state=complete").json()["total"] == 1
    assert get("state=receiving").json()["total"] == 0
    today = dt.datetime.now(dt.UTC).date()
    assert get(f"from={today - dt.timedelta(days=1)}&to={today + dt.timedelta(days=1)}").json()["total"] == 1
    assert get(f"from={today + dt.timedelta(days=1)}").json()["total"] == 0
    assert get("page=2&per_page=1").json()["items"] == []
    assert get("state=bogus").status_code == 422


def test_patient_block_only_for_admins_on_the_study(console: Console) -> None:
    viewer = console.client.get(f"/api/studies/{console.study}", headers=_bearer(console, "viewer"))
    assert viewer.json()["patient"] is None
    _no_phi(viewer.text)
    admin = console.client.get(f"/api/studies/{console.study}", headers=_bearer(console, "admin")).json()
    assert admin["patient"]["patient_name"] == PATIENT_NAME and admin["patient"]["patient_id"] == PATIENT_ID
    assert {s["series_number"]: s["analysis"] for s in admin["series"]} == {2: "chosen", 3: "rejected"}
    assert admin["jobs"][0]["timings_s"] == {"detect_s": 1.5}
    assert console.client.get("/api/studies/999", headers=_bearer(console, "admin")).status_code == 404


def test_pages_show_patient_data_to_admins_on_the_study_page_only(console: Console) -> None:
    console.login(VIEWER)
    for path in ("/", "/studies", f"/studies/{console.study}", "/audit", "/events", "/destinations"):
        page = console.client.get(path)
        assert page.status_code == 200
        _no_phi(page.text)
    study_page = console.client.get(f"/studies/{console.study}").text
    assert "Resend reports" not in study_page and "Retry now" not in study_page
    admin = console.fresh_client()
    console.login(ADMIN, admin)
    study_page = admin.get(f"/studies/{console.study}").text
    assert PATIENT_NAME in study_page and "Resend reports" in study_page and "Retry now" in study_page
    csrf = admin.get("/api/me").json()["csrf_token"]
    assert study_page.count(f'name="csrf_token" value="{csrf}"') == 4  # sign out, resend, analyse again, retry
    _no_phi(admin.get("/studies").text)


def test_config_is_redacted(console: Console) -> None:
    config = console.client.get("/api/config", headers=_bearer(console, "viewer"))
    assert "s3cret-stow-token" not in config.text
    web = next(d for d in config.json()["destinations"] if d["name"] == "web")
    assert web["auth"]["token"] == "***"


def test_config_hides_the_database_password(console: Console) -> None:
    from dataclasses import replace

    from pacs_node.console.queries import effective_config

    settings = console.view.settings.model_copy(update={"storage": console.view.settings.storage.model_copy(
        update={"database_url": "postgresql://node:hunter2@db/pacs"})})
    assert effective_config(replace(console.view, settings=settings))["storage"]["database_url"] == \
        "postgresql://node:***@db/pacs"


def test_config_hides_the_object_store_keys(console: Console) -> None:
    from dataclasses import replace

    from pacs_node.config.sections import S3Storage
    from pacs_node.console.queries import effective_config

    s3 = S3Storage(bucket="pacs-objects", access_key_id="AKIAEXAMPLE", secret_access_key="wJalrXUtnFEMI")
    settings = console.view.settings.model_copy(update={"storage": console.view.settings.storage.model_copy(
        update={"s3": s3})})
    shown = effective_config(replace(console.view, settings=settings))["storage"]["s3"]
    assert shown["access_key_id"] == shown["secret_access_key"] == "***"
    assert shown["bucket"] == "pacs-objects" and shown["verify_tls"] is True


@pytest.mark.parametrize("path", ["/api/studies/{study}/resend", "/api/studies/{study}/reanalyse",
                                  "/api/deliveries/{delivery}/retry", "/api/destinations/pacs/pause",
                                  "/api/destinations/pacs/resume", "/api/destinations/pacs/echo"])
def test_viewers_cannot_act(console: Console, path: str) -> None:
    url = path.format(study=console.study, delivery=console.failed_delivery)
    assert console.client.post(url, headers=_bearer(console, "viewer")).status_code == 403
    csrf = console.login(VIEWER)
    assert console.client.post(url, headers={"X-CSRF-Token": csrf}).status_code == 403
    assert [a for a in _audit(console) if a[1] == "forbidden"] == [("vic", "forbidden", f"POST {url}", "denied")] * 2


def test_viewer_form_post_is_refused(console: Console) -> None:
    csrf = console.login(VIEWER)
    response = console.client.post("/actions/resend", data={"target": str(console.study), "csrf_token": csrf,
                                                            "confirmed": "yes"})
    assert response.status_code == 403
    assert not [a for a in _audit(console) if a[1] == "resend"]


def test_resend_queues_the_report_again_and_is_audited(console: Console) -> None:
    response = console.client.post(f"/api/studies/{console.study}/resend", headers=_bearer(console, "admin"))
    assert response.status_code == 200 and response.json()["outcome"] == "ok"
    with console.engine.connect() as connection:
        assert connection.scalar(select(Delivery.id).where(Delivery.state == DeliveryState.PENDING)) is not None
    assert ("ada", "resend", f"study {console.study}", "ok") in _audit(console)


def test_resend_is_refused_when_retention_deleted_the_reports(console: Console) -> None:
    with console.engine.begin() as connection:
        connection.execute(update(ReportObject).values(purged_at=utcnow()))
    response = console.client.post(f"/api/studies/{console.study}/resend", headers=_bearer(console, "admin"))
    assert response.status_code == 409 and "retention" in response.json()["message"]
    assert ("ada", "resend", f"study {console.study}", "refused") in _audit(console)


def test_reanalyse_queues_one_job(console: Console) -> None:
    url = f"/api/studies/{console.study}/reanalyse"
    assert console.client.post(url, headers=_bearer(console, "admin")).status_code == 200
    again = console.client.post(url, headers=_bearer(console, "admin"))
    assert again.status_code == 409 and "queued or running" in again.json()["message"]
    with console.engine.connect() as connection:
        assert connection.scalar(select(Job.id).where(Job.state == JobState.QUEUED)) is not None
    assert console.client.post("/api/studies/999/reanalyse", headers=_bearer(console, "admin")).status_code == 404


def test_retry_makes_a_failed_delivery_due_now(console: Console) -> None:
    url = f"/api/deliveries/{console.failed_delivery}/retry"
    assert console.client.post(url, headers=_bearer(console, "admin")).status_code == 200
    with console.engine.connect() as connection:
        row = connection.execute(select(Delivery).where(Delivery.id == console.failed_delivery)).one()
    assert (row.state, row.attempts) == (DeliveryState.PENDING, 0)
    assert ("ada", "retry", f"delivery {console.failed_delivery}", "ok") in _audit(console)


def test_pause_holds_deliveries_until_resume(console: Console) -> None:
    admin = _bearer(console, "admin")
    console.client.post(f"/api/deliveries/{console.failed_delivery}/retry", headers=admin)  # due now, to "web"
    assert console.client.post("/api/destinations/web/pause", headers=admin).json()["outcome"] == "ok"
    assert console.client.post("/api/destinations/web/pause", headers=admin).status_code == 409
    assert claim_delivery(console.engine, "test") is None
    [web] = [d for d in console.client.get("/api/destinations", headers=admin).json() if d["name"] == "web"]
    assert (web["state"], web["paused_by"]) == ("paused", "ada")
    assert console.client.get("/api/overview", headers=admin).json()["paused_destinations"] == ["web"]
    # a probe answering closes the breaker, never a manual pause
    with console.engine.begin() as connection:
        connection.execute(update(DestinationHealth).values(open_since=None, consecutive_failures=0))
    assert claim_delivery(console.engine, "test") is None
    assert console.client.post("/api/destinations/web/resume", headers=admin).json()["outcome"] == "ok"
    assert claim_delivery(console.engine, "test").destination == "web"
    assert console.client.post("/api/destinations/nowhere/pause", headers=admin).status_code == 404


def test_echo_reports_success_and_failure(console: Console) -> None:
    admin = _bearer(console, "admin")
    down = console.client.post("/api/destinations/pacs/echo", headers=admin)
    assert down.status_code == 502 and down.json()["outcome"] == "failed"
    scp = AE(ae_title="PACS")
    scp.add_supported_context(Verification)
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False)
    try:
        destination = console.view.settings.destinations[0].model_copy(update={"port": port})
        settings = console.view.settings.model_copy(update={"destinations": [destination]})
        console.client.app.state.view = type(console.view)(**{**vars(console.view), "settings": settings})
        up = console.client.post("/api/destinations/pacs/echo", headers=admin)
    finally:
        server.shutdown()
    assert up.status_code == 200 and "C-ECHO answered" in up.json()["message"]
    assert [a[3] for a in _audit(console) if a[1] == "echo"] == ["failed", "ok"]


def test_form_action_confirms_then_acts(console: Console) -> None:
    csrf = console.login(ADMIN)
    form = {"target": str(console.study), "csrf_token": csrf, "back": f"/studies/{console.study}"}
    confirm = console.client.post("/actions/reanalyse", data=form)
    assert confirm.status_code == 200 and "Queue a new analysis of study" in confirm.text
    assert not [a for a in _audit(console) if a[1] == "reanalyse"]
    done = console.client.post("/actions/reanalyse", data={**form, "confirmed": "yes"})
    assert done.status_code == 200 and "analysis queued" in done.text
    assert ("ada", "reanalyse", f"study {console.study}", "ok") in _audit(console)
    audit_page = console.client.get("/audit").text
    assert "reanalyse" in audit_page and f"study {console.study}" in audit_page


def test_audit_api_lists_actions_newest_first(console: Console) -> None:
    admin = _bearer(console, "admin")
    console.client.post("/api/destinations/pacs/pause", headers=admin)
    console.client.post("/api/destinations/pacs/resume", headers=admin)
    audit = console.client.get("/api/audit", headers=_bearer(console, "viewer")).json()
    assert [(r["action"], r["target"]) for r in audit["items"][:2]] == [("resume", "destination pacs"),
                                                                      ("pause", "destination pacs")]


def test_events_come_from_the_nodes_buffer(console: Console) -> None:
    logger = logging.getLogger("pacs_node.test")
    logger.addHandler(console.view.events)
    logger.setLevel(logging.DEBUG)  # the node's root logger is at INFO; the handler keeps INFO and above
    try:
        logger.info("event=test_event value=1")
        logger.debug("event=hidden_debug")
        logger.warning("event=test_warning")
    finally:
        logger.removeHandler(console.view.events)
        logger.setLevel(logging.NOTSET)
    events = console.client.get("/api/events", headers=_bearer(console, "viewer")).json()
    assert [e["message"] for e in events] == ["event=test_warning", "event=test_event value=1"]
    warnings = console.client.get("/api/events?level=WARNING", headers=_bearer(console, "viewer")).json()
    assert [e["level"] for e in warnings] == ["WARNING"]
    console.login(VIEWER)
    assert "event=test_warning" in console.client.get("/events").text


def test_static_stylesheet_is_served(console: Console) -> None:
    response = console.client.get("/static/console.css")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/css")


def test_concurrent_logins_share_one_signing_key(console: Console) -> None:
    results = []

    def sign_in() -> None:
        client = console.fresh_client()
        console.login(VIEWER, client)
        results.append(client.get("/api/me").status_code)

    threads = [threading.Thread(target=sign_in) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [200] * 4


@pytest.mark.parametrize(("prior", "shown"), [
    ({"status": "found", "source": "pacs", "study_date": "20251130", "instances": 240}, "found 2025-11-30 at pacs (240 images)"),
    ({"status": "unavailable", "reason": "pacs: connection refused"}, "unavailable: pacs: connection refused"),
    (None, None),
])
def test_the_study_page_says_what_the_prior_lookup_found(console: Console, prior: dict | None, shown: str | None) -> None:
    with console.engine.begin() as connection:
        result = {**RESULT, **({"prior": prior} if prior else {})}
        connection.execute(update(Job).values(result=json.dumps(result)))
    [job] = console.client.get(f"/api/studies/{console.study}", headers=_bearer(console, "viewer")).json()["jobs"]
    assert job["prior"] == shown
    console.login(VIEWER)
    page = console.client.get(f"/studies/{console.study}").text
    assert "<th>Prior</th>" in page
    if shown:
        assert shown in page
