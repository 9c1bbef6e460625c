"""Python frameworks, each configured only from the connection Secret's keys (in the
environment, as `envFrom` gives them), unedited. Prints one line per framework:
`<framework> <current_user> <ssl>`; any failure raises.

  psycopg        psycopg 3, DATABASE_URL (the Secret's uri)
  sqlalchemy     SQLAlchemy with asyncpg, SQLALCHEMY_URL (the Secret's sqlalchemy-asyncpg-uri)
  django         Django through dj-database-url, DATABASE_URL
  psycopg-direct psycopg 3, DIRECT_URL (the Secret's direct-uri: TLS files where mounted)
"""
import asyncio
import os
import sys

QUERY = "SELECT current_user, coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)"


def psycopg_url(name, var):
    import psycopg

    with psycopg.connect(os.environ[var]) as conn:
        user, ssl = conn.execute(QUERY).fetchone()
    print(name, user, ssl)


async def sqlalchemy_asyncpg():
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(os.environ["SQLALCHEMY_URL"])
    async with engine.connect() as conn:
        user, ssl = (await conn.execute(text(QUERY))).one()
    await engine.dispose()
    print("sqlalchemy", user, ssl)


def django():
    import dj_database_url
    from django.conf import settings

    settings.configure(DATABASES={"default": dj_database_url.config()})
    import django as dj

    dj.setup()
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(QUERY)
        user, ssl = cur.fetchone()
    print("django", user, ssl)


if __name__ == "__main__":
    psycopg_url("psycopg", "DATABASE_URL")
    asyncio.run(sqlalchemy_asyncpg())
    django()
    psycopg_url("psycopg-direct", "DIRECT_URL")
    sys.stdout.flush()
