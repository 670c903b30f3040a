"""How a challenger would have answered live traffic: per model name, champion and
candidate, the texts both scored and, per label, how often their flags agreed and how
often the candidate flagged. One Redis hash (``<prefix>:shadow``) that every ``serve``
replica adds to, so ``/metrics`` and ``modfactory models`` show the sum."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, Field
from redis.asyncio import Redis

_SEP = "|"


class ShadowTally(BaseModel):
    """A candidate scored beside a champion on the same requests."""

    model_name: str
    champion: str
    candidate: str
    texts: int = 0
    agreed: dict[str, int] = Field(default_factory=dict)  # label -> texts with the same flag
    flagged: dict[str, int] = Field(default_factory=dict)  # label -> texts it flagged

    def agreement(self) -> dict[str, float]:
        """Per label, the share of texts on which both flagged alike."""
        return {label: n / self.texts for label, n in self.agreed.items()} if self.texts else {}


class ShadowLog:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.key = f"{prefix}:shadow"

    async def add(
        self,
        model_name: str,
        champion: str,
        candidate: str,
        champion_flags: list[Mapping[str, bool]],
        candidate_flags: list[Mapping[str, bool]],
    ) -> None:
        """Count one request's texts, as both flagged them."""
        head = _SEP.join((model_name, champion, candidate))
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(self.key, f"{head}{_SEP}texts", len(champion_flags))
        for label in champion_flags[0] if champion_flags else ():
            agreed = sum(
                mine[label] == theirs.get(label, False)
                for mine, theirs in zip(champion_flags, candidate_flags, strict=True)
            )
            flagged = sum(bool(theirs.get(label)) for theirs in candidate_flags)
            pipe.hincrby(self.key, f"{head}{_SEP}agreed{_SEP}{label}", agreed)
            pipe.hincrby(self.key, f"{head}{_SEP}flagged{_SEP}{label}", flagged)
        await pipe.execute()

    async def tallies(self, model_name: str | None = None) -> list[ShadowTally]:
        """Every (champion, candidate) pair seen, of one model name or of all."""
        found: dict[tuple[str, str, str], ShadowTally] = {}
        for raw_field, raw_value in (await self.redis.hgetall(self.key)).items():
            parts = raw_field.decode().split(_SEP, 4)
            name, champion, candidate, what = parts[:4]
            if model_name is not None and name != model_name:
                continue
            tally = found.setdefault(
                (name, champion, candidate),
                ShadowTally(model_name=name, champion=champion, candidate=candidate),
            )
            if what == "texts":
                tally.texts = int(raw_value)
            elif len(parts) == 5:
                getattr(tally, what)[parts[4]] = int(raw_value)
        return list(found.values())
