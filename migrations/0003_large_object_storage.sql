-- Blob bytes kept in PostgreSQL large objects (STRATA_STORAGE=postgres): one large object per storage key.
CREATE TABLE storage_objects (
  key        text PRIMARY KEY,
  loid       oid         NOT NULL UNIQUE,
  size       bigint      NOT NULL DEFAULT 0 CHECK (size >= 0),
  complete   boolean     NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
);

-- Concatenates large objects server-side into a new one, in 8 MiB slices so no value nears the 1 GB limit.
CREATE FUNCTION strata_lo_concat(parts oid[]) RETURNS oid LANGUAGE plpgsql AS $$
DECLARE
  target oid := lo_create(0);
  part oid;
  src_off bigint;
  dst_off bigint := 0;
  slice bytea;
BEGIN
  FOREACH part IN ARRAY parts LOOP
    src_off := 0;
    LOOP
      slice := lo_get(part, src_off, 8388608);
      EXIT WHEN length(slice) = 0;
      PERFORM lo_put(target, dst_off, slice);
      src_off := src_off + length(slice);
      dst_off := dst_off + length(slice);
    END LOOP;
  END LOOP;
  RETURN target;
END
$$;

-- Removing a row removes its large object, in the same transaction.
CREATE FUNCTION storage_objects_unlink() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM lo_unlink(OLD.loid);
  RETURN OLD;
END
$$;

CREATE TRIGGER storage_objects_unlink AFTER DELETE ON storage_objects
  FOR EACH ROW EXECUTE FUNCTION storage_objects_unlink();
