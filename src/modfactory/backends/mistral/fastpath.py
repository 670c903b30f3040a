"""The Mistral SDK without its per-request waste: what one look at a training job costs.

mistralai 2.5.1 spends most of a request's CPU on work that gives the same result every
time: it builds a new pydantic model class for every answer it reads, resolves the type
hints of the request model for every URL and query string it builds, imports each model
again by name on every use, and hands its own hooks (user agent, trace headers,
telemetry) to a thread and back, twice per request. ``speed_up_sdk`` makes each of these
happen once, or in place; requests and answers are exactly what the SDK sends and reads.
Applied once per process, on the backend's first request; the version is pinned, so the
names patched here are known. ``CookielessClient`` is the httpx client the SDK is given:
the API authenticates by key, so no answer's cookies are parsed.
"""

from __future__ import annotations

import functools
import importlib
import typing
from types import ModuleType
from typing import Any

import httpx


def speed_up_sdk() -> None:
    """Apply the savings below (idempotent)."""
    from mistralai.client import basesdk
    from mistralai.client.utils import queryparams, serializers, url

    if getattr(serializers.unmarshal, "reused", False):
        return
    hints = functools.cache(typing.get_type_hints)  # a request model's hints never change
    url.get_type_hints = hints
    queryparams.get_type_hints = hints
    basesdk.run_sync_in_thread = _run_in_place
    for package in ("mistralai.client", "mistralai.client.models", "mistralai.client.utils"):
        _remember_lazy_names(importlib.import_module(package))
    serializers.unmarshal = _reusing_answer_models(serializers.unmarshal)


def _remember_lazy_names(package: ModuleType) -> None:
    """A package whose names are imported on each use (the SDK's lazy ``__getattr__``
    calls ``import_module`` every time) keeps each name once it has been looked up."""
    look_up = package.__dict__.get("__getattr__")
    if look_up is None:
        return

    def remembering(name: str) -> Any:
        value = look_up(name)
        setattr(package, name, value)
        return value

    package.__getattr__ = remembering  # type: ignore[attr-defined]


async def _run_in_place(func: Any, *args: Any) -> Any:
    """The SDK's hooks, called where the request is made rather than in a thread: the
    built-in ones only set headers and spans (about 0.5 ms per thread round trip saved)."""
    return func(*args)


def _reusing_answer_models(original: Any) -> Any:
    """``serializers.unmarshal`` with one pydantic model per answer type, built once
    (the SDK builds one per answer: about 4 ms of CPU); it validates exactly the same
    way. A type that cannot be a dict key is read the SDK's own way."""

    @functools.cache
    def model_for(typ: Any) -> Any:
        from pydantic import ConfigDict, create_model

        return create_model(
            "Unmarshaller",
            body=(typ, ...),
            __config__=ConfigDict(populate_by_name=True, arbitrary_types_allowed=True),
        )

    def unmarshal(val: Any, typ: Any) -> Any:
        try:
            model = model_for(typ)
        except TypeError:  # unhashable
            return original(val, typ)
        return model(body=val).body

    unmarshal.reused = True  # type: ignore[attr-defined]
    return unmarshal


class _NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        """Keeps none: the API authenticates by bearer key (and parsing each answer's
        headers for cookies is a tenth of what a look at a job costs)."""


class CookielessClient(httpx.AsyncClient):
    """An httpx client that neither keeps nor sends cookies."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        pass


_NO_COOKIES = _NoCookies()
