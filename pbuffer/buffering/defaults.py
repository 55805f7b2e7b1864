"""Default implementations of optional primitives, for backends that cannot do better in a query. They work on
any backend through its required primitives; the built-in backends override both."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..limits import SubjectStats
from ..message import Message

if TYPE_CHECKING:
    from ..buffer import Buffer

__all__ = ["claim_skipping_by_release", "subject_stats_by_walk"]


def claim_skipping_by_release(buffer: Buffer, limit: int, after: str | None, owner: str, until_us: int, now_us: int,
                              skip: frozenset[str]) -> list[Message]:
    """``_claim_skipping`` through ``_claim`` and ``_release``: claim window after window and give back what is
    skipped, so a long run of skipped messages costs a walk over them."""
    found: list[Message] = []
    cursor = after
    while len(found) < limit:
        window = buffer._claim(limit, cursor, owner, until_us, now_us)
        kept = [m for m in window if m.subject not in skip]
        give_back = [m.id for m in window if m.subject in skip] + [m.id for m in kept[limit - len(found):]]
        if give_back:
            buffer._release(give_back, owner)
        found.extend(kept[:limit - len(found)])
        if len(window) < limit:
            break
        cursor = window[-1].id
    return found


def subject_stats_by_walk(buffer: Buffer) -> dict[str, SubjectStats]:
    """Per-subject counts by walking the pending messages and the dead letters (dropped and expired stay 0)."""
    found: dict[str, list[int]] = {}
    after: str | None = None
    while True:
        page = buffer.get_all(1000, after=after)
        for message in page:
            counts = found.setdefault(message.subject, [0] * 6)
            counts[0] += 1
            counts[1] += len(message.payload)
        if len(page) < 1000:
            break
        after = page[-1].id
    for letter in buffer.dead_letters():
        counts = found.setdefault(letter.message.subject, [0] * 6)
        counts[2] += 1
        counts[3] += len(letter.message.payload)
    return {subject: SubjectStats(*counts) for subject, counts in found.items()}
