"""``/ui`` in a real browser: Playwright driving Debian's Chromium (``/usr/bin/chromium``)
against a real ``modfactory serve``, worker and redis-server. Screenshots of each page go to
``docs/screenshots/`` (the README shows them)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from helpers import (
    producer_for,
    serve_process,
    settings_env,
    settings_for,
    wait_until,
    worker_process,
)
from modfactory.settings import Settings
from modfactory.store.run import RunState

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("ui"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed"),
]
ADMIN = "ui-webhook-token-0123456789abcdef012345"
REVIEW = "ui-review-token-0123456789abcdef0123456"
SERVE = "ui-serve-token-0123456789abcdef01234567"
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
ADA, RITA = "ada@example.com", "rita@example.com"  # an admin's and a reviewer's accounts
XSS = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">'


@dataclass
class Deployment:
    settings: Settings
    url: str
    tokens: dict[str, str]  # account name -> token


def _add_user(settings: Settings, name: str, role: str) -> str:
    added = subprocess.run(
        [sys.executable, "-m", "modfactory", "users", "add", name, "--role", role, "--json"],
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    return json.loads(added.stdout)["token"]


@pytest.fixture(scope="module")
def deployment(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    url = f"{redis_url}/6"  # this module's own database
    redis.Redis.from_url(url).flushdb()
    SHOTS.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("ui")
    settings = settings_for(url, work / "data", source="synthetic:3000")
    tokens = {
        "MODFACTORY_WEBHOOK_TOKEN": ADMIN,
        "MODFACTORY_REVIEW_TOKEN": REVIEW,
        "MODFACTORY_SERVE_TOKEN": SERVE,
    }
    with (
        worker_process(settings, work / "worker.log"),
        serve_process(settings, work / "serve.log", **tokens) as (_, served),
    ):
        accounts = {ADA: "admin", RITA: "reviewer"}
        tokens = {name: _add_user(settings, name, role) for name, role in accounts.items()}
        yield Deployment(settings, served, tokens)
    redis.Redis.from_url(url).flushdb()


@pytest.fixture
async def browser() -> AsyncIterator:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        yield chromium
        await chromium.close()


async def signed_in(browser, deployment: Deployment, token: str = ADMIN):
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(f"{deployment.url}/ui/runs")
    await page.get_by_label("Token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r"/ui/runs"))
    return page


async def test_nothing_is_shown_before_sign_in_and_a_wrong_token_is_refused(
    browser, deployment: Deployment
) -> None:
    producer = await producer_for(deployment.settings)
    run = (await producer.submit(producer.spec(model_name="secretive"))).run
    async with httpx.AsyncClient(base_url=deployment.url) as client:
        for path in ("/ui/runs", f"/ui/runs/{run.id}", f"/ui/runs/{run.id}?fragment=1"):
            answer = await client.get(path)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login")
            assert run.id not in answer.text
        for path in ("/ui/runs/files", f"/ui/runs/{run.id}/files/loss"):
            assert run.id not in (await client.get(path)).text
    page = await browser.new_page()
    await page.goto(f"{deployment.url}/ui/runs/{run.id}")
    assert "/ui/login" in page.url
    for wrong in ("not-a-token-0123456789abcdef0123456789", SERVE):  # the serve token: nothing
        await page.get_by_label("Token").fill(wrong)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("alert").wait_for()
        assert "not accepted" in await page.get_by_role("alert").inner_text()
        shown = await page.content()  # (the path asked for is kept, to go there once in)
        assert "/ui/login" in page.url and "secretive" not in shown and "synthetic" not in shown
    await page.screenshot(path=str(SHOTS / "sign-in.png"))
    await page.get_by_label("Token").fill(ADMIN)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(rf"/ui/runs/{run.id}$"))  # where it was going
    await page.close()
    await producer.cancel(run.id)
    await producer.redis.aclose()


async def test_a_run_is_watched_to_its_end_without_a_reload_then_opened(
    browser, deployment: Deployment
) -> None:
    page = await signed_in(browser, deployment)
    producer = await producer_for(deployment.settings)
    await page.evaluate("window.stillTheSamePage = true")
    run = (await producer.submit(producer.spec())).run
    row = page.get_by_role("row").filter(has_text=run.id)
    await row.wait_for(timeout=30_000)  # it appeared by itself
    await row.get_by_text("succeeded").wait_for(timeout=120_000)  # and finished by itself
    assert await page.evaluate("window.stillTheSamePage") is True  # never reloaded
    await page.screenshot(path=str(SHOTS / "runs.png"), full_page=True)

    await row.get_by_role("link", name=run.id).click()
    await page.get_by_role("heading", name="Test metrics").wait_for()
    table = page.locator("table.metrics").first
    assert await table.get_by_role("row").filter(has_text="toxicity").count() == 1
    images = page.locator(".charts img")
    assert await images.count() == 3
    for i in range(3):
        await images.nth(i).scroll_into_view_if_needed()
        await page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=await images.nth(i).element_handle()
        )
    assert "succeeded" in await page.locator("h1 .state").inner_text()
    await page.screenshot(path=str(SHOTS / "run.png"), full_page=True)
    report = await page.context.request.get(f"{deployment.url}/ui/runs/{run.id}/files/report")
    assert report.ok and run.id in await report.text()
    await page.set_viewport_size({"width": 390, "height": 844})  # a phone
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(SHOTS / "run-phone.png"))
    await page.close()
    await producer.redis.aclose()


async def test_a_run_is_cancelled_with_its_button_and_a_forged_form_is_refused(
    browser, deployment: Deployment
) -> None:
    producer = await producer_for(deployment.settings)
    run = (await producer.submit(producer.spec(source="synthetic:400000", model_name="big"))).run
    page = await signed_in(browser, deployment)
    await page.goto(f"{deployment.url}/ui/runs/{run.id}")
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    async with httpx.AsyncClient(base_url=deployment.url, cookies=cookies) as client:
        forged = await client.post(f"/ui/runs/{run.id}/cancel", data={"csrf": "guessed"})
        assert forged.status_code == 403 and "forged" in forged.text
        missing = await client.post(f"/ui/runs/{run.id}/cancel")
        assert missing.status_code == 403
    assert not (await producer.run(run.id)).state.terminal  # neither did anything
    await page.get_by_role("button", name="Cancel the run").click()
    await page.locator("h1 .state", has_text="cancelled").wait_for()
    assert (await producer.run(run.id)).state == RunState.CANCELLED
    await page.close()
    await producer.redis.aclose()


async def test_a_hostile_text_is_shown_as_text_and_never_run(
    browser, deployment: Deployment
) -> None:
    producer = await producer_for(deployment.settings)
    run = (await producer.submit(producer.spec(model_name="hostile"))).run
    await producer.store.note(run.id, "build", f"a comment said {XSS}")
    await producer.cancel(run.id)
    page = await signed_in(browser, deployment)
    page.on("dialog", lambda dialog: pytest.fail(f"a script ran: {dialog.message}"))
    await page.goto(f"{deployment.url}/ui/runs/{run.id}")
    await page.get_by_text("a comment said <script>").wait_for()  # shown as text
    assert await page.locator('img[src="x"]').count() == 0  # never an element
    assert await page.title() != "pwned"  # (the page's load event has passed: goto waits)
    headers = (await page.context.request.get(page.url)).headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]
    await page.close()
    await producer.redis.aclose()


async def test_a_model_is_promoted_and_rolled_back_after_being_told_what_changes(
    browser, deployment: Deployment
) -> None:
    producer = await producer_for(deployment.settings)
    runs = []
    for seed in (1, 2):  # two models under one name
        spec = producer.spec(source="synthetic:1000", model_name="pair", seed=seed)
        run = (await producer.submit(spec)).run
        done = await wait_until(producer.store, run.id, lambda r: r.state.terminal)
        assert done.state == RunState.SUCCEEDED, done.error
        runs.append(run.id)
    page = await signed_in(browser, deployment, deployment.tokens[ADA])  # an admin's account

    async def champion() -> str:
        return (await producer.model("pair")).champion.run_id

    async def promote(run_id: str) -> None:
        await page.goto(f"{deployment.url}/ui/models")
        await page.get_by_role("row").filter(has_text=run_id).get_by_role("button").click()
        said = await page.locator(".verdict").inner_text()
        assert said.startswith(f"{run_id} replaces {await champion()} as the champion of pair")
        await page.screenshot(path=str(SHOTS / "confirm.png"))
        await page.get_by_role("button", name="Yes, do it").click()
        await page.wait_for_url(re.compile(r"/ui/models$"))
        assert await champion() == run_id

    async def roll_back() -> None:
        before = (await producer.model("pair")).history[-1].run_id
        await page.goto(f"{deployment.url}/ui/models")
        await page.get_by_role("button", name=f"Roll back to {before}").click()
        assert "becomes the champion of pair again" in await page.locator(".verdict").inner_text()
        await page.get_by_role("button", name="Yes, do it").click()
        await page.wait_for_url(re.compile(r"/ui/models$"))
        assert await champion() == before

    if await champion() == runs[1]:  # the second won: back to the first, then forward again
        await roll_back()
        await promote(runs[1])
    else:  # the second is a candidate: promoted anyway, then rolled back
        await promote(runs[1])
        await roll_back()
    await page.screenshot(path=str(SHOTS / "models.png"), full_page=True)
    await page.get_by_role("link", name="Audit").click()
    promoted = page.get_by_role("row").filter(has_text="model.promote").filter(has_text=runs[1])
    await promoted.first.wait_for()
    assert ADA in await promoted.first.inner_text()  # under the admin's name
    await page.screenshot(path=str(SHOTS / "audit.png"), full_page=True)
    await page.get_by_role("link", name="Schedule").click()
    await page.get_by_role("heading", name="Recent decisions").wait_for()
    await page.screenshot(path=str(SHOTS / "schedule.png"), full_page=True)
    await page.close()
    await producer.redis.aclose()


async def test_a_reviewer_labels_a_text_with_the_keyboard_and_may_not_promote(
    browser, deployment: Deployment
) -> None:
    from datetime import UTC, datetime

    from modfactory.store.feedback import FeedbackLog
    from modfactory.store.review import ReviewItem, ReviewQueue

    client = redis.asyncio.Redis.from_url(deployment.settings.redis_url)
    prefix = deployment.settings.queue_name
    text = f"you are a zorblax {XSS}"
    item = ReviewItem(
        id="mod-ui.0",
        model_name="moderation",
        text=text,
        scores={"toxicity": 0.45, "insult": 0.3},
        flags={"toxicity": False, "insult": False},
        champion_run="run-x",
        at=datetime.now(UTC),
        uncertainty=0.05,
    )
    await ReviewQueue(client, prefix, 100, 3600).add([item])
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("dialog", lambda dialog: pytest.fail(f"a script ran: {dialog.message}"))
    await page.goto(f"{deployment.url}/ui")
    await page.get_by_label("Token").fill(deployment.tokens[RITA])
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile(r"/ui/review"))  # a reviewer's first page
    await page.get_by_text("you are a zorblax <script>").wait_for()  # shown as text
    assert await page.title() != "pwned"
    await page.keyboard.press("1")  # toxicity, the first label
    assert await page.locator('input[name="label:toxicity"]').is_checked()
    assert not await page.locator('input[name="label:insult"]').is_checked()
    await page.screenshot(path=str(SHOTS / "review.png"))
    await page.keyboard.press("Enter")
    await page.get_by_text("Nothing waiting for review").wait_for()
    [stored] = await FeedbackLog(client, prefix).after("moderation", 0)
    assert (stored.text, stored.labels, stored.via) == (text, ["toxicity"], "review")
    assert stored.reviewer == RITA  # the account signed in, not a field anyone fills
    assert await page.get_by_role("link", name="Users").count() == 0
    await page.get_by_role("link", name="Models").click()
    await page.get_by_role("heading", name="Models").wait_for()
    for button in ("Promote…", "Roll back"):  # a reviewer may not: not offered
        assert await page.get_by_role("button", name=re.compile(button)).count() == 0
    for admin_only in ("/ui/users", "/ui/models/moderation/rollback"):
        answer = await page.context.request.get(f"{deployment.url}{admin_only}")
        assert answer.status == 403 and "needs the admin role" in await answer.text()
    await page.close()
    await client.aclose()


def test_screenshots_are_where_the_readme_shows_them() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in ("runs.png", "run.png", "review.png"):
        assert f"docs/screenshots/{name}" in readme


async def _a_champion(producer) -> None:
    """The deployment's model name has a champion (trained here if no test made one)."""
    if (await producer.model(producer.settings.model_name)).champion is None:
        run = (await producer.submit(producer.spec(), by=None)).run
        await wait_until(producer.store, run.id, lambda r: r.state.terminal)


async def test_a_scoring_job_is_watched_to_its_end_and_its_hostile_texts_stay_text(
    browser, deployment: Deployment, tmp_path: Path
) -> None:
    producer = await producer_for(deployment.settings)
    await _a_champion(producer)
    archive = tmp_path / "archive.jsonl"
    hostile = f"{XSS} you stupid pathetic idiot moron"  # among the highest scores
    texts = [hostile if i % 50 == 0 else f"the council met on day {i}" for i in range(3000)]
    archive.write_text(
        "".join(json.dumps({"text": t, "id": f"c{i}"}) + "\n" for i, t in enumerate(texts))
    )
    spec = await producer.score_spec(str(archive), id_column="id", keep_text=True)
    page = await signed_in(browser, deployment)
    job = await producer.submit_score(spec)
    await page.goto(f"{deployment.url}/ui/scores/{job.id}")
    await page.evaluate("window.stillTheSamePage = true")
    await page.locator("h1 .state", has_text="succeeded").wait_for(timeout=120_000)
    assert await page.evaluate("window.stillTheSamePage") is True  # it updated by itself
    assert "3,000 of 3,000 rows" in await page.locator("p.progress").inner_text()
    labels = page.locator("table.metrics tbody tr")
    assert await labels.count() == len((await producer.scores.get(job.id)).labels)
    images = page.locator(".charts img")
    for i in range(await images.count()):
        await page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=await images.nth(i).element_handle()
        )
    shown = page.locator("table.highest td.text", has_text="<script>")
    assert await shown.count() > 0  # the hostile text, shown as text
    assert await page.title() != "pwned"
    await page.screenshot(path=str(SHOTS / "scoring.png"), full_page=True)
    await page.goto(f"{deployment.url}/ui/scores")
    assert await page.get_by_role("row").filter(has_text=job.id).count() == 1
    await page.close()
    await producer.redis.aclose()


async def test_a_scoring_job_quoted_above_the_cap_is_approved_from_its_page(
    browser, deployment: Deployment
) -> None:
    from modfactory.artifacts import ArtifactStore
    from modfactory.store.audit import AuditLog
    from modfactory.values import PriceQuote

    producer = await producer_for(deployment.settings)
    await _a_champion(producer)
    spec = await producer.score_spec("synthetic:100")
    job = await producer.scores.create(spec.model_copy(update={"max_cost": 1.0}))
    quote = PriceQuote(cost=2.5, currency="EUR", tokens=25_000_000, basis="0.1 EUR per M")
    await producer.scores.plan(job.id, [100], ["insult"], {"insult": 0.5}, quote=quote)
    page = await signed_in(browser, deployment)
    await page.goto(f"{deployment.url}/ui/scores/{job.id}")
    assert (
        "Quoted 2.5 EUR for about 25,000,000 tokens" in await page.locator("p.quote").inner_text()
    )
    await page.get_by_role("button", name="Approve the quoted cost").click()
    await page.wait_for_url(re.compile(f"/ui/scores/{job.id}$"))
    assert (await producer.scores.get(job.id)).state != "awaiting_approval"
    assert await page.get_by_role("button", name="Approve the quoted cost").count() == 0
    audit = AuditLog(producer.redis, deployment.settings.queue_name)
    store = ArtifactStore.from_settings(deployment.settings)
    entries = await audit.read(store, action="score.approve")
    assert [e.target for e in entries if e.target == job.id] == [job.id]
    await page.close()
    await producer.redis.aclose()
