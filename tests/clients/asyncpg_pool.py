"""asyncpg through pgsplit, as an application pool uses it: many connections,
each with asyncpg's statement cache on (named server-side statements
`__asyncpg_stmt_N__`, the same names on every connection), its own settings
and a write transaction per round. Run by tests/it/pool_transaction.rs.

Usage: asyncpg_pool.py DSN CLIENTS ROUNDS TABLE
Prints one line: `ok CLIENTS ROUNDS` or the first failures; exit 1 on any.
"""

import asyncio
import sys

import asyncpg


async def client(dsn: str, i: int, rounds: int, table: str, failures: list) -> None:
    try:
        conn = await asyncpg.connect(dsn, statement_cache_size=100)
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        failures.append(f"client {i} connect: {type(e).__name__}: {e}")
        return
    try:
        await conn.execute(f"SET application_name = 'apg-{i}'")
        for r in range(rounds):
            # Cached (prepared once per connection, named by asyncpg).
            got = await conn.fetchval(
                "SELECT current_setting('application_name') || '/' || $1::text", str(r)
            )
            if got != f"apg-{i}/{r}":
                failures.append(f"client {i} round {r}: read {got!r}")
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table} VALUES ($1, $2)", i, r)
                n = await conn.fetchval(
                    f"SELECT count(*) FROM {table} WHERE client = $1", i
                )
                if n != r + 1:
                    failures.append(f"client {i} round {r}: {n} rows in its transaction")
    except Exception as e:  # noqa: BLE001
        failures.append(f"client {i}: {type(e).__name__}: {e}")
    finally:
        await conn.close()


async def main() -> int:
    dsn, clients, rounds, table = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    failures: list = []
    await asyncio.gather(*(client(dsn, i, rounds, table, failures) for i in range(clients)))
    if failures:
        print(f"{len(failures)} failures: " + " | ".join(failures[:5]))
        return 1
    print(f"ok {clients} {rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
