"""The parts every ``/ui`` page shares: the templates (Jinja2, autoescaped), the headers
(a Content-Security-Policy without inline scripts; never cached), the sign-in check, the
refusal pages, and posted forms (bounded, their CSRF token checked)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from modfactory.roles import Action, refusal
from modfactory.web.request_body import read_body
from modfactory.web.ui.session import Session, csrf_ok, session_of

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"


def templates() -> Environment:
    return Environment(
        loader=PackageLoader("modfactory.web.ui", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )


def page_headers(csp: str = CSP) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    env: Environment = request.app.state.ui_templates
    html = env.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=page_headers())


class Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def signed_in(request: Request, action: Action = Action.READ) -> Session:
    """The session, if its role may do ``action``; else a refusal: to the sign-in page
    (GET, not signed in), or 403 naming the role needed."""
    session = await session_of(request)
    if session is None:
        if request.method == "GET":
            target = "/ui/login?" + urlencode({"next": request.url.path})
            raise Refused(RedirectResponse(target, 303, headers=page_headers()))
        raise Refused(message(request, None, 403, "Not signed in", "Sign in first."))
    if not session.may(action):
        said = refusal(session.name, session.role, action)
        raise Refused(message(request, session, 403, "Not allowed", said))
    return session


def message(
    request: Request, session: Session | None, status: int, title: str, message: str
) -> HTMLResponse:
    return render(request, "message.html", status, session=session, title=title, message=message)


async def posted(request: Request) -> dict[str, str]:
    """An urlencoded form's fields, its body bounded as every body is (413 beyond)."""
    body = await read_body(request, request.app.state.settings.webhook_max_body, "WEBHOOK")
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


async def checked_form(request: Request, session: Session | None, csrf: str) -> dict[str, Any]:
    """The posted form, once its CSRF token is the expected one (else a 403 page)."""
    form = await posted(request)
    if not csrf_ok(csrf, form.get("csrf")):
        raise Refused(
            message(request, session, 403, "Refused", "This form is stale or forged: reload.")
        )
    return dict(form)


def guarded(handler: Any) -> Any:
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except Refused as refused:
            return refused.response

    wrapper.__doc__ = handler.__doc__
    return wrapper
