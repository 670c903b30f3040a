"""Who may do what: the one table. Four roles, each allowed what the one below it is and
more; every action names the least role it needs. The API, ``/ui`` and the CLI ask here,
so a route never decides by itself (and a page shows only what its viewer may do).
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    VIEWER = "viewer"
    REVIEWER = "reviewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def may(self, action: Action) -> bool:
        return self.rank >= NEEDS[action].rank


class Action(StrEnum):
    READ = "read runs, models, the schedule, metrics and the audit log"
    REVIEW = "review texts and send corrections"
    RUN = "start, cancel and re-queue runs"
    SCORE = "start and cancel scoring jobs over an archive"
    APPROVE = "approve a quoted cost"
    ADJUDICATE = "settle disputed reviews"
    PROMOTE = "promote and roll back models"
    MANAGE_USERS = "manage accounts"


NEEDS: dict[Action, Role] = {
    Action.READ: Role.VIEWER,
    Action.REVIEW: Role.REVIEWER,
    Action.RUN: Role.OPERATOR,
    Action.SCORE: Role.OPERATOR,
    Action.APPROVE: Role.OPERATOR,
    Action.ADJUDICATE: Role.OPERATOR,
    Action.PROMOTE: Role.ADMIN,
    Action.MANAGE_USERS: Role.ADMIN,
}


def refusal(who: str, role: Role | None, action: Action) -> str:
    """The 403's message: what was asked, the role it needs, the role the caller has."""
    has = f"the {role} role" if role is not None else "a scoring client's: moderation calls only"
    return f"{who} may not {action}: that needs the {NEEDS[action]} role (the caller has {has})"


def parse_role(value: str) -> Role:
    """``value`` as a Role; ValueError naming the four otherwise."""
    try:
        return Role(value.strip().lower())
    except ValueError:
        raise ValueError(
            f"unknown role {value!r}: one of {', '.join(r.value for r in Role)}"
        ) from None
