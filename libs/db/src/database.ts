import { Kysely, PostgresDialect, type Transaction } from 'kysely';
import pg from 'pg';
import type { Database } from './schema';

// int8 (20) as a JS number: sizes and offsets stay below 2^53 (8 PiB); anything larger is refused so it never
// silently loses precision. Sequence numbers are read as text where they are selected.
const INT8_OID = 20;
pg.types.setTypeParser(INT8_OID, (value: string): number => {
  const n = Number(value);
  if (!Number.isSafeInteger(n)) throw new RangeError(`int8 value ${value} exceeds the safe integer range`);
  return n;
});

export type Db = Kysely<Database>;
export type Tx = Transaction<Database>;
/** Either the database or a transaction on it: for code that may run inside a caller's transaction. */
export type Executor = Kysely<Database>;

export interface DatabaseOptions {
  readonly connectionString: string;
  readonly max?: number;
  readonly applicationName?: string;
  /**
   * The server ends a session that sits inside a transaction this long without a statement (default 60 s). Our
   * transactions hold row locks and per-digest commit locks and run only statements; one that idles this long
   * belongs to a process that is stopped or wedged, and its locks would otherwise stall every other replica.
   */
  readonly idleInTransactionTimeoutMs?: number;
  /**
   * Told of a connection the server ended (a restart, a failover, an administrator), whether it sat idle in the
   * pool or was held by a caller between two statements. The pool replaces it; a statement sent on it fails.
   */
  readonly onConnectionLost?: (err: Error) => void;
}

/**
 * A pool whose connections can be ended by the server at any moment without taking the process with them.
 * pg-pool listens for errors only on idle connections: one checked out and waiting between two statements (a
 * transaction's, or a job holding its lock) would emit `error` with no listener, and that ends the process.
 */
export function createPool(options: DatabaseOptions): pg.Pool {
  const pool = new pg.Pool({
    connectionString: options.connectionString,
    max: options.max ?? 20,
    application_name: options.applicationName ?? 'strata',
    idleTimeoutMillis: 30_000,
    connectionTimeoutMillis: 10_000,
    idle_in_transaction_session_timeout: options.idleInTransactionTimeoutMs ?? 60_000,
  });
  const lost = options.onConnectionLost ?? ((): void => undefined);
  // pg-pool re-emits an idle connection's error on the pool, which must be listened to; it is reported below.
  pool.on('error', () => undefined);
  // A connection ended by the server errors twice (the server's message, then the socket's end): told once.
  const told = new WeakSet<pg.PoolClient>();
  pool.on('connect', (client) =>
    client.on('error', (err) => {
      if (told.has(client)) return;
      told.add(client);
      lost(err);
    }),
  );
  return pool;
}

export function createDb(pool: pg.Pool): Db {
  return new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
}
