"""Who is signed in to ``/ui``: a session in a signed, expiring cookie (HttpOnly,
SameSite=Strict, Secure behind https), made by signing in with a token — an account's, or
one of the settings' service tokens (the webhook token is the admin ``webhook``, the review
token the reviewer ``review``; the serve token only scores and opens nothing). Behind a
sign-on proxy (MODFACTORY_AUTH_PROXY_HEADER, from MODFACTORY_AUTH_PROXY_FROM) the proxy's
header is the session itself, no cookie needed.

The cookie names the account and a digest of its token, and is checked against the
accounts as ``serve`` last read them: a revoked account (or a changed settings token) is
signed out within MODFACTORY_SERVE_REFRESH_INTERVAL, and a new role applies as soon. The
role always comes from the account, never from the cookie. The cookie is signed with a key
derived from the settings' secrets. Every state-changing request carries the session's
CSRF token (constant-time compared).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import Response

from modfactory.roles import Action, Role
from modfactory.settings import Settings
from modfactory.web.identity import SERVICE_NAMES, Caller, from_proxy, service_tokens

COOKIE = "modfactory_ui"
LOGIN_COOKIE = "modfactory_login"  # the sign-in form's own CSRF token (double submit)
SESSION_SECONDS = 8 * 3600


@dataclass(frozen=True)
class Session:
    name: str
    role: Role
    csrf: str
    proxied: bool = False  # signed in by the proxy's header (no sign-out here)

    def may(self, action: Action) -> bool:
        return self.role.may(action)

    @property
    def can(self) -> dict[str, bool]:
        """What the pages may offer, by action name (``session.can.promote``)."""
        return {action.name.lower(): self.role.may(action) for action in Action}

    @property
    def caller(self) -> Caller:
        return Caller(self.name, self.role, "proxy" if self.proxied else "session")


def _key(settings: Settings) -> bytes:
    values = [
        value.get_secret_value()
        for value in (
            settings.webhook_secret,
            settings.webhook_token,
            settings.review_token,
            settings.serve_token,
        )
        if value is not None
    ]
    material = "\0".join(sorted(values)).encode()
    return hmac.new(material, b"modfactory /ui sessions", hashlib.sha256).digest()


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_key(settings).hex(), salt="modfactory-ui")


def _digest(token: str) -> str:
    return hashlib.sha256(b"modfactory-ui:" + token.encode()).hexdigest()[:16]


def _service_digests(settings: Settings) -> dict[str, tuple[str, Role]]:
    """Service name -> (its token's digest, its role), for the tokens that may sign in."""
    return {
        SERVICE_NAMES[setting]: (_digest(token), role)
        for setting, token, role in service_tokens(settings)
        if role is not None
    }


async def caller_of_token(request: Request, offered: str) -> Caller | None:
    """Who signs in with ``offered`` (None: no token of /ui — the serve token included)."""
    settings: Settings = request.app.state.settings
    found = None
    for setting, token, role in service_tokens(settings):
        if hmac.compare_digest(offered.encode(), token.encode()) and role is not None:
            found = Caller(SERVICE_NAMES[setting], role, "session", setting=setting)
    if found is None and offered:
        account = await request.app.state.accounts.by_token(offered)
        if account is not None:
            found = Caller(account.name, account.role, "session", account=True)
    return found


def _proxy_csrf(settings: Settings, name: str) -> str:
    mac = hmac.new(_key(settings), f"proxy-csrf:{name}".encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


async def session_of(request: Request) -> Session | None:
    """The request's valid session, if any: the proxy's header, else the cookie."""
    settings: Settings = request.app.state.settings
    accounts = request.app.state.accounts
    if from_proxy(request, settings):
        name = request.headers.get(settings.auth_proxy_header or "")
        if name:
            account = await accounts.by_name(name)
            if account is None:
                return None
            csrf = _proxy_csrf(settings, account.name)
            return Session(account.name, account.role, csrf, proxied=True)
    raw = request.cookies.get(COOKIE)
    if not raw:
        return None
    try:
        data = _serializer(settings).loads(raw, max_age=SESSION_SECONDS)
    except BadSignature:
        return None
    name, digest, csrf = str(data.get("name", "")), str(data.get("digest", "")), data.get("csrf")
    if data.get("service"):
        found = _service_digests(settings).get(name)
        if found is None or not hmac.compare_digest(found[0], digest):
            return None  # that token was changed or removed since: signed out
        return Session(name, found[1], str(csrf))
    account = await accounts.by_name(name)
    if account is None or not hmac.compare_digest(_digest(account.token_sha256), digest):
        return None  # revoked, or given a new token: signed out
    return Session(account.name, account.role, str(csrf))


def _cookie_options(request: Request) -> dict:
    settings: Settings = request.app.state.settings
    https = (settings.public_url or str(request.base_url)).startswith("https://")
    return {"httponly": True, "samesite": "strict", "secure": https, "path": "/ui"}


async def start_session(request: Request, response: Response, caller: Caller) -> None:
    settings: Settings = request.app.state.settings
    if caller.account:
        account = await request.app.state.accounts.by_name(caller.name)
        digest, service = _digest(account.token_sha256), False
    else:
        digest, service = _service_digests(settings)[caller.name][0], True
    value = _serializer(settings).dumps(
        {
            "name": caller.name,
            "service": service,
            "digest": digest,
            "csrf": secrets.token_urlsafe(24),
        }
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
