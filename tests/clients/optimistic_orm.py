"""psycopg 3 with its default (non-autocommit) connections, and SQLAlchemy 2
ORM sessions over it, through pgsplit's optimistic transactions. Run by
tests/it/optimistic.rs.

Usage:
  optimistic_orm.py DSN TABLE
      TABLE has a row (id 1, v int). Prints one line per step:
        psycopg read-only PORT        (inet_server_port() inside the read
                                       transaction: which server ran it)
        psycopg read-then-write V PORT (the value written from the value
                                       read, and the server after the write)
        sqlalchemy read-only PORT
        sqlalchemy read-then-write V
        pipeline PORT V               (psycopg pipeline mode: two reads in
                                       one flight after its BEGIN)
        raw pipeline PORT V STATUS    (libpq's pipeline: BEGIN and two reads
                                       up to one Sync, then the status)
"""

import sys

import psycopg
from sqlalchemy import Integer, create_engine, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


def psycopg_steps(dsn, table):
    # autocommit=False is psycopg's default: it sends BEGIN before the
    # first statement of each transaction.
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur:
            cur.execute(f"SELECT v FROM {table} WHERE id = %s", (1,))
            cur.fetchone()
            cur.execute("SELECT inet_server_port()")
            port = cur.fetchone()[0]
        conn.commit()
        print(f"psycopg read-only {port}")

        with conn.cursor() as cur:
            cur.execute(f"SELECT v FROM {table} WHERE id = %s", (1,))
            (v,) = cur.fetchone()
            cur.execute(f"UPDATE {table} SET v = %s WHERE id = %s", (v + 1, 1))
            cur.execute("SELECT inet_server_port()")
            port = cur.fetchone()[0]
        conn.commit()
        with conn.cursor() as cur:
            cur.execute(f"SELECT v FROM {table} WHERE id = %s", (1,))
            (now,) = cur.fetchone()
        conn.rollback()
        print(f"psycopg read-then-write {now} {port}")


def sqlalchemy_steps(dsn, table):
    class Base(DeclarativeBase):
        pass

    class Row(Base):
        __tablename__ = table
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        v: Mapped[int] = mapped_column(Integer)

    url = dsn.replace("postgres://", "postgresql+psycopg://", 1)
    engine = create_engine(url, pool_size=2)
    # An ORM session always begins a transaction; a GET handler reads and
    # closes (rolls back).
    with Session(engine) as session:
        session.get(Row, 1)
        port = session.execute(text("SELECT inet_server_port()")).scalar_one()
        print(f"sqlalchemy read-only {port}")

    # A read-modify-write, committed by the ORM's unit of work.
    with Session(engine) as session, session.begin():
        row = session.get(Row, 1)
        row.v = row.v + 1
    with Session(engine) as session:
        print(f"sqlalchemy read-then-write {session.get(Row, 1).v}")
    engine.dispose()


def pipeline_steps(dsn, table):
    # In pipeline mode psycopg sends its BEGIN through the extended protocol
    # together with the statements that follow, up to one Sync.
    with psycopg.connect(dsn) as conn:
        with conn.pipeline():
            port = conn.execute("SELECT inet_server_port()")
            v = conn.execute(f"SELECT v FROM {table} WHERE id = %s", (1,))
        print(f"pipeline {port.fetchone()[0]} {v.fetchone()[0]}")
        conn.rollback()


def raw_pipeline_steps(dsn, table):
    # BEGIN and the reads after it in one pipeline up to one Sync, through
    # libpq itself: the whole opens the transaction on a replica.
    import select

    from psycopg import pq

    with psycopg.connect(dsn, autocommit=True) as conn:
        pg = conn.pgconn
        pg.enter_pipeline_mode()
        pg.send_query_params(b"BEGIN", None)
        pg.send_query_params(b"SELECT inet_server_port()", None)
        pg.send_query_params(f"SELECT v FROM {table} WHERE id = $1".encode(), [b"1"])
        pg.pipeline_sync()
        while pg.flush() != 0:
            select.select([], [pg.socket], [], 10)
        values = []
        while True:
            pg.consume_input()
            if pg.is_busy():
                select.select([pg.socket], [], [], 10)
                continue
            res = pg.get_result()
            if res is None:
                continue
            if res.status == pq.ExecStatus.PIPELINE_SYNC:
                break
            if res.status == pq.ExecStatus.TUPLES_OK:
                values.append(res.get_value(0, 0).decode())
            elif res.status != pq.ExecStatus.COMMAND_OK:
                raise RuntimeError(res.error_message.decode())
        pg.exit_pipeline_mode()
        status = pq.TransactionStatus(pg.transaction_status).name
        print(f"raw pipeline {values[0]} {values[1]} {status}")
        conn.execute("ROLLBACK")


def main():
    dsn, table = sys.argv[1], sys.argv[2]
    psycopg_steps(dsn, table)
    sqlalchemy_steps(dsn, table)
    pipeline_steps(dsn, table)
    raw_pipeline_steps(dsn, table)


if __name__ == "__main__":
    main()
