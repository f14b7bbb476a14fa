"""Connects with libpq (the one bundled in psycopg[binary]) once per line of
input and prints one JSON outcome per line.

Input: JSON lines {"name": ..., "conninfo": ...}. Output: JSON lines
{"name", "ok", "sqlstate", "error", "protocol", "libpq"}: `ok` when the
connection was made and `SELECT 1` answered; otherwise the SQLSTATE the
server sent (None when libpq itself refused) and libpq's message.
"""

import json
import sys

import psycopg


def attempt(conninfo):
    try:
        with psycopg.connect(conninfo, connect_timeout=10, autocommit=True) as conn:
            one = conn.execute("SELECT 1").fetchone()
            if one != (1,):
                return {"ok": False, "sqlstate": None, "error": f"SELECT 1 gave {one!r}"}
            return {
                "ok": True,
                "sqlstate": None,
                "error": None,
                "protocol": conn.pgconn.full_protocol_version,
            }
    except psycopg.Error as e:
        return {"ok": False, "sqlstate": e.sqlstate, "error": str(e).strip()}


def main():
    version = psycopg.pq.version()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        case = json.loads(line)
        out = attempt(case["conninfo"])
        out["name"] = case["name"]
        out["libpq"] = version
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
