"""The ``/ui`` session without a browser: the cookie's attributes, a forged or stale cookie
refused, a changed token signing its sessions out, the sign-in form's own CSRF check, and
what the review token may open (the app in this process, on a real Redis)."""

from __future__ import annotations

import re
from pathlib import Path

from starlette.testclient import TestClient

from helpers import settings_for
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


def test_sign_in_needs_its_form_and_the_review_token_opens_only_review(
    redis_db: str, tmp_path: Path
) -> None:
    settings = settings_for(redis_db, tmp_path, webhook_token=ADMIN, review_token=REVIEW)
    with TestClient(create_app(settings), base_url="http://testserver") as client:
        forged = client.post("/ui/login", data={"token": ADMIN, "csrf": "made-up"})
        assert forged.status_code == 403 and "modfactory_ui" not in client.cookies
        signed = sign_in(client, REVIEW)
        assert signed.headers["location"] == "/ui/review"
        assert client.get("/ui/review").status_code == 200
        for page in ("/ui/runs", "/ui/models", "/ui/schedule"):
            assert client.get(page).status_code == 403, page
        for hostile in ("bad%0d%0aSet-Cookie:%20x=1", "<script>", "a" * 300):
            assert client.get(f"/ui/review?model={hostile}").status_code == 404
        answer = client.get("/ui/runs")
        assert answer.headers["content-security-policy"].startswith("default-src 'none'")
        assert answer.headers["cache-control"] == "no-store"
