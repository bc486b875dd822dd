-- Immutable tags (issue 14): rules (a repository pattern and a tag pattern) under which a tag, once pushed, is
-- neither moved to another digest nor deleted, nor is the manifest it points at. A new tag is never refused, so
-- the common push (a new tag) does no more work than before; a move or a delete looks the rules up, under the tag's
-- or the manifest's lock, and a refusal is raised with SQLSTATE ST001 and the rule in its detail (JSON). The
-- refused change rolls back whole; the registry records the refusal (tag.change_refused) after.
--
-- Patterns are kept as given and as regular expressions made from them here (generated columns): the repository's
-- over its name with a slash appended, as patternRegex in libs/identity makes it, the tag's over the tag.
--
-- A rule's add or removal takes the table's EXCLUSIVE lock; every check of a move or delete takes ROW SHARE (a
-- table lock, nothing written): a change that checked before a rule was added commits before the rule does, and
-- one that checks after sees it. So the event log never shows a protected change after its rule.

-- The grant pattern grammar of libs/identity (scope.ts) as a regular expression over `name || '/'`.
CREATE FUNCTION strata_pattern_regex(p_pattern text) RETURNS text LANGUAGE sql IMMUTABLE STRICT AS $$
  SELECT '^' || string_agg(
    CASE WHEN seg = '**' THEN CASE WHEN ord = n THEN '([^/]+/)+' ELSE '([^/]+/)*' END
         ELSE replace(replace(seg, '.', '\.'), '*', '[^/]*') || '/' END, '' ORDER BY ord) || '$'
  FROM (SELECT seg, ord, count(*) OVER () AS n
        FROM unnest(string_to_array(p_pattern, '/')) WITH ORDINALITY AS s(seg, ord)) segments
$$;

CREATE TABLE immutable_tag_rules (
  id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  repository_pattern text        NOT NULL CHECK (length(repository_pattern) <= 255
    AND repository_pattern ~ '^([a-z0-9._*-]+|\*\*)(/([a-z0-9._*-]+|\*\*))*$' AND repository_pattern !~ '\*\*\*'),
  -- A tag starts with a letter, digit or underscore: so does a pattern (or with *).
  tag_pattern        text        NOT NULL CHECK (tag_pattern ~ '^[A-Za-z0-9_*][A-Za-z0-9_.*-]{0,127}$'),
  repository_regex   text        NOT NULL GENERATED ALWAYS AS (strata_pattern_regex(repository_pattern)) STORED,
  tag_regex          text        NOT NULL
    GENERATED ALWAYS AS ('^' || replace(replace(tag_pattern, '.', '\.'), '*', '.*') || '$') STORED,
  created_at         timestamptz NOT NULL DEFAULT now(),
  -- The immutability.rule_added event. No foreign key: what refuses a TRUNCATE of events stays its append-only guard.
  created_seq        bigint      NOT NULL,
  UNIQUE (repository_pattern, tag_pattern)
);

-- Raises ST001 when a rule makes p_tag of p_repository immutable (the first rule by id is named).
CREATE FUNCTION strata_refuse_immutable(p_repository text, p_tag text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  rule immutable_tag_rules;
BEGIN
  LOCK TABLE immutable_tag_rules IN ROW SHARE MODE;
  SELECT * INTO rule FROM immutable_tag_rules
  WHERE p_tag ~ tag_regex AND (p_repository || '/') ~ repository_regex
  ORDER BY id LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'tag % of % is immutable', p_tag, p_repository USING
      ERRCODE = 'ST001',
      DETAIL = json_build_object('rule', rule.id, 'repository_pattern', rule.repository_pattern,
                                 'tag_pattern', rule.tag_pattern, 'tag', p_tag)::text;
  END IF;
END
$$;

-- Adds a rule with its event; the id of the rule (the existing one when the same patterns are there already).
CREATE FUNCTION strata_add_immutable_rule(p_repository_pattern text, p_tag_pattern text, p_meta jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  found_id bigint;
  new_id bigint;
  seq bigint;
BEGIN
  LOCK TABLE immutable_tag_rules IN EXCLUSIVE MODE;
  SELECT id INTO found_id FROM immutable_tag_rules
  WHERE repository_pattern = p_repository_pattern AND tag_pattern = p_tag_pattern;
  IF FOUND THEN
    RETURN found_id;
  END IF;
  -- The id first, so the event names the rule it added.
  new_id := nextval(pg_get_serial_sequence('immutable_tag_rules', 'id'));
  seq := strata_event(p_meta, 'immutability.rule_added', NULL, p_repository_pattern,
    jsonb_build_object('rule', new_id, 'repository_pattern', p_repository_pattern, 'tag_pattern', p_tag_pattern));
  INSERT INTO immutable_tag_rules (id, repository_pattern, tag_pattern, created_seq)
  OVERRIDING SYSTEM VALUE
  VALUES (new_id, p_repository_pattern, p_tag_pattern, seq);
  RETURN new_id;
END
$$;

-- Removes a rule with its event; false when there was none of that id.
CREATE FUNCTION strata_remove_immutable_rule(p_id bigint, p_meta jsonb) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  rule immutable_tag_rules;
BEGIN
  LOCK TABLE immutable_tag_rules IN EXCLUSIVE MODE;
  DELETE FROM immutable_tag_rules WHERE id = p_id RETURNING * INTO rule;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM strata_event(p_meta, 'immutability.rule_removed', NULL, rule.repository_pattern,
    jsonb_build_object('rule', rule.id, 'repository_pattern', rule.repository_pattern, 'tag_pattern', rule.tag_pattern));
  RETURN true;
END
$$;

-- strata_move_tag of 0014, refusing to move an immutable tag (a new tag is not looked up: it is never refused).
CREATE OR REPLACE FUNCTION strata_move_tag(p_repository_id bigint, p_repository text, p_tag text, p_digest text, p_meta jsonb)
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
      -- A tag this push creates has no lifetime open (one ends when its tag is deleted): none to close.
      INSERT INTO events (actor, type, repository, subject, payload, request_id, client_addr, user_agent)
      VALUES (p_meta->>'actor', 'tag.moved', p_repository, p_tag,
              jsonb_build_object('tag', p_tag, 'digest', p_digest, 'previous', NULL::text),
              p_meta->>'request_id', p_meta->>'client_addr', p_meta->>'user_agent')
      RETURNING events.seq INTO seq;
      INSERT INTO tag_lifetimes (repository_id, tag, digest, started_at, started_seq)
      VALUES (p_repository_id, p_tag, p_digest, clock_timestamp(), seq);
      RETURN true;
    ELSE
      SELECT digest INTO previous FROM tags WHERE repository_id = p_repository_id AND name = p_tag FOR UPDATE;
      IF NOT FOUND THEN
        CONTINUE; -- deleted between the two statements
      END IF;
      IF previous = p_digest THEN
        RETURN true;
      END IF;
      PERFORM strata_refuse_immutable(p_repository, p_tag);
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

-- strata_delete_tag of 0009, refusing to delete an immutable tag (the delete is rolled back with the refusal).
CREATE OR REPLACE FUNCTION strata_delete_tag(p_repository_id bigint, p_repository text, p_tag text, p_meta jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  target text;
BEGIN
  DELETE FROM tags WHERE repository_id = p_repository_id AND name = p_tag RETURNING digest INTO target;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM strata_refuse_immutable(p_repository, p_tag);
  PERFORM strata_close_lifetime(p_repository_id, p_tag,
    strata_event(p_meta, 'tag.deleted', p_repository, p_tag, jsonb_build_object('tag', p_tag, 'digest', target)));
  RETURN true;
END
$$;

-- strata_delete_manifest of 0009, refusing to delete a manifest an immutable tag points at, directly or through
-- the indexes that list it (deleting an index's child would leave the tag's image unpullable). The indexes that
-- list it hold it share-locked while they are pushed, so the manifest's lock below waits for them.
CREATE OR REPLACE FUNCTION strata_delete_manifest(p_repository_id bigint, p_repository text, p_digest text, p_meta jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  names text[];
  t text;
BEGIN
  PERFORM 1 FROM manifests WHERE repository_id = p_repository_id AND digest = p_digest FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  FOR t IN
    WITH RECURSIVE listing(digest) AS (
      SELECT p_digest
      UNION
      SELECT mr.parent_digest FROM manifest_references mr JOIN listing l ON mr.child_digest = l.digest
      WHERE mr.repository_id = p_repository_id AND mr.kind = 'manifest'
    )
    SELECT tg.name FROM listing l JOIN tags tg ON tg.repository_id = p_repository_id AND tg.digest = l.digest
    ORDER BY tg.name COLLATE "C"
  LOOP
    PERFORM strata_refuse_immutable(p_repository, t);
  END LOOP;
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
