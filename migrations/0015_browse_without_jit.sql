-- The web UI's two aggregating reads (libs/registry/src/stores/browse.store.ts), as functions that run with JIT
-- off. Their cost estimates grow with the rows per repository, and before a table's first ANALYZE with the
-- planner's defaults: on a registry of 10,000 repositories seeded a minute earlier, the summaries of one page of
-- 50 repositories were estimated past jit_above_cost, and JIT compiled for ~310 ms a query that then ran in ~14
-- (the bench's repository list: p50 78 ms, p99 878 ms). The same happens for good on a repository with millions of
-- tags. These queries are index lookups per row, which JIT never makes faster.

CREATE FUNCTION strata_repository_summaries(p_ids bigint[])
RETURNS TABLE (id bigint, tags int, size bigint, last_push timestamptz)
LANGUAGE sql STABLE SET jit = off AS $$
  SELECT r.id,
    (SELECT count(*) FROM tags t WHERE t.repository_id = r.id)::int,
    (SELECT coalesce(sum(b.size), 0) FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest
      WHERE rb.repository_id = r.id)::bigint
      + (SELECT coalesce(sum(m.size), 0) FROM manifests m WHERE m.repository_id = r.id)::bigint,
    greatest((SELECT max(t.updated_at) FROM tags t WHERE t.repository_id = r.id),
      (SELECT max(m.created_at) FROM manifests m WHERE m.repository_id = r.id))
  FROM repositories r WHERE r.id = ANY (p_ids)
$$;

-- A page of a repository's tags after p_after (bytewise) whose name holds p_q: each with its manifest's media
-- type, its size with everything it refers to (an index: with its children's), who moved the tag there and when,
-- and an index's content, for its children's platforms, when it is no larger than 64 KiB (real ones are a few KiB;
-- a page of 100 padded 4 MiB indexes would otherwise bring 400 MiB into the registry's memory).
CREATE FUNCTION strata_tag_page(p_repository_id bigint, p_after text, p_q text, p_limit int)
RETURNS TABLE (name text, digest text, media_type text, pushed_at timestamptz, pushed_by text, size bigint,
               index_content bytea)
LANGUAGE sql STABLE SET jit = off AS $$
  SELECT t.name, t.digest, m.media_type, tl.started_at, e.actor,
    m.size
      + (SELECT coalesce(sum(mr.size), 0) FROM manifest_references mr
          WHERE mr.repository_id = t.repository_id AND mr.parent_digest = t.digest)::bigint
      + (SELECT coalesce(sum(cr.size), 0) FROM manifest_references mr
          JOIN manifest_references cr ON cr.repository_id = mr.repository_id AND cr.parent_digest = mr.child_digest
          WHERE mr.repository_id = t.repository_id AND mr.parent_digest = t.digest AND mr.kind = 'manifest')::bigint,
    CASE WHEN m.media_type IN ('application/vnd.oci.image.index.v1+json',
                               'application/vnd.docker.distribution.manifest.list.v2+json')
      AND m.size <= 65536 THEN m.content END
  FROM tags t
  JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.digest
  LEFT JOIN tag_lifetimes tl ON tl.repository_id = t.repository_id AND tl.tag = t.name AND tl.ended_at IS NULL
  LEFT JOIN events e ON e.seq = tl.started_seq
  WHERE t.repository_id = p_repository_id AND t.name COLLATE "C" > p_after AND strpos(t.name, p_q) > 0
  ORDER BY t.name COLLATE "C"
  LIMIT p_limit
$$;
