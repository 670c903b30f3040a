"""The ``/ui`` session without a browser: the cookie's attributes, a forged or stale cookie
refused, a changed token signing its sessions out, the sign-in form's own CSRF check, and
what each role may open, accounts signed out when revoked (the app in this process, on a
real Redis)."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

from redis.asyncio import Redis
from starlette.testclient import TestClient

from helpers import settings_for
from modfactory.roles import Role
from modfactory.store.accounts import AccountStore
from modfactory.web.app import create_app

ADMIN = "ui-admin-token-0123456789abcdef0123456789"
REVIEW = "ui-review-token-0123456789abcdef012345678"


def sign_in(client: TestClient, token: str) -> object:
    form = client.get("/ui/login").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    return client.post(
        "/ui/login", data={"token": token, "csrf": csrf, "next": "/ui/runs"}, follow_redirects=False
    )


def test_the_session_cookie_is_signed_strict_httponly_and_follows_the_tokens(
    redis_db: str, tmp_path: Path
) -> None:
    settings = settings_for(redis_db, tmp_path, webhook_token=ADMIN, review_token=REVIEW)
    with TestClient(create_app(settings), base_url="http://testserver") as client:
        signed = sign_in(client, ADMIN)
        assert signed.status_code == 303 and signed.headers["location"] == "/ui/runs"
        cookie = signed.headers["set-cookie"]
        for attribute in ("HttpOnly", "SameSite=strict", "Max-Age=28800", "Path=/ui"):
            assert attribute in cookie, attribute
        assert "Secure" not in cookie  # plain http here
        assert client.get("/ui/runs").status_code == 200
        value = client.cookies["modfactory_ui"]
        payload, _, signed_part = value.partition(".")
        client.cookies.clear()
        client.cookies.set("modfactory_ui", f"{payload}x.{signed_part}")  # the payload changed
        forged = client.get("/ui/runs", follow_redirects=False)
        assert forged.status_code == 303 and forged.headers["location"].startswith("/ui/login")
    with TestClient(create_app(settings), base_url="http://testserver") as client:
        client.cookies.set("modfactory_ui", value)
        assert client.get("/ui/runs").status_code == 200  # the cookie alone opens the page…
    rotated = settings_for(redis_db, tmp_path, webhook_token=ADMIN[::-1], review_token=REVIEW)
    with TestClient(create_app(rotated), base_url="http://testserver") as client:
        client.cookies.set("modfactory_ui", value)
        stale = client.get("/ui/runs", follow_redirects=False)
        assert stale.status_code == 303  # …but not once the token changed: signed out
    secure = settings_for(
        redis_db, tmp_path, webhook_token=ADMIN, public_url="https://mod.example.org"
    )
    with TestClient(create_app(secure), base_url="http://testserver") as client:
        assert "Secure" in sign_in(client, ADMIN).headers["set-cookie"]


def test_sign_in_needs_its_form_and_the_review_token_opens_what_a_reviewer_may(
    redis_db: str, tmp_path: Path
) -> None:
    settings = settings_for(redis_db, tmp_path, webhook_token=ADMIN, review_token=REVIEW)
    with TestClient(create_app(settings), base_url="http://testserver") as client:
        forged = client.post("/ui/login", data={"token": ADMIN, "csrf": "made-up"})
        assert forged.status_code == 403 and "modfactory_ui" not in client.cookies
        signed = sign_in(client, REVIEW)
        assert signed.headers["location"] == "/ui/review"  # a reviewer's first page
        for page in ("/ui/review", "/ui/runs", "/ui/models", "/ui/schedule", "/ui/audit"):
            assert client.get(page).status_code == 200, page
        refused = client.get("/ui/users")
        assert refused.status_code == 403 and "needs the admin role" in refused.text
        assert client.get("/ui/models/moderation/rollback").status_code == 403
        nav = client.get("/ui/runs").text
        assert 'href="/ui/review"' in nav and 'href="/ui/users"' not in nav
        for hostile in ("bad%0d%0aSet-Cookie:%20x=1", "<script>", "a" * 300):
            assert client.get(f"/ui/review?model={hostile}").status_code == 404
        answer = client.get("/ui/runs")
        assert answer.headers["content-security-policy"].startswith("default-src 'none'")
        assert answer.headers["cache-control"] == "no-store"


async def _add(redis_url: str, name: str, role: Role) -> str:
    client = Redis.from_url(redis_url)
    try:
        return (await AccountStore(client, "modfactory").add(name, role))[1]
    finally:
        await client.aclose()


def test_an_account_signs_in_with_its_role_and_is_signed_out_when_revoked(
    redis_db: str, tmp_path: Path
) -> None:
    settings = settings_for(redis_db, tmp_path, webhook_token=ADMIN, serve_refresh_interval=0.1)
    viewer = asyncio.run(_add(redis_db, "vera@example.com", Role.VIEWER))
    with TestClient(create_app(settings), base_url="http://testserver") as client:
        assert sign_in(client, viewer).status_code == 303
        page = client.get("/ui/runs").text
        assert "vera@example.com · viewer" in page and 'href="/ui/review"' not in page
        assert client.get("/ui/review").status_code == 403
        with TestClient(create_app(settings), base_url="http://testserver") as admin:
            sign_in(admin, ADMIN)
            users = admin.get("/ui/users").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', users).group(1)
            done = admin.post(
                "/ui/users/vera@example.com/role",
                data={"csrf": csrf, "role": "reviewer"},
                follow_redirects=False,
            )
            assert done.status_code == 303
            deadline = time.monotonic() + 10  # the other replica reads the accounts again
            while client.get("/ui/review").status_code != 200:
                assert time.monotonic() < deadline, "the new role never applied"
                time.sleep(0.05)
            admin.post("/ui/users/vera@example.com/revoke", data={"csrf": csrf})
        deadline = time.monotonic() + 10
        while client.get("/ui/runs", follow_redirects=False).status_code == 200:
            assert time.monotonic() < deadline, "a revoked account stays signed in"
            time.sleep(0.05)
        assert (
            client.get("/ui/runs", follow_redirects=False)
            .headers["location"]
            .startswith("/ui/login")
        )
        serve_only = sign_in(client, "not-a-token-of-anyone-0123456789abcdef")
        assert serve_only.status_code == 401
