"""Match rows against many keys with one statement: the keys are bound as arrays.

An IN list binds one parameter a value, and a server takes at most 65,535 in a statement; a backfill's
or a long outage's alerts can name more organizations and days than that.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date

from sqlalchemy import BigInteger, ColumnElement, Date, func, literal, select, tuple_
from sqlalchemy.dialects.postgresql import ARRAY


def organization_ids_in(column, organization_ids: Iterable[int]) -> ColumnElement[bool]:
    """column = any(one array parameter)."""
    return column == func.any(literal(sorted(set(organization_ids)), ARRAY(BigInteger)))


def organization_days_in(
    organization_column, day_column, organization_days: Iterable[tuple[int, date]]
) -> ColumnElement[bool]:
    """(organization, day) in the pairs of two array parameters, unnested side by side."""
    keys = sorted(set(organization_days))
    pairs = select(
        func.unnest(literal([key[0] for key in keys], ARRAY(BigInteger))),
        func.unnest(literal([key[1] for key in keys], ARRAY(Date))),
    )
    return tuple_(organization_column, day_column).in_(pairs)
