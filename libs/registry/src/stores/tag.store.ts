import type { PreparedStatements, Statement } from '@strata/db';
import { metaJson, type RequestMeta } from '@strata/events';

// Names sort bytewise (COLLATE "C"), the spec's lexical order, whatever the database's locale.
const SQL = {
  first: {
    name: 'tag_list_first',
    text: 'SELECT name FROM tags WHERE repository_id = $1 ORDER BY name COLLATE "C" LIMIT $2',
  },
  after: {
    name: 'tag_list_after',
    text: `SELECT name FROM tags WHERE repository_id = $1 AND name COLLATE "C" > $2
      ORDER BY name COLLATE "C" LIMIT $3`,
  },
  delete: {
    name: 'tag_delete',
    text: 'SELECT strata_delete_tag($1::bigint, $2::text, $3::text, $4::jsonb) AS removed',
  },
} satisfies Record<string, Statement>;

/**
 * The only reader and writer of `tags` and `tag_lifetimes` outside the write functions of migration 0009 (a
 * manifest push moves its tag inside `strata_push_manifest`, so the tag and the manifest commit together).
 */
export class TagStore {
  constructor(private readonly statements: PreparedStatements) {}

  /** Up to `limit` tag names of the repository after `last` (bytewise), in order. */
  async list(repositoryId: number, last: string | null, limit: number): Promise<string[]> {
    const rows =
      last === null
        ? await this.statements.rows<{ name: string }>(SQL.first, [repositoryId, limit])
        : await this.statements.rows<{ name: string }>(SQL.after, [repositoryId, last, limit]);
    return rows.map((r) => r.name);
  }

  /** Removes the tag, ending its lifetime, with its `tag.deleted` event; false when it was not there. */
  async delete(repositoryId: number, repository: string, tag: string, meta: RequestMeta): Promise<boolean> {
    const row = await this.statements.one<{ removed: boolean }>(SQL.delete, [
      repositoryId,
      repository,
      tag,
      metaJson(meta),
    ]);
    return row.removed;
  }
}
