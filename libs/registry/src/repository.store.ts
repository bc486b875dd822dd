import type { Db } from '@strata/db';
import { assertName } from '@strata/oci';

/**
 * Repository name → id. Rows are never renamed or removed, so ids are cached for the life of the process
 * and stay true on every replica.
 */
export class RepositoryStore {
  private readonly ids = new Map<string, number>();

  constructor(private readonly db: Db) {}

  /** The id of `name`, or null when nothing was ever pushed there. */
  async find(name: string): Promise<number | null> {
    assertName(name);
    const cached = this.ids.get(name);
    if (cached) return cached;
    const row = await this.db
      .selectFrom('repositories')
      .select('id')
      .where('name', '=', name)
      .executeTakeFirst();
    if (row) this.remember(name, row.id);
    return row ? row.id : null;
  }

  /** The id of `name`, creating the repository on first use. */
  async ensure(name: string): Promise<number> {
    const found = await this.find(name);
    if (found) return found;
    const db = this.db;
    await db
      .insertInto('repositories')
      .values({ name })
      .onConflict((oc) => oc.column('name').doNothing())
      .execute();
    const row = await db
      .selectFrom('repositories')
      .select('id')
      .where('name', '=', name)
      .executeTakeFirstOrThrow();
    this.remember(name, row.id);
    return row.id;
  }

  private remember(name: string, id: number): void {
    if (this.ids.size > 100_000) this.ids.clear();
    this.ids.set(name, id);
  }
}
