-- Archive index: one row per immutable R2 segment. The primary key makes a retried insert of
-- the same range a no-op, so the index never holds two segments for one range.
CREATE TABLE IF NOT EXISTS segments (
    room TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    count INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    key TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    PRIMARY KEY (room, first_seq)
);

-- Reads look up the segments overlapping a seq range of one room.
CREATE INDEX IF NOT EXISTS segments_by_room_last ON segments (room, last_seq);

-- Every admin action, who did it and to what.
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    room TEXT,
    target TEXT,
    detail TEXT
);

CREATE INDEX IF NOT EXISTS audit_by_time ON audit (at_ms DESC);
