"""What a relay did: :class:`RelayStats`, counted per drain and summed over the relay's life (``Relay.stats``)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RelayStats"]


@dataclass
class RelayStats:
    """What a drain did. ``duplicates``: messages the server already had (not stored again)."""

    published: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    retried: int = 0

    def add(self, other: RelayStats) -> None:
        self.published += other.published
        self.duplicates += other.duplicates
        self.dead_lettered += other.dead_lettered
        self.retried += other.retried

    def copy(self) -> RelayStats:
        return RelayStats(self.published, self.duplicates, self.dead_lettered, self.retried)

    def minus(self, other: RelayStats) -> RelayStats:
        return RelayStats(self.published - other.published, self.duplicates - other.duplicates,
                          self.dead_lettered - other.dead_lettered, self.retried - other.retried)
