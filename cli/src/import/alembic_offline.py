# Renders every revision of an Alembic project, one at a time, per dialect, with Alembic's
# offline (--sql) mode through the project's own env.py. Used by `flotilla import alembic`.
# argv: alembic.ini path, comma-separated dialects, then optional DIALECT=URL overrides
# (e.g. mysql=mariadb:// so MariaDB-only types render as Alembic renders them online). Prints one line
# "FLOTILLA-IMPORT-JSON <json>" on stdout; exit 3 when Alembic is not installed. Each
# rendering also reports the dialect Alembic actually used (an env.py that prefers its own URL,
# e.g. DATABASE_URL, renders every dialect as that one), for the caller to check.
import io
import json
import sys

# Like the alembic command: the working directory is not on sys.path (prepend_sys_path is).
sys.path = [p for p in sys.path if p not in ("", ".")]

try:
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.runtime.migration import MigrationStep
    from alembic.script import ScriptDirectory
except ImportError as e:
    print("FLOTILLA-IMPORT-MISSING " + str(e))
    sys.exit(3)

from sqlalchemy import types as sqltypes


def _json_literal_processor(self, dialect):
    # SQLAlchemy has no literal form for JSON values, so `op.bulk_insert` rows with JSON in
    # offline mode fail; render them as the dialect's string literal of their JSON text,
    # serialized as the dialect would bind them (what Alembic does online).
    string = sqltypes.String().literal_processor(dialect)
    serializer = getattr(dialect, "_json_serializer", None) or json.dumps

    def process(value):
        if value is None:
            return "NULL"
        return string(serializer(value))

    return process


if "literal_processor" not in sqltypes.JSON.__dict__:
    sqltypes.JSON.literal_processor = _json_literal_processor

URLS = {"postgres": "postgresql://", "mysql": "mysql://", "sqlite": "sqlite://"}

ini, dialects = sys.argv[1], sys.argv[2].split(",")
for override in sys.argv[3:]:
    name, _, url = override.partition("=")
    URLS[name] = url


def render(sc, script, dialect, up):
    buf = io.StringIO()
    cfg = Config(ini, output_buffer=buf)
    cfg.set_main_option("sqlalchemy.url", URLS[dialect])
    if up:
        start = list(sc._all_down_revisions) or None

        def fn(heads, context):
            return [MigrationStep.upgrade_from_script(script.revision_map, sc)]
    else:
        start = sc.revision

        def fn(heads, context):
            return [MigrationStep.downgrade_from_script(script.revision_map, sc)]

    version_table = "alembic_version"
    used = None
    with EnvironmentContext(
        cfg, script, fn=fn, as_sql=True, starting_rev=start, destination_rev=sc.revision
    ) as env:
        script.run_env()
        try:
            used = env.get_context().dialect.name
        except Exception:
            pass
        try:
            version_table = env.get_context()._version.name
        except Exception:
            pass
    blocks = []
    for block in buf.getvalue().split("\n\n"):
        text = block.strip()
        if not text or text in ("BEGIN;", "COMMIT;", "BEGIN TRANSACTION;"):
            continue
        if text.startswith("-- Running ") or version_table in text:
            continue
        blocks.append(block.strip("\n"))
    return "\n\n".join(blocks), used


def main():
    cfg = Config(ini)
    script = ScriptDirectory.from_config(cfg)
    out = []
    for sc in script.walk_revisions():
        rev = {
            "id": sc.revision,
            "parents": sorted(sc._all_down_revisions),
            "branch_labels": sorted(
                sc._orig_branch_labels if hasattr(sc, "_orig_branch_labels") else sc.branch_labels or []
            ),
            "doc": sc.doc or "",
            "path": sc.path,
            "up": {},
            "down": {},
        }
        for d in dialects:
            for key, up in (("up", True), ("down", False)):
                try:
                    sql, used = render(sc, script, d, up)
                    rev[key][d] = {"sql": sql, "dialect": used}
                except Exception as e:  # noqa: BLE001 - reported per revision
                    rev[key][d] = {"error": "%s: %s" % (type(e).__name__, e)}
        out.append(rev)
    print("FLOTILLA-IMPORT-JSON " + json.dumps({"revisions": out}, sort_keys=True))


main()
