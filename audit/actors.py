"""Who did something: a user, an agent (with its version), an API client, or the system.

The audit app imports nothing from the other apps, so an actor is a small value that callers build.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    """The acting party of a service call, as recorded in the audit trail."""

    kind: str  # one of ActorKind
    id: str
    label: str

    @classmethod
    def user(cls, user) -> Actor:
        return cls(kind="user", id=str(user.pk), label=user.get_username())

    @classmethod
    def agent(cls, key: str, version: str = "") -> Actor:
        return cls(kind="agent", id=f"{key}@{version}" if version else key, label=key)

    @classmethod
    def api_client(cls, client) -> Actor:
        return cls(kind="api_client", id=str(client.pk), label=str(client))

    @classmethod
    def system(cls, name: str = "system") -> Actor:
        return cls(kind="system", id=name, label=name)

    @property
    def user_id(self) -> int | None:
        return int(self.id) if self.kind == "user" else None


SYSTEM = Actor.system()
