"""An order service with the transactional outbox: each order row and its "order created" event commit together.

The order and its event are written in one database transaction (``buffer.save(..., connection=session)``), so
the event exists exactly when the order does: a rollback, an exception or a crash before the commit leaves neither.
The relay (``relay.py``, a separate process) publishes committed events to JetStream, each once.

Run it (PostgreSQL and a nats-server with a stream on ``orders.>``)::

    python examples/outbox_orders/app.py postgresql+psycopg://postgres@127.0.0.1/shop place 10
    python examples/outbox_orders/relay.py postgresql+psycopg://postgres@127.0.0.1/shop nats://127.0.0.1:4222

``place N`` places N orders and prints one JSON line per order: its event id and whether it committed
(``--fail-every K`` makes every K-th order fail after its event was saved, so it rolls back with its event).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import pbuffer

SUBJECT = "orders.created"


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(sa.String(100))
    amount_cents: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    #: The id of its "order created" message (the Nats-Msg-Id it is published with).
    event_id: Mapped[str | None] = mapped_column(sa.String(36), unique=True)


class PaymentDeclined(Exception):
    """Raised after the event was saved: the order and its event roll back together."""


def open_app(url: str) -> tuple[sessionmaker[Session], pbuffer.Buffer]:
    """The application's sessions and the buffer, on one database. The buffer makes its own tables at open; the
    application's tables are the application's (its alembic migrations would use pbuffer's filter, below)."""
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    return sessionmaker(engine), pbuffer.open(url)


def place_order(sessions: sessionmaker[Session], buffer: pbuffer.Buffer, customer: str, amount_cents: int,
                *, decline: bool = False) -> str:
    """Place an order: the order row and its event in one transaction. Returns the event's id."""
    with sessions() as session, session.begin():  # commits at the end of the block, rolls back on an exception
        order = Order(customer=customer, amount_cents=amount_cents, created_at=datetime.now(timezone.utc))
        session.add(order)
        session.flush()  # the order's id, for the event
        payload = json.dumps({"order": order.id, "customer": customer, "amount_cents": amount_cents}).encode()
        event = buffer.save(payload, subject=SUBJECT, connection=session)
        order.event_id = event.id
        if decline:
            raise PaymentDeclined(f"order {order.id}")
    return event.id


def schema_drift(url: str) -> list[Any]:
    """What alembic autogenerate would change to make the database match this application's models, with
    pbuffer's filter: pbuffer's own tables are left alone (an empty list when the models match)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"include_name": pbuffer.alembic_include_name,
                                                             "include_object": pbuffer.alembic_include_object})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the application's database (the buffer lives there too)")
    commands = parser.add_subparsers(dest="command", required=True)
    place = commands.add_parser("place", help="place orders")
    place.add_argument("count", type=int)
    place.add_argument("--fail-every", type=int, default=0, help="every K-th order is declined (rolled back)")
    args = parser.parse_args(argv)
    sessions, buffer = open_app(args.url)
    try:
        for i in range(1, args.count + 1):
            decline = bool(args.fail_every) and i % args.fail_every == 0
            try:
                event_id = place_order(sessions, buffer, f"customer-{i}", 100 * i, decline=decline)
            except PaymentDeclined:
                print(json.dumps({"order": i, "committed": False}), flush=True)
            else:
                print(json.dumps({"order": i, "committed": True, "event_id": event_id}), flush=True)
    finally:
        buffer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
