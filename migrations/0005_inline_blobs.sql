-- Small blobs (image configs, signatures, attestations) live in their row: storing one is then a single
-- statement and one WAL flush, with no file to create and no directory to fsync. Exactly one of storage_key
-- and content holds the bytes. The content is mostly compressed already, so PostgreSQL should not try again.
ALTER TABLE blobs ALTER COLUMN storage_key DROP NOT NULL;
ALTER TABLE blobs ADD COLUMN content bytea;
ALTER TABLE blobs ALTER COLUMN content SET STORAGE EXTERNAL;
ALTER TABLE blobs ADD CONSTRAINT blobs_one_home CHECK ((storage_key IS NULL) <> (content IS NULL));
ALTER TABLE blobs ADD CONSTRAINT blobs_content_size CHECK (content IS NULL OR octet_length(content) = size);
