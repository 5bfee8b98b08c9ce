"""GET /v1/jobs, GET /v1/jobs/{id}, POST /stripe/resync and the dashboard's import block."""

from __future__ import annotations

from typing import Any

import httpx

from stripesync.imports.tasks import import_history
from stripesync.models import Contact, OptinEmail, Payment
from tests.conftest import ops_headers, platform_headers

from .conftest import ACCOUNT, Env


async def test_job_is_shown_to_operators_with_progress_and_report(
    env: Env, job_ctx: dict[str, Any], app_client: httpx.AsyncClient
) -> None:
    _, job_id = await env.connect()
    queued = await app_client.get(f"/v1/jobs/{job_id}", headers=ops_headers)
    assert queued.status_code == 200
    assert queued.json()["state"] == "queued" and queued.json()["kind"] == "import"

    await import_history(job_ctx, ACCOUNT)

    body = (await app_client.get(f"/v1/jobs/{job_id}", headers=ops_headers)).json()
    assert body["state"] == "succeeded"
    assert body["progress"]["phase"] == "done"
    assert body["progress"]["done"] == body["progress"]["total"] > 0
    assert body["started_at"] and body["finished_at"] and body["error"] is None
    assert body["report"]["imported"]["charges"] == env.fake.history.charges
    assert {"no_email", "invalid_email"} <= set(body["report"]["skipped"])
    dashboard = (await app_client.get(f"/v1/accounts/{ACCOUNT}", headers=platform_headers)).json()
    assert dashboard["import"]["job_id"] == job_id
    assert dashboard["import"]["state"] == "succeeded"


async def test_jobs_need_the_ops_token_and_unknown_ids_are_404(
    env: Env, app_client: httpx.AsyncClient
) -> None:
    _, job_id = await env.connect()
    assert (await app_client.get(f"/v1/jobs/{job_id}")).status_code == 401
    assert (await app_client.get(f"/v1/jobs/{job_id}", headers=platform_headers)).status_code == 401
    missing = await app_client.get("/v1/jobs/job_nope", headers=ops_headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "job_not_found"
    bad = await app_client.get("/v1/jobs?state=bogus", headers=ops_headers)
    assert bad.status_code == 422


async def test_job_list_filters_and_pages_with_a_cursor(
    env: Env, app_client: httpx.AsyncClient
) -> None:
    ids = []
    for n in range(5):
        _, job_id = await env.connect(f"acc_{n}", f"acct_{n}")
        ids.append(job_id)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await app_client.get("/v1/jobs", params=params, headers=ops_headers)).json()
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each once
    one = await app_client.get("/v1/jobs", params={"account_id": "acc_3"}, headers=ops_headers)
    assert [j["id"] for j in one.json()["jobs"]] == [ids[3]]
    none = await app_client.get("/v1/jobs", params={"state": "failed"}, headers=ops_headers)
    assert none.json() == {"jobs": [], "next_cursor": None}
    bad = await app_client.get("/v1/jobs", params={"cursor": "garbage"}, headers=ops_headers)
    assert bad.status_code == 422


async def test_resync_runs_again_and_nothing_doubles_and_nobody_is_emailed_twice(
    env: Env, job_ctx: dict[str, Any], app_client: httpx.AsyncClient
) -> None:
    _, first = await env.connect(mode="optin")
    await import_history(job_ctx, ACCOUNT)
    contacts, payments, optin = (
        await env.count(Contact),
        await env.count(Payment),
        await env.count(OptinEmail),
    )

    answer = await app_client.post(
        f"/v1/accounts/{ACCOUNT}/stripe/resync", headers=platform_headers
    )
    assert answer.status_code == 202
    second = answer.json()["job_id"]
    assert second != first
    again = await app_client.post(f"/v1/accounts/{ACCOUNT}/stripe/resync", headers=platform_headers)
    assert again.json()["job_id"] == second  # while one is active, that one
    await import_history(job_ctx, ACCOUNT)

    job = await env.job(second)
    assert job.kind == "resync" and job.state == "succeeded"
    assert (await env.count(Contact), await env.count(Payment)) == (contacts, payments)
    assert await env.count(OptinEmail) == optin
    assert job.report["contacts_created"] == 0
    assert job.report["optin_emails"] == 0
    assert job.report["already_contact"] > 0
    assert len([m for m in env.outbox() if "owner@" in str(m["To"])]) == 2  # one per job


async def test_resync_without_a_connection_is_409(env: Env, app_client: httpx.AsyncClient) -> None:
    await app_client.put(
        "/v1/accounts/acc_lonely",
        json={"name": "Lonely", "owner_email": "o@lonely.example"},
        headers=platform_headers,
    )
    answer = await app_client.post(
        "/v1/accounts/acc_lonely/stripe/resync", headers=platform_headers
    )
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "stripe_not_connected"
    unknown = await app_client.post(
        "/v1/accounts/acc_nobody/stripe/resync", headers=platform_headers
    )
    assert unknown.status_code == 404
