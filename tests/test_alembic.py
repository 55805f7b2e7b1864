"""pytest-alembic's built-in checks of the migrations, on sqlite, PostgreSQL and MariaDB."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from pbuffer.backends import versioning
from pbuffer.backends.database import Database
from pytest_alembic import tests as alembic_tests
from pytest_alembic.config import Config

test_single_head_revision = alembic_tests.test_single_head_revision
test_upgrade = alembic_tests.test_upgrade
test_model_definitions_match_ddl = alembic_tests.test_model_definitions_match_ddl
test_up_down_consistency = alembic_tests.test_up_down_consistency


@pytest.fixture
def alembic_config() -> Config:
    return Config(config_options={"script_location": versioning.SCRIPT_LOCATION})


@pytest.fixture
def alembic_engine(sql_store_url: str) -> Iterator[Any]:
    # pbuffer's own engine (sqlite: its pragmas and BEGIN IMMEDIATE), so the migrations run as they do in use.
    database = Database(sql_store_url)
    if database.sqlite:
        from pbuffer.backends.sqlite_file import create_private_file

        create_private_file(database.path)
    yield database.engine
    database.dispose()


def test_alembic_engine_is_the_one_in_use(alembic_engine: sa.Engine, sql_store_url: str) -> None:
    assert alembic_engine.url.get_backend_name() == sa.make_url(sql_store_url).get_backend_name()
