-- Small blobs (image configs, signatures, attestations) live in their row: storing one is then a single
-- statement and one WAL flush, with no file to create and no directory to fsync. Exactly one of storage_key
-- and content holds the bytes. The content is mostly compressed already, so PostgreSQL should not try again.
ALTER TABLE blobs ALTER COLUMN storage_key DROP NOT NULL;
ALTER TABLE blobs ADD COLUMN content bytea;
ALTER TABLE blobs ALTER COLUMN content SET STORAGE EXTERNAL;
-- Every existing row has a storage_key and no content, so the checks hold for them: NOT VALID spares a scan
-- of the whole table under this migration's exclusive lock, and new rows are checked all the same.
ALTER TABLE blobs ADD CONSTRAINT blobs_one_home CHECK ((storage_key IS NULL) <> (content IS NULL)) NOT VALID;
ALTER TABLE blobs ADD CONSTRAINT blobs_content_size CHECK (content IS NULL OR octet_length(content) = size) NOT VALID;
-- Keep a row of up to a page (a small config, a signature) whole in the heap rather than moving its content
-- out to the TOAST table: one insert and one read instead of three of each.
ALTER TABLE blobs SET (toast_tuple_target = 8160);
