import type pg from 'pg';

/**
 * Named prepared statements for the hottest reads (HEAD and GET of blobs and manifests): each connection parses
 * and plans them once instead of on every request. Only for fixed SQL text; everything else goes through kysely.
 */
export class PreparedReads {
  constructor(private readonly pool: pg.Pool) {}

  async first<T extends pg.QueryResultRow>(
    name: string,
    text: string,
    values: unknown[],
  ): Promise<T | undefined> {
    const result = await this.pool.query<T>({ name, text, values });
    return result.rows[0];
  }
}
