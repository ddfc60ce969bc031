"""The PostgreSQL schema and its migrations.

`threadloom_schema` lists the migrations applied, one row each. Opening a store applies the
missing ones in one transaction, under an advisory lock so that servers starting together
migrate once; a database whose schema is newer than this code knows is refused, never
downgraded or written to. A migration, once released, never changes: a new one is appended.
"""

from __future__ import annotations

from typing import Any

from threadloom.errors import StoreFormatError

# Serializes migrations of every threadloom schema in one database: the first bytes of
# "threadloom" as a 64-bit integer.
MIGRATION_LOCK = 0x7468726561646C6F

# (version, description, SQL). Table names carry a `threadloom_` prefix so the store can share
# a database (or schema, via search_path) with other applications.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "turns, threads and responses",
        """
        CREATE TABLE threadloom_turns (
            id uuid PRIMARY KEY,             -- the 16-byte turn key (msg_ + base32 of it)
            parent uuid,
            owner text NOT NULL,
            role smallint NOT NULL,          -- 0 system, 1 user, 2 assistant, 3 tool
            depth integer NOT NULL,          -- 1 for a root: the length of its history
            created_ms bigint NOT NULL,
            refs integer NOT NULL,           -- children + threads and responses pointing here
            content bytea NOT NULL,          -- UTF-8; bytea because text cannot hold NUL
            reasoning bytea
        );
        CREATE TABLE threadloom_threads (
            owner text COLLATE "C" NOT NULL,
            id text COLLATE "C" NOT NULL,
            head uuid,
            metadata text NOT NULL,          -- compact JSON object text, as given back
            state text NOT NULL CHECK (state IN ('open', 'locked', 'archived')),
            visible boolean NOT NULL,
            created_ms bigint NOT NULL,
            last_activity_ms bigint NOT NULL,
            message_count integer NOT NULL,
            PRIMARY KEY (owner, id)
        );
        -- One owner's visible (or hidden) threads, most recently active first.
        CREATE INDEX threadloom_threads_activity
            ON threadloom_threads (owner, visible, last_activity_ms DESC, id);
        CREATE TABLE threadloom_responses (
            id text COLLATE "C" PRIMARY KEY,
            owner text NOT NULL,
            status text NOT NULL CHECK (status IN ('completed', 'incomplete', 'failed')),
            model text NOT NULL,
            last_turn uuid NOT NULL,
            parent_turn uuid,
            input_count integer NOT NULL,
            output_count integer NOT NULL,
            thread_id text,
            previous_response_id text,
            prompt_tokens bigint NOT NULL,
            completion_tokens bigint NOT NULL,
            cached_tokens bigint NOT NULL,
            error text,
            created_ms bigint NOT NULL,
            metadata text NOT NULL
        );
        CREATE INDEX threadloom_responses_created ON threadloom_responses (created_ms);

        -- Drops one reference from a turn and deletes, walking rootwards, every turn nothing
        -- reaches any more; returns how many. Server-side, so deleting a long conversation is
        -- one round trip. Each step locks the turn's row, so a concurrent append that adds a
        -- child (refs + 1 on the same row) either lands first and keeps the turn alive or
        -- finds it gone.
        CREATE FUNCTION threadloom_release(start uuid) RETURNS integer
        LANGUAGE plpgsql AS $$
        DECLARE
            current uuid := start;
            remaining integer;
            up uuid;
            deleted integer := 0;
        BEGIN
            WHILE current IS NOT NULL LOOP
                UPDATE threadloom_turns SET refs = refs - 1 WHERE id = current
                    RETURNING refs, parent INTO remaining, up;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'turn % is referenced but missing', current
                        USING ERRCODE = 'data_corrupted';
                END IF;
                EXIT WHEN remaining > 0;
                DELETE FROM threadloom_turns WHERE id = current;
                deleted := deleted + 1;
                current := up;
            END LOOP;
            RETURN deleted;
        END
        $$;
        """,
    ),
    (
        2,
        "thread tombstones: create-if-missing does not revive a deleted or expired thread id",
        """
        CREATE TABLE threadloom_thread_tombstones (
            owner text NOT NULL,
            id text NOT NULL,
            deleted_ms bigint NOT NULL,
            PRIMARY KEY (owner, id)
        );
        """,
    ),
    (
        3,
        "pending responses: an announced response whose generation runs, stored on restart",
        """
        CREATE TABLE threadloom_pending (
            owner text NOT NULL,
            id text NOT NULL,
            payload bytea NOT NULL,
            PRIMARY KEY (owner, id)
        );
        """,
    ),
    (
        4,
        "tool data on turns: a tool call or a tool result, as JSON object text",
        """
        ALTER TABLE threadloom_turns ADD COLUMN tool bytea;
        """,
    ),
    (
        5,
        "branches recorded for a thread: replies stored outside it that its tree shows",
        """
        CREATE TABLE threadloom_thread_branches (
            owner text COLLATE "C" NOT NULL,
            thread_id text COLLATE "C" NOT NULL,
            response_id text COLLATE "C" NOT NULL,
            after_turn uuid,                 -- the turn it continues; NULL: a new first message
            PRIMARY KEY (owner, thread_id, response_id),
            FOREIGN KEY (owner, thread_id) REFERENCES threadloom_threads (owner, id)
                ON DELETE CASCADE
        );
        """,
    ),
    (
        6,
        "secrets every server on the database shares (the compaction key); kept summaries",
        """
        CREATE TABLE threadloom_secrets (
            name text COLLATE "C" PRIMARY KEY,
            value bytea NOT NULL
        );
        CREATE TABLE threadloom_summaries (
            owner text COLLATE "C" NOT NULL,
            name text COLLATE "C" NOT NULL,
            text bytea NOT NULL,             -- UTF-8; bytea because text cannot hold NUL
            PRIMARY KEY (owner, name)
        );
        """,
    ),
    (
        7,
        "the children index: each turn's continuations, per owner (a thread's tree)",
        """
        -- Turns keep their parent; this finds a turn's children without a scan.
        CREATE INDEX threadloom_turns_children
            ON threadloom_turns (owner, parent) WHERE parent IS NOT NULL;
        """,
    ),
]

LATEST = MIGRATIONS[-1][0]


def migrate(conn: Any) -> int:
    """Brings the schema up to date in one transaction; returns the version. `conn` is an
    autocommit psycopg connection."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS threadloom_schema (
                version integer PRIMARY KEY,
                description text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM threadloom_schema").fetchone()
        current = int(row[0])
        if current > LATEST:
            raise StoreFormatError(
                f"the database has threadloom schema version {current}; this threadloom knows "
                f"versions up to {LATEST}: upgrade threadloom (nothing was changed)"
            )
        for version, description, sql in MIGRATIONS:
            if version > current:
                conn.execute(sql)
                conn.execute(
                    "INSERT INTO threadloom_schema (version, description) VALUES (%s, %s)",
                    (version, description),
                )
    return LATEST
