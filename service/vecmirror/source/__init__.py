"""Postgres side: migrations, change capture, claiming changes, loading rows, listening."""

from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A plain connection or one borrowed from a pool: every source function accepts either.
# A string: asyncpg's classes are generic only in its stubs, not at run time.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
