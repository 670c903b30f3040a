"""Who is signed in to ``/ui``: a session in a signed, expiring cookie (HttpOnly,
SameSite=Strict, Secure behind https), made by signing in with a token — the webhook
token may do everything (``admin``), the review token only review (``reviewer``), the
serve token nothing. The cookie is signed with a key derived from the tokens themselves,
and it names which token made it (by a digest): changing a token signs every session out.
Every state-changing request carries the session's CSRF token (constant-time compared).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from modfactory.settings import Settings

COOKIE = "modfactory_ui"
LOGIN_COOKIE = "modfactory_login"  # the sign-in form's own CSRF token (double submit)
SESSION_SECONDS = 8 * 3600
Role = Literal["admin", "reviewer"]


@dataclass(frozen=True)
class Session:
    role: Role
    csrf: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


def _tokens(settings: Settings) -> dict[Role, str]:
    found: dict[Role, str] = {}
    if settings.webhook_token is not None:
        found["admin"] = settings.webhook_token.get_secret_value()
    if settings.review_token is not None:
        found["reviewer"] = settings.review_token.get_secret_value()
    return found


def signing_in_possible(settings: Settings) -> bool:
    return bool(_tokens(settings))


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    material = "\0".join(sorted(_tokens(settings).values())).encode()
    key = hmac.new(material, b"modfactory /ui sessions", hashlib.sha256).hexdigest()
    return URLSafeTimedSerializer(key, salt="modfactory-ui")


def _digest(token: str) -> str:
    return hashlib.sha256(b"modfactory-ui:" + token.encode()).hexdigest()[:16]


def role_of(settings: Settings, offered: str) -> Role | None:
    """The role the offered token signs in as (None: not a token of /ui)."""
    found = None
    for role, token in _tokens(settings).items():
        if hmac.compare_digest(offered.encode(), token.encode()):
            found = role
    return found


def session_of(request: Request) -> Session | None:
    """The request's valid, unexpired session, if any."""
    settings: Settings = request.app.state.settings
    raw = request.cookies.get(COOKIE)
    if not raw or not signing_in_possible(settings):
        return None
    try:
        data = _serializer(settings).loads(raw, max_age=SESSION_SECONDS)
    except BadSignature:
        return None
    role, token = data.get("role"), _tokens(settings).get(data.get("role"))
    if token is None or not hmac.compare_digest(str(data.get("token", "")), _digest(token)):
        return None  # that token was changed or removed since: signed out
    return Session(role=role, csrf=str(data.get("csrf", "")))


def _cookie_options(request: Request) -> dict:
    settings: Settings = request.app.state.settings
    https = (settings.public_url or str(request.base_url)).startswith("https://")
    return {"httponly": True, "samesite": "strict", "secure": https, "path": "/ui"}


def start_session(request: Request, response: Response, role: Role) -> None:
    settings: Settings = request.app.state.settings
    token = _tokens(settings)[role]
    value = _serializer(settings).dumps(
        {"role": role, "token": _digest(token), "csrf": secrets.token_urlsafe(24)}
    )
    response.set_cookie(COOKIE, value, max_age=SESSION_SECONDS, **_cookie_options(request))
    response.delete_cookie(LOGIN_COOKIE, path="/ui")


def end_session(request: Request, response: Response) -> None:
    response.delete_cookie(COOKIE, path="/ui")


def login_csrf(request: Request, response: Response, token: str) -> None:
    """The sign-in form's CSRF token, also set as a short-lived cookie (double submit)."""
    response.set_cookie(LOGIN_COOKIE, token, max_age=900, **_cookie_options(request))


def csrf_ok(expected: str, given: object) -> bool:
    return (
        bool(expected)
        and isinstance(given, str)
        and hmac.compare_digest(expected.encode(), given.encode())
    )
