-- strata_end_upload (0009) read the chunks' storage keys before it locked the upload: a PATCH recording its chunk
-- meanwhile committed after that read, the DELETE then waited for it and removed the new chunk row by cascade,
-- and its bytes were never removed (a hostile review found 61 such files in 300 cancel-versus-PATCH rounds).
-- Now the session row is locked first; the keys are read after, by a statement that sees every chunk committed
-- before the lock was granted (READ COMMITTED takes a new snapshot for each statement).
CREATE OR REPLACE FUNCTION strata_end_upload(p_id uuid, p_repository_id bigint, p_type text, p_meta jsonb)
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
  removed uploads%ROWTYPE;
  repository text;
  keys text[];
BEGIN
  PERFORM 1 FROM uploads WHERE id = p_id AND (p_repository_id IS NULL OR repository_id = p_repository_id)
  FOR UPDATE;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  SELECT coalesce(array_agg(storage_key ORDER BY "offset"), '{}') INTO keys
  FROM upload_chunks WHERE upload_id = p_id;
  DELETE FROM uploads WHERE id = p_id RETURNING * INTO removed;
  SELECT name INTO repository FROM repositories WHERE id = removed.repository_id;
  PERFORM strata_event(p_meta, p_type, repository, p_id::text,
    CASE p_type
      WHEN 'upload.expired' THEN jsonb_build_object('upload_id', p_id, 'size', removed.size,
        'idle_since', to_char(removed.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
      ELSE jsonb_build_object('upload_id', p_id, 'size', removed.size)
    END);
  RETURN keys;
END
$$;
