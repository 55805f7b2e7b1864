from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from backend_urls import BACKENDS, MYSQL, POSTGRES, SQL_BACKENDS, Backend

from pbuffer.examples.natsserver import NatsServer


@pytest.fixture
def server() -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream on a free port and a temporary store, stopped after the test."""
    with NatsServer() as running:
        yield running


@pytest.fixture(params=BACKENDS, ids=lambda b: b.name)
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=SQL_BACKENDS, ids=lambda b: b.name)
def sql_backend(request: pytest.FixtureRequest) -> Backend:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=[b for b in SQL_BACKENDS if b.server], ids=lambda b: b.name)
def server_backend(request: pytest.FixtureRequest) -> Backend:
    return request.param  # type: ignore[no-any-return]


def _store(backend: Backend, tmp_path: Path) -> Iterator[str]:
    yield from backend.store(tmp_path)


@pytest.fixture
def store_url(backend: Backend, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store on each backend."""
    yield from _store(backend, tmp_path)


@pytest.fixture
def sql_store_url(sql_backend: Backend, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store on each SQL backend."""
    yield from _store(sql_backend, tmp_path)


@pytest.fixture
def server_store_url(server_backend: Backend, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty store on each server database."""
    yield from _store(server_backend, tmp_path)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for database in (POSTGRES, MYSQL):
        try:
            database.drop()
        except Exception as exc:  # leave the run's outcome alone; a stray test database is harmless
            print(f"could not drop test database: {exc}")
