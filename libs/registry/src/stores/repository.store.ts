import type { PreparedStatements, Statement } from '@strata/db';
import { assertName } from '@strata/oci';

// A repository is listed once it holds a manifest or a linked blob. Names sort bytewise (COLLATE "C").
// `OFFSET 0` keeps each EXISTS a probe of the row's own index entries: without it the planner may hash every
// manifest of the registry to answer one page (see browse.store.ts, where it did: 90 ms a page on 100,000).
const LISTED = `EXISTS (SELECT 1 FROM manifests m WHERE m.repository_id = r.id OFFSET 0)
  OR EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.repository_id = r.id OFFSET 0)`;

const SQL = {
  find: { name: 'repository_find', text: 'SELECT id FROM repositories WHERE name = $1' },
  ensure: {
    name: 'repository_ensure',
    // The insert returns nothing when the name exists, committed by another request: the select then finds it.
    text: `WITH made AS (
        INSERT INTO repositories (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING id
      )
      SELECT id FROM made UNION ALL SELECT id FROM repositories WHERE name = $1`,
  },
  first: {
    name: 'repository_list_first',
    text: `SELECT r.name FROM repositories r WHERE ${LISTED} ORDER BY r.name COLLATE "C" LIMIT $1`,
  },
  after: {
    name: 'repository_list_after',
    text: `SELECT r.name FROM repositories r WHERE r.name COLLATE "C" > $1 AND (${LISTED})
      ORDER BY r.name COLLATE "C" LIMIT $2`,
  },
} satisfies Record<string, Statement>;

/**
 * Repository name → id, and the list of repositories. Rows are never renamed or removed, so ids are cached for
 * the life of the process and stay true on every replica.
 */
export class RepositoryStore {
  private readonly ids = new Map<string, number>();

  constructor(private readonly statements: PreparedStatements) {}

  /** The id of `name`, or null when nothing was ever pushed there. */
  async find(name: string): Promise<number | null> {
    assertName(name);
    const cached = this.ids.get(name);
    if (cached) return cached;
    const row = await this.statements.row<{ id: number }>(SQL.find, [name]);
    if (row) this.remember(name, row.id);
    return row ? row.id : null;
  }

  /** The id of `name`, creating the repository on first use. */
  async ensure(name: string): Promise<number> {
    const found = await this.find(name);
    if (found) return found;
    let row = await this.statements.row<{ id: number }>(SQL.ensure, [name]);
    // Inserted by a request whose commit this statement's snapshot predates: visible to the next one.
    row ??= await this.statements.row<{ id: number }>(SQL.find, [name]);
    if (!row) throw new Error(`failed to create repository ${name}`);
    this.remember(name, row.id);
    return row.id;
  }

  /** Up to `limit` names of repositories holding something, after `last` (bytewise), in order. */
  async list(last: string | null, limit: number): Promise<string[]> {
    const rows =
      last === null
        ? await this.statements.rows<{ name: string }>(SQL.first, [limit])
        : await this.statements.rows<{ name: string }>(SQL.after, [last, limit]);
    return rows.map((r) => r.name);
  }

  private remember(name: string, id: number): void {
    if (this.ids.size > 100_000) this.ids.clear();
    this.ids.set(name, id);
  }
}
