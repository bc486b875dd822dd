-- A blob composed from an upload's chunks (STRATA_STORAGE=postgres) names the chunks' large objects in order
-- (parts, with their sizes) instead of copying their bytes into a new one: the copy wrote every chunked blob, and
-- its WAL, a second time inside the commit. A row holds either its own large object (loid) or parts.
ALTER TABLE storage_objects
  ALTER COLUMN loid DROP NOT NULL,
  ADD COLUMN parts oid[],
  ADD COLUMN part_sizes bigint[],
  ADD CONSTRAINT storage_objects_bytes CHECK (
    CASE
      WHEN loid IS NOT NULL THEN parts IS NULL AND part_sizes IS NULL
      ELSE complete AND parts IS NOT NULL AND part_sizes IS NOT NULL
        AND cardinality(parts) = cardinality(part_sizes)
        AND array_position(parts, NULL) IS NULL AND array_position(part_sizes, NULL) IS NULL
    END
  );

-- For the check below: is a large object still named by some row's parts?
CREATE INDEX storage_objects_parts ON storage_objects USING gin (parts);

-- A large object goes with the last row that names it, as its loid or among its parts. Removers of rows naming
-- the same large object take its lock in turn, so the last one always sees that it is the last (each statement
-- here reads with a fresh snapshot); compose locks its parts' rows (FOR KEY SHARE), so a part cannot go while a
-- composed object starts naming its large objects.
CREATE OR REPLACE FUNCTION storage_objects_unlink() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  part oid;
BEGIN
  FOR part IN
    SELECT DISTINCT p FROM unnest(array_prepend(OLD.loid, OLD.parts)) AS p WHERE p IS NOT NULL
  LOOP
    PERFORM pg_advisory_xact_lock(1819242340, (part::bigint - 2147483648)::int);
    IF NOT EXISTS (SELECT 1 FROM storage_objects WHERE loid = part)
      AND NOT EXISTS (SELECT 1 FROM storage_objects WHERE parts @> ARRAY[part])
      AND EXISTS (SELECT 1 FROM pg_largeobject_metadata WHERE oid = part)
    THEN
      PERFORM lo_unlink(part);
    END IF;
  END LOOP;
  RETURN OLD;
END
$$;

-- Writes bytes into a large object. Every 2 KiB page of a large object is a pg_largeobject row that the server
-- tries to compress; layers are compressed already, and lz4 gives up on them at a fraction of pglz's CPU. The
-- setting is local to the caller's transaction (the driver calls this in a statement of its own).
DO $$
BEGIN
  IF EXISTS (
    SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)
  ) THEN
    CREATE FUNCTION strata_lo_put(target oid, "offset" bigint, bytes bytea) RETURNS void LANGUAGE plpgsql AS $f$
    BEGIN
      PERFORM set_config('default_toast_compression', 'lz4', true);
      PERFORM lo_put(target, "offset", bytes);
    END
    $f$;
  ELSE
    CREATE FUNCTION strata_lo_put(target oid, "offset" bigint, bytes bytea) RETURNS void LANGUAGE sql AS $f$
      SELECT lo_put(target, "offset", bytes)
    $f$;
  END IF;
END
$$;
