-- Stable views for people querying the registry's history with SQL (docs/queries.md). Tables may change shape;
-- these views keep their columns.

-- Every period a tag pointed at a digest, with who started and who ended it.
-- ended_at is NULL while the tag still points there; end_reason is 'moved' or 'deleted'.
CREATE VIEW tag_history AS
SELECT
  r.name       AS repository,
  tl.tag,
  tl.digest,
  tl.started_at,
  tl.ended_at,
  se.actor     AS started_by,
  ee.actor     AS ended_by,
  CASE ee.type WHEN 'tag.moved' THEN 'moved' WHEN 'tag.deleted' THEN 'deleted' END AS end_reason,
  tl.started_seq,
  tl.ended_seq
FROM tag_lifetimes tl
JOIN repositories r ON r.id = tl.repository_id
JOIN events se ON se.seq = tl.started_seq
LEFT JOIN events ee ON ee.seq = tl.ended_seq;

-- The layers of every image manifest currently stored. position 0 is the base layer: the config is stored at
-- reference position 0, so layer i sits at reference position i + 1.
CREATE VIEW image_layers AS
SELECT
  r.name              AS repository,
  mr.parent_digest    AS manifest_digest,
  mr.child_digest     AS layer_digest,
  mr.size,
  mr.position - 1     AS position,
  m.created_at        AS pushed_at
FROM manifest_references mr
JOIN manifests m ON m.repository_id = mr.repository_id AND m.digest = mr.parent_digest
JOIN repositories r ON r.id = mr.repository_id
WHERE mr.kind = 'layer';

-- Every period a manifest was present in a repository, from the event log, so deleted manifests keep their
-- history: pushed by one 'manifest.pushed' event, removed by the next 'manifest.deleted' of the same digest.
-- "references" is the pushed event's list of {digest, kind, size}: config, layers or child manifests.
CREATE VIEW manifest_history AS
SELECT
  p.repository,
  p.subject                                AS digest,
  p.payload ->> 'media_type'               AS media_type,
  p.payload ->> 'artifact_type'            AS artifact_type,
  p.payload ->> 'subject'                  AS subject_digest,
  (p.payload ->> 'size')::bigint           AS size,
  p.at                                     AS pushed_at,
  p.actor                                  AS pushed_by,
  d.at                                     AS deleted_at,
  d.actor                                  AS deleted_by,
  p.payload -> 'references'                AS "references",
  p.seq                                    AS pushed_seq,
  d.seq                                    AS deleted_seq
FROM events p
LEFT JOIN LATERAL (
  SELECT e.at, e.actor, e.seq
  FROM events e
  WHERE e.type = 'manifest.deleted'
    AND e.repository = p.repository
    AND e.subject = p.subject
    AND e.seq > p.seq
  ORDER BY e.seq
  LIMIT 1
) d ON true
WHERE p.type = 'manifest.pushed';

CREATE INDEX events_manifest_deleted_idx ON events (repository, subject, seq) WHERE type = 'manifest.deleted';

-- The event log with the payload fields most questions need as columns.
CREATE VIEW audit_log AS
SELECT
  e.seq,
  e.at,
  e.actor,
  e.type                               AS action,
  e.repository,
  e.subject,
  e.payload ->> 'digest'               AS digest,
  e.payload ->> 'tag'                  AS tag,
  e.payload ->> 'previous'             AS previous_digest,
  CASE WHEN jsonb_typeof(e.payload -> 'size') = 'number' THEN (e.payload ->> 'size')::bigint END AS size,
  e.request_id,
  e.client_addr,
  e.user_agent,
  e.payload
FROM events e;

-- Tag and repository listings page in bytewise order (COLLATE "C"); these indexes serve that order.
CREATE INDEX tags_name_c_idx ON tags (repository_id, name COLLATE "C");
CREATE INDEX repositories_name_c_idx ON repositories (name COLLATE "C");
