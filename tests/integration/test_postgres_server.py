"""The throwaway PostgreSQL that `postgres_url` starts: SQLAlchemy over psycopg reaches it and can
create, write and read a table."""

from __future__ import annotations

import pytest
import sqlalchemy
from sqlalchemy import text

pytestmark = pytest.mark.integration


def test_round_trip(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.begin() as connection:
            assert connection.execute(text("SELECT 1")).scalar_one() == 1
            connection.execute(text("CREATE TABLE probe (id serial PRIMARY KEY, name text NOT NULL)"))
            rows = [{"name": "é"}, {"name": "b"}]
            connection.execute(text("INSERT INTO probe (name) VALUES (:name)"), rows)
        with engine.begin() as connection:
            names = connection.execute(text("SELECT name FROM probe ORDER BY id")).scalars().all()
            connection.execute(text("DROP TABLE probe"))
        assert names == ["é", "b"]
    finally:
        engine.dispose()
