"""The driver-matrix scenario (see ../README.md) with psycopg 3 (server-side prepare on first
use) or asyncpg (its statement cache): python driver.py psycopg|asyncpg"""

import asyncio
import os
import sys

LIB = sys.argv[1] if len(sys.argv) > 1 else ""
CLIENTS = int(os.environ.get("DRIVER_CLIENTS", "6"))
ITERATIONS = int(os.environ.get("DRIVER_ITERATIONS", "40"))
TAG = os.environ.get("DRIVER_TAG", LIB)
checks = 0


def expect(what, got, want):
    global checks
    if str(got) != str(want):
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")
    checks += 1


async def with_psycopg(client_id):
    import psycopg

    conn = await psycopg.AsyncConnection.connect(autocommit=True, prepare_threshold=0)
    try:
        await conn.execute(f"SET application_name = '{client_id}'", prepare=False)
        for i in range(ITERATIONS):
            cur = await conn.execute(
                "SELECT %s::int * 2, current_setting('application_name')", (i,)
            )
            doubled, app = await cur.fetchone()
            expect("doubled", doubled, 2 * i)
            expect("application_name", app, client_id)
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO driver_rows (client, n) VALUES (%s, %s)", (client_id, i)
                )
                cur = await conn.execute(
                    "SELECT count(*)::int FROM driver_rows WHERE client = %s", (client_id,)
                )
                (n,) = await cur.fetchone()
            expect("rows", n, i + 1)
            try:
                await conn.execute("SELECT 1 / (%s::int - %s::int)", (i, i))
                raise AssertionError("division by zero succeeded")
            except psycopg.errors.DivisionByZero as e:
                expect("division by zero SQLSTATE", e.sqlstate, "22012")
    finally:
        await conn.close()


async def with_asyncpg(client_id):
    import asyncpg

    conn = await asyncpg.connect(ssl=False)
    try:
        await conn.execute(f"SET application_name = '{client_id}'")
        for i in range(ITERATIONS):
            row = await conn.fetchrow(
                "SELECT $1::int * 2, current_setting('application_name')", i
            )
            expect("doubled", row[0], 2 * i)
            expect("application_name", row[1], client_id)
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO driver_rows (client, n) VALUES ($1, $2)", client_id, i
                )
                n = await conn.fetchval(
                    "SELECT count(*)::int FROM driver_rows WHERE client = $1", client_id
                )
            expect("rows", n, i + 1)
            try:
                await conn.fetchval("SELECT 1 / ($1::int - $1::int)", i)
                raise AssertionError("division by zero succeeded")
            except asyncpg.exceptions.DivisionByZeroError as e:
                expect("division by zero SQLSTATE", e.sqlstate, "22012")
    finally:
        await conn.close()


async def main():
    run = {"psycopg": with_psycopg, "asyncpg": with_asyncpg}.get(LIB)
    if run is None:
        print("usage: python driver.py psycopg|asyncpg", file=sys.stderr)
        sys.exit(2)
    await asyncio.gather(*(run(f"{TAG}-{c}") for c in range(CLIENTS)))
    print(f"checks={checks}")


asyncio.run(main())
