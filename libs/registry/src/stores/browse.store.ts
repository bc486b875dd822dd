import type { PreparedStatements, Statement } from '@strata/db';

/**
 * A repository is listed once it holds a manifest or a linked blob, as in the catalog. `OFFSET 0` keeps each
 * EXISTS a probe of the row's own index entries: without it the planner may hash every manifest instead (it
 * expects to read more repositories than a page's), 90 ms a page on 100,000 manifests rather than 1.
 */
const LISTED = `(EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id OFFSET 0)
  OR EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = r.id OFFSET 0))`;

/**
 * Of the rows, those of repositories the caller may pull ($a anonymous, $g granted, $s a token's scopes: regular
 * expressions over the name with a slash appended, from patternRegex), or all when $a is NULL.
 */
const visible = (column: string, a: number, g: number, t: number): string =>
  `($${a}::text[] IS NULL OR (${column} || '/') ~ ANY ($${a}::text[])
    OR ((${column} || '/') ~ ANY ($${g}::text[]) AND ($${t}::text[] IS NULL OR (${column} || '/') ~ ANY ($${t}::text[]))))`;

// Keyset pages in bytewise order (COLLATE "C", served by the *_name_c_idx indexes); '' is before every name.
const SQL = {
  repositories: {
    name: 'browse_repositories',
    text: `SELECT r.id, r.name FROM repositories r
      WHERE r.name COLLATE "C" > $1 AND strpos(r.name, $2) > 0 AND ${LISTED} AND ${visible('r.name', 4, 5, 6)}
      ORDER BY r.name COLLATE "C" LIMIT $3`,
  },
  // Functions of migration 0015: they run with JIT off (see there why).
  summaries: {
    name: 'browse_repository_summaries',
    text: 'SELECT id, tags, size, last_push FROM strata_repository_summaries($1::bigint[])',
  },
  tags: {
    name: 'browse_tags',
    text: `SELECT name, digest, media_type, pushed_at, pushed_by, size, index_content
      FROM strata_tag_page($1::bigint, $2::text, $3::text, $4::int)`,
  },
  tagsAt: {
    name: 'browse_tags_at',
    text: `SELECT name FROM tags WHERE repository_id = $1 AND digest = $2 ORDER BY name COLLATE "C" LIMIT 100`,
  },
  pushed: {
    name: 'browse_manifest_pushed',
    text: `SELECT pushed_at, pushed_by, "references" FROM manifest_history
      WHERE repository = $1 AND digest = $2 ORDER BY pushed_seq DESC LIMIT 1`,
  },
  timeline: {
    name: 'browse_timeline',
    text: `SELECT digest, started_at, ended_at, started_by, ended_by, end_reason, started_seq FROM tag_history
      WHERE repository = $1 AND tag = $2 ORDER BY started_seq DESC LIMIT $3`,
  },
  // The newest events first, before a seq; every filter optional (NULL matches all), so it is planned for its
  // values each time. An action ending in '.' is a prefix: 'tag.' is every tag event.
  audit: {
    name: 'browse_audit',
    text: `SELECT seq, at, actor, type AS action, repository, subject, payload ->> 'digest' AS digest,
        payload ->> 'tag' AS tag, payload ->> 'previous' AS previous_digest,
        CASE WHEN jsonb_typeof(payload -> 'size') = 'number' THEN (payload ->> 'size')::bigint END AS size,
        request_id, client_addr, user_agent
      FROM events
      WHERE seq < $1
        AND ($2::text IS NULL OR actor = $2)
        AND ($3::text IS NULL OR repository = $3)
        AND ($4::text IS NULL OR type = $4 OR (right($4, 1) = '.' AND starts_with(type, $4)))
        AND ($5::timestamptz IS NULL OR at >= $5)
        AND ($6::timestamptz IS NULL OR at < $6)
        AND ${visible('repository', 8, 9, 10)}
      ORDER BY seq DESC LIMIT $7`,
  },
} satisfies Record<string, Statement>;

/** What the caller may see, as regular expressions (see `visible` above); null: everything. */
export interface VisibleFilter {
  readonly anonymous: readonly string[];
  readonly granted: readonly string[];
  readonly scoped: readonly string[] | null;
}

const filterParams = (f: VisibleFilter | null): unknown[] =>
  f === null ? [null, null, null] : [f.anonymous, f.granted, f.scoped];

export interface RepositoryRow {
  readonly id: number;
  readonly name: string;
}

export interface RepositorySummaryRow {
  readonly id: number;
  readonly tags: number;
  readonly size: number;
  readonly last_push: Date | null;
}

export interface TagRow {
  readonly name: string;
  readonly digest: string;
  readonly media_type: string;
  readonly size: number;
  readonly pushed_at: Date | null;
  readonly pushed_by: string | null;
  readonly index_content: Buffer | null;
}

export interface PushedRow {
  readonly pushed_at: Date;
  readonly pushed_by: string;
  readonly references: { digest: string; kind: string; size: number }[] | null;
}

export interface TimelineRow {
  readonly digest: string;
  readonly started_at: Date;
  readonly ended_at: Date | null;
  readonly started_by: string;
  readonly ended_by: string | null;
  readonly end_reason: 'moved' | 'deleted' | null;
  readonly started_seq: number;
}

export interface AuditFilter {
  readonly before: number | null;
  readonly actor: string | null;
  readonly repository: string | null;
  readonly action: string | null;
  readonly since: Date | null;
  readonly until: Date | null;
}

export interface AuditRow {
  readonly seq: number;
  readonly at: Date;
  readonly actor: string;
  readonly action: string;
  readonly repository: string | null;
  readonly subject: string | null;
  readonly digest: string | null;
  readonly tag: string | null;
  readonly previous_digest: string | null;
  readonly size: number | null;
  readonly request_id: string | null;
  readonly client_addr: string | null;
  readonly user_agent: string | null;
}

/**
 * The read model of the web UI's API: read-only queries across the projections and the history views of
 * migration 0004 (tag_history, manifest_history). It writes nothing, so it does not take from the stores their
 * place as the only writers of their tables.
 */
export class BrowseStore {
  constructor(private readonly statements: PreparedStatements) {}

  /** Up to `limit` listed repositories whose name holds `q`, after `after` (bytewise), of those the caller sees. */
  repositories(after: string, q: string, limit: number, f: VisibleFilter | null): Promise<RepositoryRow[]> {
    // Planned for its values each time: one generic plan for every caller's filter (and for none) estimated the
    // filter so selective that it sorted every repository to return the first 50 (60 ms rather than 15 on 10,000).
    return this.statements.rowsPlannedEachTime<RepositoryRow>(SQL.repositories, [
      after,
      q,
      limit,
      ...filterParams(f),
    ]);
  }

  summaries(ids: readonly number[]): Promise<RepositorySummaryRow[]> {
    return this.statements.rows<RepositorySummaryRow>(SQL.summaries, [ids]);
  }

  tags(repositoryId: number, after: string, q: string, limit: number): Promise<TagRow[]> {
    return this.statements.rows<TagRow>(SQL.tags, [repositoryId, after, q, limit]);
  }

  async tagsAt(repositoryId: number, digest: string): Promise<string[]> {
    return (await this.statements.rows<{ name: string }>(SQL.tagsAt, [repositoryId, digest])).map(
      (r) => r.name,
    );
  }

  /** The latest push of `digest` to `repository` from the event log, deleted manifests included. */
  pushed(repository: string, digest: string): Promise<PushedRow | undefined> {
    return this.statements.row<PushedRow>(SQL.pushed, [repository, digest]);
  }

  timeline(repository: string, tag: string, limit: number): Promise<TimelineRow[]> {
    return this.statements.rows<TimelineRow>(SQL.timeline, [repository, tag, limit]);
  }

  audit(f: AuditFilter, limit: number, visible: VisibleFilter | null): Promise<AuditRow[]> {
    return this.statements.rowsPlannedEachTime<AuditRow>(SQL.audit, [
      f.before ?? Number.MAX_SAFE_INTEGER,
      f.actor,
      f.repository,
      f.action,
      f.since,
      f.until,
      limit,
      ...filterParams(visible),
    ]);
  }
}
