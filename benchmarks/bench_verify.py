"""Benchmark ``sessiontrace.audit.verify``: rows verified per second on PostgreSQL.

    python benchmarks/bench_verify.py [--rows 200000] [--server postgresql+psycopg://postgres@127.0.0.1:5432]

Creates a scratch database, installs the audit log (chain trigger, keyed) and fills it with
``--rows`` realistic audit rows generated in SQL by ``generate_series`` through the chain trigger
(so each row is chained exactly as in production; not timed). Then times ``verify()`` over the
whole chain (server-side cursor, every HMAC recomputed in Python) and prints rows/s beside the
target, PASS or FAIL. The scratch database is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import time

from sqlalchemy import create_engine, text

from sessiontrace.audit.postgres import install
from sessiontrace.audit.verify import verify

TARGET_ROWS_PER_S = 50_000
KEY = b"bench-verify-key"
FILL = """
INSERT INTO audit_log (table_name, record_id, change_type, changed_fields, previous_values, new_values,
                       session_id, changed_by_user_id, change_timestamp, trace_id, span_id, source)
SELECT 'claims', '{"id":' || g || '}', 'update', '["amount","status","title"]',
       jsonb_build_object('amount', (g * 1.25)::text, 'status', 'open', 'title', 'hail damage #' || g),
       jsonb_build_object('amount', (g * 1.5)::text, 'status', 'review', 'title', 'hail damage #' || g),
       gen_random_uuid(), 'user-' || (g % 97), clock_timestamp(), md5(g::text), left(md5((g + 1)::text), 16), 'orm'
  FROM generate_series(:start, :stop) AS g
"""
CHUNK = 50_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument(
        "--server", default=os.environ.get("SESSIONTRACE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
    )
    args = parser.parse_args()

    name = f"st_bench_verify_{secrets.token_hex(4)}"
    admin = create_engine(f"{args.server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(f"{args.server}/{name}")
    try:
        install(engine, key=KEY)
        began = time.perf_counter()
        for start in range(1, args.rows + 1, CHUNK):
            with engine.begin() as conn:
                conn.execute(text(FILL), {"start": start, "stop": min(start + CHUNK - 1, args.rows)})
        with engine.begin() as conn:
            conn.execute(text("ANALYZE audit_log"))
        print(f"filled {args.rows:,} chained rows in {time.perf_counter() - began:.1f}s (not timed)")

        verify(engine, key=KEY)  # warm the cache once, as a periodic verifier would have it
        report = verify(engine, key=KEY)
        if not report.ok or report.rows_checked != args.rows:
            print(f"FAIL: {report.summary()}")
            return 1
        rate = report.rows_per_second
        verdict = "PASS" if rate >= TARGET_ROWS_PER_S else "FAIL"
        print(
            f"verify: {report.rows_checked:,} rows in {report.elapsed:.2f}s = {rate:,.0f} rows/s"
            f" (target >= {TARGET_ROWS_PER_S:,}) {verdict}"
        )
        return 0 if verdict == "PASS" else 1
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
