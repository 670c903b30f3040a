"""Redis connections: the one grammar of ``MODFACTORY_REDIS_URL`` and the one factory of clients.

Every Redis client the project makes — arq's pool and worker (``store.queue.open_pool``),
``serve``, the CLI, the local trainer's lease and progress writer (and, through them, the rate
limiter and the stores) — is made here, so a new client cannot forget TLS, Sentinel or the
time-outs. The URL forms:

- ``redis://[user:password@]host[:port][/db]`` — one server (port 6379, database 0);
- ``rediss://…`` — the same over TLS, the server's certificate checked against the system's
  authorities or ``MODFACTORY_REDIS_CA_FILE``;
- ``unix:///path/to/redis.sock[?db=N]`` — a local socket;
- ``redis+sentinel://[user:password@]host[:port][,host[:port]…]/<service>[/<db>]`` — the
  sentinels (port 26379), which name the current primary of ``<service>``; the user and
  password are the primary's.

A client made here waits out a failover: a command whose connection fails (refused, reset,
timed out, or answered READONLY by a primary turned replica) is sent again on a new
connection — which, through Sentinel, goes to whichever server is primary now — with a
growing pause (up to 1 s), for ``patience`` seconds in all. It also carries how many
replicas its acknowledged writes wait for (``min_replicas``, read by
``redis_replication.replicated``).

Parsing is pure (the settings check it at load); the clients' libraries are imported only
by the functions that make clients.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, unquote

from pydantic import AfterValidator, BeforeValidator

if TYPE_CHECKING:
    import redis
    import redis.asyncio

REDIS_PORT = 6379
SENTINEL_PORT = 26379
CONNECT_TIMEOUT = 5.0  # s to open a connection (a server that is down answers at once)
READ_TIMEOUT = 15.0  # s to wait for an answer (no command of ours blocks longer; WAIT: 1 s)
PATIENCE = 30.0  # s a worker's or trainer's command waits for Redis (or a new primary)
SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")
FORMS = (
    "redis://[user:password@]host[:port][/db], rediss://… (TLS), unix:///path.sock, or "
    "redis+sentinel://[user:password@]host[:port][,host[:port]…]/service[/db]"
)
_HOST = re.compile(r"\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+")


class RedisUrlError(ValueError):
    """``MODFACTORY_REDIS_URL`` is not one of the forms above (the message never holds the
    password)."""


@dataclass(frozen=True)
class RedisTarget:
    """Where a URL points: one server, a socket, or the sentinels of a service."""

    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    service: str | None = None  # the Sentinel service (the primary's name)
    socket_path: str | None = None

    @property
    def sentinel(self) -> bool:
        return self.scheme == "redis+sentinel"

    @property
    def tls(self) -> bool:
        return self.scheme == "rediss"


def redacted(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for messages and logs."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not (sep and at and ":" in userinfo):
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}"


def parse_redis_url(url: str) -> RedisTarget:
    """The target of ``url``; RedisUrlError naming what is wrong, without the password."""
    shown = redacted(url)
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in SCHEMES:
        raise RedisUrlError(f"{shown!r} is not a Redis URL: use {FORMS}")
    rest, _, query = rest.partition("?")
    if "#" in rest:
        raise RedisUrlError(f"{shown!r}: a Redis URL has no #fragment")
    userinfo, at, rest = rest.rpartition("@")
    username, _, password = userinfo.partition(":")
    credentials = {
        "username": unquote(username) or None if at else None,
        "password": unquote(password) or None if at else None,
    }
    netloc, slash, path = rest.partition("/")
    options = _query(query)
    if scheme == "unix":
        if netloc or not path:
            raise RedisUrlError(f"{shown!r}: a socket URL is unix:///absolute/path.sock")
        db = _db(options.pop("db", "0"), shown)
        _no_more(options, shown)
        return RedisTarget(scheme, db=db, socket_path="/" + path, **credentials)
    _no_more(options, shown)
    default_port = SENTINEL_PORT if scheme == "redis+sentinel" else REDIS_PORT
    hosts = tuple(_host(part, default_port, shown) for part in netloc.split(","))
    segments = path.split("/") if slash and path else []
    if scheme == "redis+sentinel":
        if not segments or not segments[0]:
            raise RedisUrlError(
                f"{shown!r}: a Sentinel URL names the service after the sentinels: "
                "redis+sentinel://host:26379[,host:26379…]/service[/db]"
            )
        if len(segments) > 2:
            raise RedisUrlError(f"{shown!r}: a Sentinel URL ends with /service[/db]")
        service = unquote(segments[0])
        db = _db(segments[1], shown) if len(segments) == 2 else 0
        return RedisTarget(scheme, hosts, db, service=service, **credentials)
    if len(hosts) > 1:
        raise RedisUrlError(f"{shown!r}: several hosts need redis+sentinel://")
    if len(segments) > 1:
        raise RedisUrlError(f"{shown!r}: the path is one database number, e.g. /0")
    db = _db(segments[0], shown) if segments else 0
    return RedisTarget(scheme, hosts, db, **credentials)


def _query(query: str) -> dict[str, str]:
    parsed = parse_qs(query, keep_blank_values=True)
    return {name: values[-1] for name, values in parsed.items()}


def _no_more(options: dict[str, str], shown: str) -> None:
    if options:
        raise RedisUrlError(
            f"{shown!r}: query options are not read ({', '.join(sorted(options))}); "
            "the database goes in the path, TLS in the scheme (rediss://), "
            "a private CA in MODFACTORY_REDIS_CA_FILE"
        )


def _db(text: str, shown: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise RedisUrlError(f"{shown!r}: the database must be a number, not {text!r}")
    return int(text)


def _host(part: str, default_port: int, shown: str) -> tuple[str, int]:
    host, port = part, ""
    if ":" in part and not part.endswith("]"):
        host, _, port = part.rpartition(":")
    if not _HOST.fullmatch(host):
        raise RedisUrlError(f"{shown!r}: {part!r} is not host[:port]")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise RedisUrlError(f"{shown!r}: the port of {part!r} is not a number from 1 to 65535")
    return host.strip("[]"), int(port) if port else default_port


def _checked_url(value: str | None) -> str | None:
    """``value`` stripped (None when empty) once it parses."""
    value = (value or "").strip() or None
    if value is not None:
        parse_redis_url(value)
    return value


def _unset_when_empty(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _checked_ca_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"{str(value)!r} is not a file (a PEM file of certificate authorities)")
    return value


RedisCaFile = Annotated[
    Path | None, BeforeValidator(_unset_when_empty), AfterValidator(_checked_ca_file)
]  # MODFACTORY_REDIS_CA_FILE
RedisUrl = Annotated[str | None, AfterValidator(_checked_url)]  # MODFACTORY_REDIS_URL


def _options(
    target: RedisTarget, ca_file: Path | None, retry: Any, answer_within: float | None = None
) -> dict[str, Any]:
    """Keyword arguments every client of ``target`` is made with (sync or async alike);
    ``answer_within``: seconds to connect and to answer, when shorter than the defaults."""
    from redis.exceptions import BusyLoadingError, ConnectionError, ReadOnlyError, TimeoutError

    options: dict[str, Any] = {
        "db": target.db,
        "username": target.username,
        "password": target.password,
        "socket_connect_timeout": min(CONNECT_TIMEOUT, answer_within or CONNECT_TIMEOUT),
        "socket_timeout": min(READ_TIMEOUT, answer_within or READ_TIMEOUT),
        "socket_keepalive": True,  # a peer lost without a word is noticed
        "health_check_interval": 15,  # a connection idle that long is checked before use
        "retry": retry,
        # sent again on a new connection: a lost one, a replica that was the primary, a
        # server still loading its data after a restart
        "retry_on_error": [ConnectionError, TimeoutError, ReadOnlyError, BusyLoadingError],
    }
    if target.tls:
        options |= {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True}
        if ca_file is not None:
            options["ssl_ca_certs"] = str(ca_file)
    if target.socket_path:
        options["unix_socket_path"] = target.socket_path
    return options


def _retries(patience: float) -> tuple[Any, int]:
    """A backoff (0.1 s doubling to 1 s) and the number of tries it takes to span
    ``patience`` seconds."""
    from redis.backoff import ExponentialBackoff

    backoff, waited, tries = ExponentialBackoff(cap=1.0, base=0.05), 0.0, 0
    while waited < patience:
        tries += 1
        waited += backoff.compute(tries)
    return backoff, tries


def _client(
    url: str,
    ca_file: Path | None,
    redis_class: type,
    sentinel_class: type,
    retry: tuple[type, float],
    min_replicas: int,
    answer_within: float | None = None,
) -> Any:
    """A client of ``url`` of ``redis_class``, through ``sentinel_class`` for a Sentinel URL
    (the blocking and the asyncio library differ in their classes only)."""
    target = parse_redis_url(url)
    retry_class, patience = retry
    options = _options(target, ca_file, retry_class(*_retries(patience)), answer_within)
    if target.sentinel:
        sentinel_options = {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": 2.0}
        sentinels = sentinel_class(list(target.hosts), sentinel_kwargs=sentinel_options, **options)
        client = sentinels.master_for(target.service, redis_class=redis_class)
    elif target.socket_path:
        client = redis_class(**options)
    else:
        host, port = target.hosts[0]
        client = redis_class(host=host, port=port, **options)
    client.min_replicas = min_replicas
    client.patience = patience
    return client


def async_client(
    url: str,
    ca_file: Path | None = None,
    redis_class: type | None = None,
    *,
    patience: float = PATIENCE,
    min_replicas: int = 0,
    answer_within: float | None = None,
) -> redis.asyncio.Redis:
    """An asyncio client of ``url`` (not yet connected); ``redis_class``: e.g. arq's ArqRedis;
    ``patience``: seconds a command waits for Redis; ``min_replicas``: how many replicas an
    acknowledged write waits for; ``answer_within``: seconds a connection may take to open
    and a command to be answered, when shorter than the defaults."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.asyncio.sentinel import Sentinel

    retry = (Retry, patience)
    return _client(url, ca_file, redis_class or Redis, Sentinel, retry, min_replicas, answer_within)


def set_patience(client: redis.asyncio.Redis, patience: float) -> None:
    """Make the asyncio ``client`` wait ``patience`` seconds for Redis from now on."""
    from redis.asyncio.retry import Retry

    client.set_retry(Retry(*_retries(patience)))
    client.patience = patience  # type: ignore[attr-defined]


def sync_client(
    url: str,
    ca_file: Path | None = None,
    *,
    patience: float = PATIENCE,
    min_replicas: int = 0,
    answer_within: float | None = None,
) -> redis.Redis:
    """A blocking client of ``url`` (the local trainer's process writes with one);
    ``answer_within``: as for ``async_client``."""
    from redis import Redis
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    retry = (Retry, patience)
    return _client(url, ca_file, Redis, Sentinel, retry, min_replicas, answer_within)
