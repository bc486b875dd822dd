-- The helpers of the write functions (0009) in PL/pgSQL rather than SQL: PostgreSQL 15 parses and plans a
-- non-inlined SQL function's statements again at every call, while PL/pgSQL keeps each statement's plan for the
-- session. strata_event runs several times in every push; as SQL it cost a manifest PUT about a third of its rate.

CREATE OR REPLACE FUNCTION strata_event(p_meta jsonb, p_type text, p_repository text, p_subject text, p_payload jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  appended bigint;
BEGIN
  INSERT INTO events (actor, type, repository, subject, payload, request_id, client_addr, user_agent)
  VALUES (p_meta->>'actor', p_type, p_repository, p_subject, p_payload,
          p_meta->>'request_id', p_meta->>'client_addr', p_meta->>'user_agent')
  RETURNING seq INTO appended;
  RETURN appended;
END
$$;

CREATE OR REPLACE FUNCTION strata_close_lifetime(p_repository_id bigint, p_tag text, p_seq bigint)
RETURNS timestamptz LANGUAGE plpgsql AS $$
DECLARE
  ended timestamptz;
BEGIN
  UPDATE tag_lifetimes SET ended_at = greatest(clock_timestamp(), started_at), ended_seq = p_seq
  WHERE repository_id = p_repository_id AND tag = p_tag AND ended_at IS NULL
  RETURNING ended_at INTO ended;
  RETURN ended;
END
$$;

CREATE OR REPLACE FUNCTION strata_start_uploads(
  p_ids uuid[], p_repository_ids bigint[], p_repositories text[], p_metas jsonb[]
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO uploads (id, repository_id) SELECT * FROM unnest(p_ids, p_repository_ids);
  INSERT INTO events (actor, type, repository, subject, payload, request_id, client_addr, user_agent)
  SELECT m->>'actor', 'upload.started', r, i::text, jsonb_build_object('upload_id', i),
         m->>'request_id', m->>'client_addr', m->>'user_agent'
  FROM unnest(p_ids, p_repositories, p_metas) WITH ORDINALITY AS u(i, r, m, ord)
  ORDER BY ord;
END
$$;

