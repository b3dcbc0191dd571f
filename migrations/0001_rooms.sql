-- The index of rooms, kept in D1 (rooms are listed and audited without waking their objects).
-- Applied by `wrangler d1 migrations apply` on Cloudflare and by the local runtime at start-up,
-- in file-name order, each recorded in d1_migrations.
CREATE TABLE IF NOT EXISTS rooms (
    name TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    last_activity_ms INTEGER NOT NULL,
    head_seq INTEGER NOT NULL DEFAULT 0,
    archived_seq INTEGER NOT NULL DEFAULT 0,
    member_count INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX IF NOT EXISTS rooms_by_last_activity ON rooms (last_activity_ms DESC, name);
