"""The schema in the database against the schema this code needs (Alembic revisions).

``aigw serve`` migrates at start-up; every other process (``aigw worker``, a second node)
only reads the revision: an empty database is one the gateway has not migrated yet (wait
for it), an older revision is refused (the code would read columns that are not there), and
so is a revision this code does not know (the database was migrated by a newer aigw).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from gateway.index.database import MIGRATIONS, Database, translated


class SchemaState(StrEnum):
    EMPTY = "empty"  # not migrated yet
    OLDER = "older"  # migrated by an older aigw: run aigw serve of this version first
    CURRENT = "current"
    UNKNOWN = "unknown"  # a revision this code does not know: a newer aigw migrated it


@dataclass(frozen=True)
class Schema:
    revision: str | None
    head: str
    state: SchemaState

    def explain(self) -> str:
        if self.state == SchemaState.EMPTY:
            return "the database has no schema yet (aigw serve creates it at start-up)"
        if self.state == SchemaState.OLDER:
            return (
                f"the database schema is at revision {self.revision}, older than this "
                f"aigw's {self.head}: start aigw serve of this version (it migrates) first"
            )
        if self.state == SchemaState.UNKNOWN:
            return (
                f"the database schema is at revision {self.revision}, which this aigw "
                f"(head {self.head}) does not know: it was migrated by a newer aigw"
            )
        return f"the database schema is current ({self.head})"


def _scripts() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


def code_head() -> str:
    head = _scripts().get_current_head()
    assert head is not None, "the migrations have one head"
    return head


def read_schema(db: Database) -> Schema:
    """The database's revision against the code's; DatabaseError when unreachable."""
    scripts = _scripts()
    head = code_head()
    with translated(), db.engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
    if revision is None:
        return Schema(None, head, SchemaState.EMPTY)
    if revision == head:
        return Schema(revision, head, SchemaState.CURRENT)
    known = {script.revision for script in scripts.walk_revisions()}
    state = SchemaState.OLDER if revision in known else SchemaState.UNKNOWN
    return Schema(revision, head, state)
