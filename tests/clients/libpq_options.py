"""Connects with libpq (the one bundled in psycopg[binary]) once per input
line and prints one outcome line per case.

Input lines: NAME<TAB>CONNINFO. Output lines:
NAME<TAB>OUTCOME<TAB>PROTOCOL<TAB>MESSAGE, where OUTCOME is `ok` (connected and
`SELECT 1` answered), `sqlstate:XXXXX` (the server refused with that code),
`server` (the server refused a connection: libpq keeps no code for that) or
`client` (libpq refused by itself), PROTOCOL is libpq's full protocol
version number (30000, 30002) or 0, and MESSAGE is libpq's error on one line.
The first output line is `libpq<TAB><version>`.
"""

import sys

import psycopg


def attempt(conninfo):
    try:
        with psycopg.connect(conninfo, connect_timeout=10, autocommit=True) as conn:
            one = conn.execute("SELECT 1").fetchone()
            if one != (1,):
                return "client", 0, f"SELECT 1 gave {one!r}"
            return "ok", conn.pgconn.full_protocol_version, ""
    except psycopg.Error as e:
        message = " ".join(str(e).split())
        if e.sqlstate:
            kind = f"sqlstate:{e.sqlstate}"
        elif "FATAL:" in message or "ERROR:" in message:
            # libpq keeps no SQLSTATE for a refused connection; the server's
            # severity in the message says who refused.
            kind = "server"
        else:
            kind = "client"
        return kind, 0, message


def main():
    print(f"libpq\t{psycopg.pq.version()}", flush=True)
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            continue
        name, conninfo = line.split("\t", 1)
        kind, protocol, message = attempt(conninfo)
        print(f"{name}\t{kind}\t{protocol}\t{message}", flush=True)


if __name__ == "__main__":
    main()
