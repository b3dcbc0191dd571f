-- The room directory (docs/admin.md#the-room-directory): a room writes its row at its first
-- message, after every archive run and when an operator inspects it. `updated_ms` says how fresh
-- the row's figures are; the newest write wins.
ALTER TABLE rooms ADD COLUMN socket_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN rows_retained INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rooms ADD COLUMN updated_ms INTEGER NOT NULL DEFAULT 0;

-- The console sorts the list by any of these; each keyset page is then one index range.
CREATE INDEX IF NOT EXISTS rooms_by_created ON rooms (created_ms, name);
CREATE INDEX IF NOT EXISTS rooms_by_head ON rooms (head_seq, name);
CREATE INDEX IF NOT EXISTS rooms_by_members ON rooms (member_count, name);
CREATE INDEX IF NOT EXISTS rooms_by_sockets ON rooms (socket_count, name);
