"""How the relay hands a window to its transport, beyond publishing it whole.

- :func:`publish_strictly` (``strict_order=True``): per subject one message at a time, a subject stopping at its
  first transient failure, so no later message of a subject lands before an earlier one.
- :func:`publish_probing`: a subject that failed and has not been acknowledged since is tried with its oldest
  message of the window alone (a probe, as a circuit breaker's half-open state), the rest of it held back. A subject
  no stream covers would otherwise have a whole window of its messages published, and fail, each time its hold
  runs out; with the probe, one.

Messages held back get a "not sent" result (``attempted=False``): no attempt, no retry counted, no warning, and
they stay in the buffer for the next window, in order.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Container, Sequence

from ..message import Message
from .transport import PublishResult, Transport

__all__ = ["publish_probing", "publish_strictly"]


def _not_sent(reason: str) -> PublishResult:
    return PublishResult.failed(f"not sent: {reason}", transient=True, attempted=False)


async def publish_strictly(transport: Transport, batch: Sequence[Message]) -> list[PublishResult]:
    """Per subject, one message at a time, stopping a subject at its first transient failure."""
    results: dict[str, PublishResult] = {}
    by_subject: dict[str, list[Message]] = defaultdict(list)
    for message in batch:
        by_subject[message.subject].append(message)

    async def one_subject(messages: list[Message]) -> None:
        for message in messages:
            (result,) = await transport.publish([message])
            results[message.id] = result
            if result.failure is not None and result.failure.transient:
                return  # the rest of this subject waits for the next window, in order

    await asyncio.gather(*(one_subject(messages) for messages in by_subject.values()))
    not_sent = _not_sent("an earlier message of its subject failed")
    return [results.get(message.id, not_sent) for message in batch]


async def publish_probing(transport: Transport, batch: Sequence[Message],
                          failing: Container[str]) -> tuple[list[PublishResult], bool]:
    """``batch`` published whole, except that each subject in ``failing`` sends only its first message. Returns
    the results, in order, and whether any message was held back (the relay then reads from its oldest message
    again, so what was held back goes next, behind its probe)."""
    sent: list[Message] = []
    probed: set[str] = set()
    held_back: set[int] = set()
    for index, message in enumerate(batch):
        subject = message.subject
        if subject in failing:
            if subject in probed:
                held_back.add(index)
                continue
            probed.add(subject)
        sent.append(message)
    if not held_back:
        return await transport.publish(batch), False
    results = await transport.publish(sent)
    if len(results) != len(sent):
        raise RuntimeError(f"transport returned {len(results)} results for {len(sent)} messages")
    answers = iter(results)
    not_sent = _not_sent("its subject failed before and is being tried with its oldest message")
    return [not_sent if index in held_back else next(answers) for index in range(len(batch))], True
