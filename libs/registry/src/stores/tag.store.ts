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
  refused: {
    name: 'tag_change_refused',
    text: `SELECT strata_event($1::jsonb, 'tag.change_refused', $2::text, $3::text, $4::jsonb) AS seq`,
  },
  addRule: {
    name: 'immutable_rule_add',
    text: 'SELECT strata_add_immutable_rule($1::text, $2::text, $3::jsonb) AS id',
  },
  removeRule: {
    name: 'immutable_rule_remove',
    text: 'SELECT strata_remove_immutable_rule($1::bigint, $2::jsonb) AS removed',
  },
  rules: {
    name: 'immutable_rule_list',
    text: `SELECT r.id, r.repository_pattern, r.tag_pattern, r.created_at, e.actor AS created_by
      FROM immutable_tag_rules r LEFT JOIN events e ON e.seq = r.created_seq ORDER BY r.id`,
  },
} satisfies Record<string, Statement>;

export interface ImmutableRule {
  readonly id: number;
  readonly repository_pattern: string;
  readonly tag_pattern: string;
  readonly created_at: Date;
  readonly created_by: string | null;
}

/** What refused a change: the rule, as PostgreSQL's refusal (ST001) names it. */
export interface ImmutableRefusal {
  readonly rule: number;
  readonly repository_pattern: string;
  readonly tag_pattern: string;
  readonly tag: string;
}

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

  /** Records a refused change (the change itself rolled back with the refusal). */
  async refused(
    repository: string,
    change: 'move' | 'delete',
    digest: string | null,
    refusal: ImmutableRefusal,
    meta: RequestMeta,
  ): Promise<void> {
    await this.statements.one(SQL.refused, [
      metaJson(meta),
      repository,
      refusal.tag,
      JSON.stringify({
        tag: refusal.tag,
        change,
        digest,
        rule: refusal.rule,
        repository_pattern: refusal.repository_pattern,
        tag_pattern: refusal.tag_pattern,
      }),
    ]);
  }

  /**
   * Adds an immutable-tag rule: a repository pattern (the grammar of grants) and a tag pattern (`*` for any run of
   * tag characters), whose regular expressions the database makes; its id, the existing one's for patterns already
   * there.
   */
  async addRule(repositoryPattern: string, tagPattern: string, meta: RequestMeta): Promise<number> {
    const row = await this.statements.one<{ id: number }>(SQL.addRule, [
      repositoryPattern,
      tagPattern,
      metaJson(meta),
    ]);
    return row.id;
  }

  async removeRule(id: number, meta: RequestMeta): Promise<boolean> {
    return (await this.statements.one<{ removed: boolean }>(SQL.removeRule, [id, metaJson(meta)])).removed;
  }

  rules(): Promise<ImmutableRule[]> {
    return this.statements.rows<ImmutableRule>(SQL.rules, []);
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
