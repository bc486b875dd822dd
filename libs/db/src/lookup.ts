import type pg from 'pg';
import { Batcher, type BatcherOptions } from './batcher';
import type { PreparedStatements, Statement } from './prepared';

/**
 * Point reads by key, batched: the keys of requests that arrive while a read is under way go together in the
 * next one, as arrays. A lone request reads at once, so it waits no longer than with a query of its own; under
 * load, many share one round trip to PostgreSQL, which on a small machine is where the time goes (each query's
 * socket write wakes a backend, which takes the core from the event loop).
 *
 * Every read starts after the requests in it arrived, so it sees whatever had committed when they did.
 *
 * `statement` is given the arrays `params(keys)` returns and must answer, for each key
 * that has a row, that row with `i`: the key's 1-based position (`WITH ORDINALITY`, cast to int).
 */
export class Lookup<K, R extends pg.QueryResultRow> {
  private readonly batcher: Batcher<K, R | undefined>;

  constructor(
    prepared: PreparedStatements,
    statement: Statement,
    params: (keys: readonly K[]) => unknown[],
    options: BatcherOptions = { maxBatch: 256, maxInFlight: 2 },
  ) {
    this.batcher = new Batcher(async (keys) => {
      const rows = await prepared.rows<R & { i: number }>(statement, params(keys));
      const found = new Map<number, R>();
      for (const { i, ...row } of rows) found.set(i, row as unknown as R);
      return keys.map((_, j) => found.get(j + 1));
    }, options);
  }

  find(key: K): Promise<R | undefined> {
    return this.batcher.submit(key);
  }
}
