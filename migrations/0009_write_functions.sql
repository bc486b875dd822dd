-- Every change of the registry's state is one of the functions below: each writes its projection rows and its
-- events in the caller's transaction, and each is called as one statement (one round trip, and its own
-- transaction unless the caller opened one). They replace the statements the services used to build at run time,
-- two per operation (a one-statement fast path beside a transaction of several), which took their locks in
-- different orders.
--
-- Lock order, the same in every function, so concurrent writers wait for each other and never deadlock:
--   1. upload rows (the session a commit completes);
--   2. blob rows, then repository_blobs links, each in digest order;
--   3. child manifests an index lists, in digest order, then the manifest itself;
--   4. tag rows;
--   5. tag_lifetimes rows, reached only under their tag's lock.
-- Events are appended as each change is made; an insert into events locks no row another writer waits for.
-- (0010 replaces strata_event, strata_close_lifetime and strata_start_uploads; 0011 strata_end_upload.)
-- A function that needs a row it finds locked waits; one that finds it deleted meanwhile tries again (a bounded
-- number of times) or reports the row missing.
--
-- Events are written only here and by the few event-only writes of EventStore (libs/events): actor and request
-- metadata come in one jsonb object, {actor, request_id, client_addr, user_agent}.

CREATE FUNCTION strata_event(p_meta jsonb, p_type text, p_repository text, p_subject text, p_payload jsonb)
RETURNS bigint LANGUAGE sql AS $$
  INSERT INTO events (actor, type, repository, subject, payload, request_id, client_addr, user_agent)
  VALUES (p_meta->>'actor', p_type, p_repository, p_subject, p_payload,
          p_meta->>'request_id', p_meta->>'client_addr', p_meta->>'user_agent')
  RETURNING seq
$$;

-- Upload sessions, with their upload.started events, in the order given.
CREATE FUNCTION strata_start_uploads(p_ids uuid[], p_repository_ids bigint[], p_repositories text[], p_metas jsonb[])
RETURNS void LANGUAGE sql AS $$
  INSERT INTO uploads (id, repository_id) SELECT * FROM unnest(p_ids, p_repository_ids);
  INSERT INTO events (actor, type, repository, subject, payload, request_id, client_addr, user_agent)
  SELECT m->>'actor', 'upload.started', r, i::text, jsonb_build_object('upload_id', i),
         m->>'request_id', m->>'client_addr', m->>'user_agent'
  FROM unnest(p_ids, p_repositories, p_metas) WITH ORDINALITY AS u(i, r, m, ord)
  ORDER BY ord;
$$;

-- Accepts a stored chunk if the upload is still at p_offset: the row grows, the chunk is recorded, and so is its
-- upload.chunk event. False when the upload moved on (a racing PATCH won) or is gone.
CREATE FUNCTION strata_record_chunk(
  p_id uuid, p_repository text, p_offset bigint, p_size bigint, p_key text, p_prefix_digest text,
  p_unsynced_boot text, p_meta jsonb
) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  UPDATE uploads SET size = p_offset + p_size, updated_at = now(), prefix_digest = p_prefix_digest
  WHERE id = p_id AND size = p_offset;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO upload_chunks (upload_id, "offset", size, storage_key, unsynced_boot)
  VALUES (p_id, p_offset, p_size, p_key, p_unsynced_boot);
  PERFORM strata_event(p_meta, 'upload.chunk', p_repository, p_id::text,
    jsonb_build_object('upload_id', p_id, 'offset', p_offset, 'size', p_size));
  RETURN true;
END
$$;

-- Removes an upload session (cancelled or expired) with its event; the storage keys of its chunks, for the caller
-- to remove, or null when there was no such session.
CREATE FUNCTION strata_end_upload(p_id uuid, p_repository_id bigint, p_type text, p_meta jsonb)
RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
  removed uploads%ROWTYPE;
  repository text;
  keys text[];
BEGIN
  SELECT coalesce(array_agg(storage_key ORDER BY "offset"), '{}') INTO keys
  FROM upload_chunks WHERE upload_id = p_id;
  DELETE FROM uploads WHERE id = p_id AND (p_repository_id IS NULL OR repository_id = p_repository_id)
  RETURNING * INTO removed;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
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

-- Removes up to p_limit uploads idle for longer than p_ttl_seconds, oldest first, each with its upload.expired
-- event; rows locked by a request using them are skipped. How many, and the storage keys of their chunks.
CREATE FUNCTION strata_expire_uploads(p_ttl_seconds double precision, p_limit int, p_meta jsonb)
RETURNS TABLE (removed int, keys text[]) LANGUAGE plpgsql AS $$
DECLARE
  idle uuid;
BEGIN
  removed := 0;
  keys := '{}';
  FOR idle IN
    SELECT id FROM uploads WHERE updated_at < now() - make_interval(secs => p_ttl_seconds)
    ORDER BY updated_at LIMIT p_limit
    FOR UPDATE SKIP LOCKED
  LOOP
    keys := keys || strata_end_upload(idle, NULL, 'upload.expired', p_meta);
    removed := removed + 1;
  END LOOP;
  RETURN NEXT;
END
$$;

-- Makes blobs visible, each in its repository: the publication of a blob. Each element completes the upload
-- session p_ids[k] if p_sessions[k] (which must still hold exactly p_upload_sizes[k] bytes, else the element is
-- not accepted), or stands for a POST that carried the blob itself (its session is p_ids[k], created here). The
-- blob row is inserted under its unique digest unless an identical upload stored it first (then the bytes at
-- p_keys[k] are not needed, and `created` is false), or not at all when the caller found it stored already (key
-- and content both null). A blob kept in its row is bytes [p_content_at[k], + p_sizes[k]) of p_content, all such
-- blobs of the call concatenated: one binary parameter rather than an array sent as text; the link is inserted unless present. Events, in order per element: upload.started
-- (for a POST), upload.chunk (p_whole: the bytes came in the request that completes the upload), upload.committed
-- with `existed`. Elements with the same digest are decided in order; rows are inserted in digest order, so two
-- such calls sharing digests wait for each other rather than deadlock.
-- Returns per element: accepted, created, the stored blob's size (to check), and the session's size now when it
-- was not accepted (null: gone).
CREATE FUNCTION strata_publish_blobs(
  p_ids uuid[], p_sessions boolean[], p_upload_sizes bigint[], p_repository_ids bigint[], p_repositories text[],
  p_digests text[], p_sizes bigint[], p_keys text[], p_content bytea, p_content_at int[], p_whole boolean[],
  p_metas jsonb[]
) RETURNS TABLE (k int, accepted boolean, created boolean, stored_size bigint, upload_size bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  accepted_ks bigint[];
  created_ks bigint[];
BEGIN
  WITH input AS (
    SELECT i.*, CASE WHEN i.content_at IS NOT NULL THEN substring(p_content FROM i.content_at + 1 FOR i.size::int) END
             AS content
    FROM unnest(p_ids, p_sessions, p_upload_sizes, p_repository_ids, p_repositories, p_digests, p_sizes, p_keys,
                p_content_at, p_whole, p_metas)
      WITH ORDINALITY AS i(id, completes, upload_size, repository_id, repository, digest, size, storage_key,
                           content_at, whole, meta, k)
  ), session AS (
    DELETE FROM uploads u USING input i
    WHERE i.completes AND u.id = i.id AND u.repository_id = i.repository_id AND u.size = i.upload_size
    RETURNING i.k
  ), ok AS (
    SELECT k FROM session UNION ALL SELECT k FROM input WHERE NOT completes
  ), first AS (
    SELECT DISTINCT ON (i.digest) i.k, i.digest, i.size, i.storage_key, i.content
    FROM input i JOIN ok USING (k)
    WHERE i.storage_key IS NOT NULL OR i.content IS NOT NULL
    ORDER BY i.digest, i.k
  ), blob AS (
    INSERT INTO blobs (digest, size, storage_key, content)
    SELECT digest, size, storage_key, content FROM first ORDER BY digest
    ON CONFLICT (digest) DO NOTHING
    RETURNING digest
  ), made AS (
    SELECT first.k FROM first JOIN blob USING (digest)
  ), link AS (
    INSERT INTO repository_blobs (repository_id, digest)
    SELECT DISTINCT i.repository_id, i.digest FROM input i JOIN ok USING (k)
    ORDER BY 1, 2
    ON CONFLICT (repository_id, digest) DO NOTHING
  ), event AS (
    INSERT INTO events (actor, type, repository, subject, payload, request_id, client_addr, user_agent)
    SELECT i.meta->>'actor', e.type, i.repository, e.subject, e.payload,
           i.meta->>'request_id', i.meta->>'client_addr', i.meta->>'user_agent'
    FROM input i JOIN ok USING (k)
    CROSS JOIN LATERAL (VALUES
      (1, 'upload.started', i.id::text, jsonb_build_object('upload_id', i.id), NOT i.completes),
      (2, 'upload.chunk', i.id::text, jsonb_build_object('upload_id', i.id, 'offset', 0, 'size', i.size),
        i.whole AND i.size > 0),
      (3, 'upload.committed', i.digest, jsonb_build_object('upload_id', i.id, 'digest', i.digest, 'size', i.size,
        'existed', NOT EXISTS (SELECT 1 FROM made m WHERE m.k = i.k)), true)
    ) AS e(n, type, subject, payload, wanted)
    WHERE e.wanted
    ORDER BY i.k, e.n
  )
  SELECT (SELECT coalesce(array_agg(ok.k), '{}') FROM ok), (SELECT coalesce(array_agg(made.k), '{}') FROM made)
  INTO accepted_ks, created_ks;
  -- A fresh snapshot: it sees a blob an identical upload committed while the statement above ran (which its
  -- ON CONFLICT saw, its SELECTs not), and the size a session that was not accepted has now.
  RETURN QUERY
  SELECT i.k::int, i.k = ANY(accepted_ks), i.k = ANY(created_ks),
         (SELECT b.size FROM blobs b WHERE b.digest = i.digest),
         (SELECT u.size FROM uploads u WHERE i.completes AND NOT i.k = ANY(accepted_ks)
            AND u.id = i.id AND u.repository_id = i.repository_id)
  FROM unnest(p_ids, p_sessions, p_repository_ids, p_digests)
    WITH ORDINALITY AS i(id, completes, repository_id, digest, k)
  ORDER BY i.k;
END
$$;

-- Links a blob of p_from into the repository without moving bytes. False when p_from does not have it (the
-- caller then opens an ordinary upload). The source link is share-locked, so an unlink cannot slip between.
CREATE FUNCTION strata_mount_blob(
  p_repository_id bigint, p_repository text, p_digest text, p_from text, p_meta jsonb
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  blob_size bigint;
  linked boolean;
BEGIN
  SELECT b.size INTO blob_size
  FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id JOIN blobs b ON b.digest = rb.digest
  WHERE r.name = p_from AND rb.digest = p_digest
  FOR SHARE OF rb;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO repository_blobs (repository_id, digest) VALUES (p_repository_id, p_digest)
  ON CONFLICT (repository_id, digest) DO NOTHING;
  linked := FOUND;
  IF linked OR p_from <> p_repository THEN
    PERFORM strata_event(p_meta, 'blob.mounted', p_repository, p_digest,
      jsonb_build_object('digest', p_digest, 'from', p_from, 'size', blob_size));
  END IF;
  RETURN true;
END
$$;

-- Removes a blob's link from the repository, unless a manifest of it refers to the blob: then nothing changes
-- but the refusal's event, and the referring manifest is returned. The link is locked first: a manifest push holds
-- it FOR SHARE from its check to its commit, so once the lock is had, a push that referred to the blob has
-- committed its references, and the next statement (a fresh snapshot) sees them.
-- Returns 'unlinked', 'unknown', or the digest of a manifest that refers to the blob.
CREATE FUNCTION strata_unlink_blob(p_repository_id bigint, p_repository text, p_digest text, p_meta jsonb)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  user_digest text;
BEGIN
  PERFORM 1 FROM repository_blobs WHERE repository_id = p_repository_id AND digest = p_digest FOR UPDATE;
  IF NOT FOUND THEN
    RETURN 'unknown';
  END IF;
  SELECT parent_digest INTO user_digest FROM manifest_references
  WHERE repository_id = p_repository_id AND child_digest = p_digest AND kind <> 'manifest'
  LIMIT 1;
  IF FOUND THEN
    PERFORM strata_event(p_meta, 'blob.unlink_refused', p_repository, p_digest,
      jsonb_build_object('digest', p_digest, 'manifest', user_digest));
    RETURN user_digest;
  END IF;
  DELETE FROM repository_blobs WHERE repository_id = p_repository_id AND digest = p_digest;
  PERFORM strata_event(p_meta, 'blob.unlinked', p_repository, p_digest, jsonb_build_object('digest', p_digest));
  RETURN 'unlinked';
END
$$;

-- Ends the tag's open lifetime at p_seq and returns when it ended (null: none was open). The clock is read under
-- the tag's lock, after the previous holder committed, so periods follow each other in lock order; transaction
-- start times (now()) would not.
CREATE FUNCTION strata_close_lifetime(p_repository_id bigint, p_tag text, p_seq bigint)
RETURNS timestamptz LANGUAGE sql AS $$
  UPDATE tag_lifetimes SET ended_at = greatest(clock_timestamp(), started_at), ended_seq = p_seq
  WHERE repository_id = p_repository_id AND tag = p_tag AND ended_at IS NULL
  RETURNING ended_at
$$;

-- Points the tag at p_digest (whose manifest row the caller holds), under the tag row's lock: a tag.moved event
-- and a new lifetime starting exactly where the previous one ended. A no-op when it points there already.
-- Returns false when the tag kept being deleted under it (the caller tries again or gives up).
CREATE FUNCTION strata_move_tag(p_repository_id bigint, p_repository text, p_tag text, p_digest text, p_meta jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  previous text;
  seq bigint;
  ended timestamptz;
BEGIN
  FOR attempt IN 1..5 LOOP
    INSERT INTO tags (repository_id, name, digest) VALUES (p_repository_id, p_tag, p_digest)
    ON CONFLICT (repository_id, name) DO NOTHING;
    IF FOUND THEN
      previous := NULL;
    ELSE
      SELECT digest INTO previous FROM tags WHERE repository_id = p_repository_id AND name = p_tag FOR UPDATE;
      IF NOT FOUND THEN
        CONTINUE; -- deleted between the two statements
      END IF;
      IF previous = p_digest THEN
        RETURN true;
      END IF;
      UPDATE tags SET digest = p_digest, updated_at = now() WHERE repository_id = p_repository_id AND name = p_tag;
    END IF;
    seq := strata_event(p_meta, 'tag.moved', p_repository, p_tag,
      jsonb_build_object('tag', p_tag, 'digest', p_digest, 'previous', previous));
    ended := strata_close_lifetime(p_repository_id, p_tag, seq);
    INSERT INTO tag_lifetimes (repository_id, tag, digest, started_at, started_seq)
    VALUES (p_repository_id, p_tag, p_digest, coalesce(ended, clock_timestamp()), seq);
    RETURN true;
  END LOOP;
  RETURN false;
END
$$;

-- A manifest push: every reference present in the repository with the size its descriptor claims (blob links and
-- child manifests share-locked, so an unlink or delete cannot slip in before the commit), the manifest stored
-- unless it is (then share-locked), its references and manifest.pushed event with it, and the tag moved.
-- Returns 'ok'; 'missing' or 'size' with the first reference (in descriptor order) that is absent or has another
-- size; or 'contended' when the manifest or the tag kept being deleted under it.
CREATE FUNCTION strata_push_manifest(
  p_repository_id bigint, p_repository text, p_digest text, p_media_type text, p_artifact_type text,
  p_subject text, p_annotations jsonb, p_content bytea,
  p_ref_digests text[], p_ref_kinds text[], p_ref_sizes bigint[],
  p_tag text, p_pushed jsonb, p_meta jsonb,
  OUT status text, OUT ref_digest text, OUT ref_kind text, OUT declared bigint, OUT stored bigint
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
  stored_here boolean := false;
BEGIN
  IF cardinality(p_ref_digests) > 0 THEN
    PERFORM 1 FROM repository_blobs
    WHERE repository_id = p_repository_id
      AND digest IN (SELECT d FROM unnest(p_ref_digests, p_ref_kinds) AS r(d, kind) WHERE kind <> 'manifest')
    ORDER BY digest
    FOR SHARE;
    PERFORM 1 FROM manifests
    WHERE repository_id = p_repository_id
      AND digest IN (SELECT d FROM unnest(p_ref_digests, p_ref_kinds) AS r(d, kind) WHERE kind = 'manifest')
    ORDER BY digest
    FOR SHARE;
    SELECT r.digest, r.kind, r.size, found.size INTO ref_digest, ref_kind, declared, stored
    FROM unnest(p_ref_digests, p_ref_kinds, p_ref_sizes) WITH ORDINALITY AS r(digest, kind, size, ord)
    LEFT JOIN LATERAL (
      SELECT b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest
      WHERE r.kind <> 'manifest' AND rb.repository_id = p_repository_id AND rb.digest = r.digest
      UNION ALL
      SELECT m.size FROM manifests m
      WHERE r.kind = 'manifest' AND m.repository_id = p_repository_id AND m.digest = r.digest
    ) found ON true
    WHERE found.size IS DISTINCT FROM r.size
    ORDER BY r.ord
    LIMIT 1;
    IF FOUND THEN
      status := CASE WHEN stored IS NULL THEN 'missing' ELSE 'size' END;
      RETURN;
    END IF;
  END IF;
  FOR attempt IN 1..5 LOOP
    INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject_digest, annotations, size, content)
    VALUES (p_repository_id, p_digest, p_media_type, p_artifact_type, p_subject, p_annotations,
            octet_length(p_content), p_content)
    ON CONFLICT (repository_id, digest) DO NOTHING;
    IF FOUND THEN
      stored_here := true;
      EXIT;
    END IF;
    -- Stored already: held for the tag. Absent here means a concurrent delete won between the two statements.
    PERFORM 1 FROM manifests WHERE repository_id = p_repository_id AND digest = p_digest FOR SHARE;
    EXIT WHEN FOUND;
    IF attempt = 5 THEN
      status := 'contended';
      RETURN;
    END IF;
  END LOOP;
  IF stored_here THEN
    INSERT INTO manifest_references (repository_id, parent_digest, child_digest, kind, position, size)
    SELECT p_repository_id, p_digest, r.digest, r.kind, r.ord - 1, r.size
    FROM unnest(p_ref_digests, p_ref_kinds, p_ref_sizes) WITH ORDINALITY AS r(digest, kind, size, ord);
    PERFORM strata_event(p_meta, 'manifest.pushed', p_repository, p_digest, p_pushed);
  END IF;
  IF p_tag IS NOT NULL AND NOT strata_move_tag(p_repository_id, p_repository, p_tag, p_digest, p_meta) THEN
    status := 'contended';
    RETURN;
  END IF;
  status := 'ok';
END
$$;

-- Removes a tag: its tag.deleted event and the end of its lifetime. False when there was no such tag.
CREATE FUNCTION strata_delete_tag(p_repository_id bigint, p_repository text, p_tag text, p_meta jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  target text;
BEGIN
  DELETE FROM tags WHERE repository_id = p_repository_id AND name = p_tag RETURNING digest INTO target;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM strata_close_lifetime(p_repository_id, p_tag,
    strata_event(p_meta, 'tag.deleted', p_repository, p_tag, jsonb_build_object('tag', p_tag, 'digest', target)));
  RETURN true;
END
$$;

-- Removes a manifest, its references and every tag on it (tag.deleted for each, in name order, then
-- manifest.deleted). Indexes that list it keep their rows, as in the reference registry. The manifest is locked
-- first, so a push that would tag it either finished before (its tag is removed here) or waits and then finds it
-- gone. False when there was no such manifest.
CREATE FUNCTION strata_delete_manifest(p_repository_id bigint, p_repository text, p_digest text, p_meta jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  names text[];
  t text;
BEGIN
  PERFORM 1 FROM manifests WHERE repository_id = p_repository_id AND digest = p_digest FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  WITH removed AS (
    DELETE FROM tags WHERE repository_id = p_repository_id AND digest = p_digest RETURNING name
  )
  SELECT coalesce(array_agg(name ORDER BY name COLLATE "C"), '{}') INTO names FROM removed;
  FOREACH t IN ARRAY names LOOP
    PERFORM strata_close_lifetime(p_repository_id, t,
      strata_event(p_meta, 'tag.deleted', p_repository, t, jsonb_build_object('tag', t, 'digest', p_digest)));
  END LOOP;
  DELETE FROM manifests WHERE repository_id = p_repository_id AND digest = p_digest;
  PERFORM strata_event(p_meta, 'manifest.deleted', p_repository, p_digest,
    jsonb_build_object('digest', p_digest, 'tags', to_jsonb(names)));
  RETURN true;
END
$$;
