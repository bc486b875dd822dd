import type { CompiledQuery } from 'kysely';
import type pg from 'pg';

/**
 * Named prepared statements for the hottest requests (HEAD and GET of blobs and manifests, the statements of a
 * small push): each connection parses and plans them once instead of on every request. A name must always
 * stand for the same SQL text; each runs on its own, so a write here is one statement and its own transaction.
 */
export class PreparedStatements {
  constructor(private readonly pool: pg.Pool) {}

  async first<T extends pg.QueryResultRow>(
    name: string,
    text: string,
    values: unknown[],
  ): Promise<T | undefined> {
    const result = await this.pool.query<T>({ name, text, values });
    return result.rows[0];
  }

  async all<T extends pg.QueryResultRow>(name: string, text: string, values: unknown[]): Promise<T[]> {
    const result = await this.pool.query<T>({ name, text, values });
    return result.rows;
  }

  /** Runs a query kysely compiled (`sql\`…\`.compile(db)`) under `name`; its rows. */
  async run<T extends pg.QueryResultRow>(name: string, query: CompiledQuery<T>): Promise<T[]> {
    const result = await this.pool.query<T>({ name, text: query.sql, values: [...query.parameters] });
    return result.rows;
  }
}
