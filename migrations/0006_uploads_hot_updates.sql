-- Every accepted chunk moves its upload's updated_at. With that column indexed, no such update could be
-- heap-only (HOT): each one wrote new entries into both of the table's indexes, and each upload started wrote
-- one more. Only uploads in flight have rows, so the expiry job's scan of them needs no index.
DROP INDEX uploads_updated_at_idx;
