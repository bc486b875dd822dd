import { CompiledQuery } from 'kysely';
import type pg from 'pg';
import type { Tx } from './database';

/** A statement of fixed text, prepared under a fixed name on each connection that runs it. */
export interface Statement {
  readonly name: string;
  readonly text: string;
}

/**
 * Named prepared statements: each connection parses and plans a statement once instead of on every request. A
 * name always stands for the same text (statements are constants, never built at run time); each runs on its
 * own, so a write here is one statement and its own transaction, unless it is given the caller's transaction.
 */
export class PreparedStatements {
  constructor(private readonly pool: pg.Pool) {}

  /** The rows of `statement`: on a pooled connection, or inside `tx` (planned there, not prepared). */
  async rows<T extends pg.QueryResultRow>(statement: Statement, values: unknown[], tx?: Tx): Promise<T[]> {
    if (tx) return (await tx.executeQuery<T>(CompiledQuery.raw(statement.text, values))).rows;
    const result = await this.pool.query<T>({ name: statement.name, text: statement.text, values });
    return result.rows;
  }

  /**
   * The rows of `statement`, planned for these values every time (an unnamed statement): for a statement whose
   * optional filters (`$n IS NULL OR ...`) make any one plan wrong for most calls, as a prepared statement's
   * generic plan would be after its fifth run.
   */
  async rowsPlannedEachTime<T extends pg.QueryResultRow>(
    statement: Statement,
    values: unknown[],
  ): Promise<T[]> {
    return (await this.pool.query<T>(statement.text, values)).rows;
  }

  /** The first row of `statement`, if any. */
  async row<T extends pg.QueryResultRow>(
    statement: Statement,
    values: unknown[],
    tx?: Tx,
  ): Promise<T | undefined> {
    return (await this.rows<T>(statement, values, tx))[0];
  }

  /** The one row `statement` always returns (a function call's). */
  async one<T extends pg.QueryResultRow>(statement: Statement, values: unknown[], tx?: Tx): Promise<T> {
    const row = await this.row<T>(statement, values, tx);
    if (!row) throw new Error(`statement ${statement.name} returned no row`);
    return row;
  }
}
