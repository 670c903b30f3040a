"""Accounts and the role table, without a server: the rules of an account, its store (on
fakeredis: tokens only as hashes), the table every route asks, and serve's cache of the
accounts (a revoked token refused once it is read again, a new one found at once)."""

from __future__ import annotations

import fakeredis
import pytest
from redis.exceptions import ConnectionError

from modfactory.roles import NEEDS, Action, Role, parse_role, refusal
from modfactory.store.accounts import AccountError, AccountStore, check_name, token_digest
from modfactory.web.identity import Accounts


def test_each_role_may_what_the_one_below_may_and_more() -> None:
    allowed = {role: {a for a in Action if role.may(a)} for role in Role}
    assert allowed[Role.VIEWER] == {Action.READ}
    assert allowed[Role.REVIEWER] == {Action.READ, Action.REVIEW}
    assert allowed[Role.OPERATOR] == allowed[Role.REVIEWER] | {
        Action.RUN,
        Action.SCORE,
        Action.APPROVE,
        Action.ADJUDICATE,
    }
    assert allowed[Role.ADMIN] == set(Action)
    assert set(NEEDS) == set(Action)  # every action is in the table


def test_a_refusal_names_the_role_needed_and_the_one_held() -> None:
    said = refusal("alice", Role.REVIEWER, Action.PROMOTE)
    assert said.startswith("alice may not promote and roll back models")
    assert "needs the admin role" in said and "the reviewer role" in said
    assert "moderation calls only" in refusal("the serve token", None, Action.READ)
    assert parse_role(" Operator ") == Role.OPERATOR
    with pytest.raises(ValueError, match="viewer, reviewer, operator, admin"):
        parse_role("boss")


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 101, "cli:me@host", "é"])
def test_a_name_outside_the_rule_is_refused_naming_it(name: str) -> None:
    with pytest.raises(AccountError, match="account name"):
        check_name(name)


def test_the_service_identities_names_are_not_accounts() -> None:
    for name in ("webhook", "Review", "serve"):
        with pytest.raises(AccountError, match="choose another"):
            check_name(name)
    assert check_name(" Alice@Example.COM ") == "alice@example.com"


@pytest.fixture
def store() -> AccountStore:
    return AccountStore(fakeredis.FakeAsyncRedis(), "t")


async def _every_value(store: AccountStore) -> bytes:
    redis = store.redis
    found = b""
    for key in await redis.keys("*"):
        kind = (await redis.type(key)).decode()
        found += key + (await redis.get(key) if kind == "string" else b"")
        if kind == "set":
            found += b"".join(await redis.smembers(key))
    return found


async def test_a_token_is_given_once_and_kept_only_as_its_hash(store: AccountStore) -> None:
    account, token = await store.add("Alice@example.com", Role.OPERATOR)
    assert account.name == "alice@example.com" and token.startswith("mf_") and len(token) > 40
    assert account.holds(token) and not account.holds(token + "x")
    assert token.encode() not in await _every_value(store)
    with pytest.raises(AccountError, match="exists"):
        await store.add("alice@example.com", Role.VIEWER)
    other, second = await store.add("bob", Role.VIEWER)
    assert second != token and other.token_sha256 != account.token_sha256
    assert [a.name for a in await store.all()] == ["alice@example.com", "bob"]


async def test_a_revoked_account_holds_no_token_and_its_name_may_be_given_again(
    store: AccountStore,
) -> None:
    _, token = await store.add("carol", Role.REVIEWER)
    revoked = await store.revoke("carol")
    assert not revoked.active and not revoked.holds(token)
    with pytest.raises(AccountError, match="was revoked"):
        await store.set_role("carol", Role.ADMIN)
    with pytest.raises(AccountError, match="does not exist"):
        await store.revoke("dave")
    again, new = await store.add("carol", Role.VIEWER)
    assert again.active and again.holds(new) and not again.holds(token)
    assert (await store.set_role("carol", Role.ADMIN)).role == Role.ADMIN


async def test_serve_refuses_a_revoked_token_once_it_reads_the_accounts_again(
    store: AccountStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = Accounts(store)
    await accounts.reload()
    _, token = await store.add("erin", Role.VIEWER)
    assert (await accounts.by_token(token)).name == "erin"  # just added: found by its hash
    await store.revoke("erin")
    assert await accounts.by_token(token) is not None  # until the next read ...
    await accounts.reload()
    assert await accounts.by_token(token) is None  # ... then refused
    assert await store.by_digest(token_digest(token)) is None

    _, kept = await store.add("frank", Role.ADMIN)
    await accounts.reload()

    async def away(*args: object) -> list:
        raise ConnectionError("Redis is away")

    monkeypatch.setattr(store, "all", away)
    monkeypatch.setattr(store, "by_digest", away)
    await accounts.reload()  # Redis away: the last read holds, sign-ins go on
    assert (await accounts.by_name("Frank")).name == "frank"
    assert (await accounts.by_token(kept)).role == Role.ADMIN
    assert await accounts.by_token("mf_unknown") is None  # not a 500


async def test_unknown_tokens_cost_one_lookup_each_never_a_read_of_every_account(
    store: AccountStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    accounts = Accounts(store)
    await accounts.reload()
    reads = []

    async def counted() -> list:
        reads.append(1)
        return []

    monkeypatch.setattr(store, "all", counted)
    for n in range(50):
        assert await accounts.by_token(f"mf_guess{n}") is None
    assert reads == []
