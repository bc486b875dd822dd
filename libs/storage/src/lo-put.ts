import { CompiledQuery } from 'kysely';
import type { Db } from '@strata/db';

/** The pg connection as a submitted query sees it: only what this file uses. */
interface PgConnection {
  readonly stream: {
    cork(): void;
    uncork(): void;
    write(chunk: Buffer): boolean;
  };
}

/**
 * Each slice commits without waiting for its WAL to reach the disk: the statement that marks the object complete
 * waits for its own commit record, and with it for every record written before it.
 */
const STATEMENT = Buffer.from(
  "SELECT set_config('synchronous_commit', 'off', true), strata_lo_put($1::oid, $2::bigint, $3::bytea)\0",
  'utf8',
);

function message(code: string, body: Buffer[]): Buffer {
  const length = body.reduce((n, b) => n + b.length, 4);
  const head = Buffer.allocUnsafe(5);
  head.write(code, 0, 'latin1');
  head.writeInt32BE(length, 1);
  return Buffer.concat([head, ...body]);
}

const int16 = (...ns: number[]): Buffer => {
  const b = Buffer.allocUnsafe(2 * ns.length);
  ns.forEach((n, i) => b.writeInt16BE(n, 2 * i));
  return b;
};
const int32 = (n: number): Buffer => {
  const b = Buffer.allocUnsafe(4);
  b.writeInt32BE(n, 0);
  return b;
};
const text = (s: string): Buffer[] => {
  const b = Buffer.from(s, 'latin1');
  return [int32(b.length), b];
};

/**
 * Each connection parses and plans the statement once, under this name, not once per slice. A connection whose
 * statement failed parses it again, after closing any it holds (closing a name that does not exist is no error), so
 * a failed Parse is never mistaken for a prepared statement.
 */
const NAME = Buffer.from('strata_lo_put\0', 'latin1');
const prepared = new WeakSet<PgConnection>();

// Close and Parse (named statement, types inferred) when the connection lacks it; after the Bind: Execute (unnamed
// portal, every row), Sync.
const PREPARE = Buffer.concat([
  message('C', [Buffer.from('S', 'latin1'), NAME]),
  message('P', [NAME, STATEMENT, int16(0)]),
]);
const AFTER_BIND = Buffer.concat([int16(0), message('E', [Buffer.from([0]), int32(0)]), message('S', [])]);

/**
 * One `strata_lo_put(loid, offset, bytes)` statement whose bytes go to the socket as the buffers they are, in the
 * extended protocol with the bytea parameter in binary. pg's own query copies a parameter into the Bind message it
 * builds, growing that buffer as it goes (three copies of each slice, and as many short-lived buffers of its
 * size); these are written behind a header, so a slice is never copied or gathered in JavaScript.
 */
class LoPutQuery implements PromiseLike<{ command: string; rowCount: number; rows: never[] }> {
  private readonly done: Promise<{ command: string; rowCount: number; rows: never[] }>;
  private settle!: (error: Error | null) => void;
  private failed: Error | null = null;
  private connection: PgConnection | null = null;

  constructor(
    private readonly loid: number,
    private readonly offset: number,
    private readonly bytes: readonly Buffer[],
  ) {
    this.done = new Promise((resolve, reject) => {
      let settled = false;
      this.settle = (error) => {
        if (settled) return;
        settled = true;
        if (error) reject(error);
        else resolve({ command: 'SELECT', rowCount: 1, rows: [] });
      };
    });
  }

  submit(connection: PgConnection): void {
    this.connection = connection;
    const size = this.bytes.reduce((n, b) => n + b.length, 0);
    const loid = text(String(this.loid));
    const offset = text(String(this.offset));
    // Bind: unnamed portal, the named statement; formats text, text, binary; three values; then (AFTER_BIND)
    // results as text.
    const bindBody = [Buffer.from([0]), NAME, int16(3, 0, 0, 1), int16(3), ...loid, ...offset, int32(size)];
    const bindLength = bindBody.reduce((n, b) => n + b.length, 4) + size + 2;
    const stream = connection.stream;
    stream.cork();
    if (!prepared.has(connection)) {
      stream.write(PREPARE);
      prepared.add(connection);
    }
    stream.write(Buffer.concat([Buffer.from('B', 'latin1'), int32(bindLength), ...bindBody]));
    for (const b of this.bytes) stream.write(b);
    stream.write(AFTER_BIND);
    stream.uncork();
  }

  handleError(error: Error): void {
    if (this.connection) prepared.delete(this.connection);
    this.settle(error);
  }

  handleReadyForQuery(): void {
    this.settle(this.failed);
  }

  handleCommandComplete(): void {}
  handleRowDescription(): void {}
  handleDataRow(): void {}
  handleEmptyQuery(): void {
    this.failed = new Error('empty lo_put statement');
  }
  handleCopyInResponse(): void {
    this.failed = new Error('COPY FROM where lo_put was sent');
  }
  handleCopyData(): void {}
  handlePortalSuspended(): void {}

  then<T = { command: string; rowCount: number; rows: never[] }, U = never>(
    onFulfilled?:
      | ((value: { command: string; rowCount: number; rows: never[] }) => T | PromiseLike<T>)
      | null,
    onRejected?: ((reason: unknown) => U | PromiseLike<U>) | null,
  ): PromiseLike<T | U> {
    return this.done.then(onFulfilled, onRejected);
  }
}

/** Writes `bytes` (concatenated) into large object `loid` at `offset`, in a statement that commits on its own. */
export async function loPut(db: Db, loid: number, offset: number, bytes: readonly Buffer[]): Promise<void> {
  const query = new LoPutQuery(loid, offset, bytes);
  const compiled = CompiledQuery.raw('');
  await db.executeQuery({ ...compiled, sql: query as unknown as string });
}
