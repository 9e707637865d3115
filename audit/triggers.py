"""Database triggers that make the audit table append-only, on PostgreSQL and SQLite alike.

The one change allowed is the sealer's: a row whose ``seal_seq`` is still NULL may get ``seal_seq`` and ``hash`` set,
once, with every other column unchanged. UPDATE otherwise, DELETE and TRUNCATE are refused.
"""

from audit.chain import CHAINED_FIELDS

TABLE = "audit_auditevent"
# Every column the hash chain covers is immutable; seal_seq (and hash) are the sealer's one-time fill.
_DATA_COLUMNS = tuple(c for c in CHAINED_FIELDS if c != "seal_seq")

# data is compared as jsonb (binary, equal when semantically equal: the hash is over the parsed value anyway), which
# costs the sealer far less than rendering both versions as text.
_PG_UNCHANGED = " AND ".join(f"NEW.{c} IS NOT DISTINCT FROM OLD.{c}" for c in _DATA_COLUMNS if c != "data")
POSTGRES_INSTALL = f"""
CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.seal_seq IS NULL AND NEW.seal_seq IS NOT NULL AND NEW.hash <> ''
       AND {_PG_UNCHANGED} AND NEW.data = OLD.data THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit events are append-only: % refused on %', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS audit_append_only_row ON {TABLE};
CREATE TRIGGER audit_append_only_row BEFORE UPDATE OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
DROP TRIGGER IF EXISTS audit_append_only_truncate ON {TABLE};
CREATE TRIGGER audit_append_only_truncate BEFORE TRUNCATE ON {TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
"""
POSTGRES_REMOVE = f"""
DROP TRIGGER IF EXISTS audit_append_only_row ON {TABLE};
DROP TRIGGER IF EXISTS audit_append_only_truncate ON {TABLE};
DROP FUNCTION IF EXISTS audit_append_only();
"""

_SQLITE_CHANGED = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in _DATA_COLUMNS)
SQLITE_INSTALL = [
    f"""CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON {TABLE}
    WHEN OLD.seal_seq IS NOT NULL OR NEW.seal_seq IS NULL OR NEW.hash = '' OR {_SQLITE_CHANGED}
    BEGIN SELECT RAISE(ABORT, 'audit events are append-only: UPDATE refused'); END;""",
    f"""CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON {TABLE}
    BEGIN SELECT RAISE(ABORT, 'audit events are append-only: DELETE refused'); END;""",
]
SQLITE_REMOVE = [
    "DROP TRIGGER IF EXISTS audit_append_only_update;",
    "DROP TRIGGER IF EXISTS audit_append_only_delete;",
]


def _statements(vendor: str, install: bool) -> list[str]:
    if vendor == "postgresql":
        return [POSTGRES_INSTALL if install else POSTGRES_REMOVE]
    if vendor == "sqlite":
        return SQLITE_INSTALL if install else SQLITE_REMOVE
    raise NotImplementedError(f"append-only triggers are not written for {vendor}")


def install(connection) -> None:
    with connection.cursor() as cursor:
        for sql in _statements(connection.vendor, install=True):
            cursor.execute(sql)


def remove(connection) -> None:
    """Drop the triggers: for the test suite's flush between transactional tests, and for tamper tests."""
    with connection.cursor() as cursor:
        for sql in _statements(connection.vendor, install=False):
            cursor.execute(sql)
