"""psycopg 3 prepared statements through pgsplit. Run by
tests/it/pool_statements.rs.

Usage:
  psycopg_prepared.py DSN deallocate
      Prepares a statement (psycopg names it `_pg3_0`), drops it with SQL
      `DEALLOCATE _pg3_0`, runs it again. Prints one line per step, the same
      against PostgreSQL directly as through pgsplit.
  psycopg_prepared.py DSN pool CLIENTS ROUNDS
      CLIENTS connections at once, each preparing every statement it runs
      (prepare_threshold=0) with a cache of 3 (psycopg closes the least
      recently used), cycling through 6 texts. Prints `ok CLIENTS ROUNDS` or
      the first failures; exit 1 on any.
"""

import asyncio
import sys

import psycopg


def deallocate(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as conn:
        print("first", conn.execute("SELECT 40 + %s::int", [2]).fetchone()[0])
        print("deallocate", conn.execute("DEALLOCATE _pg3_0", prepare=False).statusmessage)
        try:
            conn.execute("SELECT 40 + %s::int", [2]).fetchone()
            print("again ran")
        except psycopg.Error as e:
            print("again", e.sqlstate)
        print("after", conn.execute("SELECT 1", prepare=False).fetchone()[0])
    return 0


async def client(dsn: str, i: int, rounds: int, failures: list) -> None:
    try:
        conn = await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, prepare_threshold=0
        )
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        failures.append(f"client {i} connect: {type(e).__name__}: {e}")
        return
    conn.prepared_max = 3
    try:
        for r in range(rounds):
            for k in range(6):
                cur = await conn.execute(
                    f"SELECT {k} * 1000 + %s::int, %s::text", [r, f"c{i}"]
                )
                got = await cur.fetchone()
                if got != (k * 1000 + r, f"c{i}"):
                    failures.append(f"client {i} round {r} text {k}: {got!r}")
    except Exception as e:  # noqa: BLE001
        failures.append(f"client {i}: {type(e).__name__}: {e}")
    finally:
        await conn.close()


async def pool(dsn: str, clients: int, rounds: int) -> int:
    failures: list = []
    await asyncio.gather(*(client(dsn, i, rounds, failures) for i in range(clients)))
    if failures:
        print(f"{len(failures)} failures: " + " | ".join(failures[:5]))
        return 1
    print(f"ok {clients} {rounds}")
    return 0


def main() -> int:
    dsn, mode = sys.argv[1], sys.argv[2]
    if mode == "deallocate":
        return deallocate(dsn)
    return asyncio.run(pool(dsn, int(sys.argv[3]), int(sys.argv[4])))


if __name__ == "__main__":
    sys.exit(main())
