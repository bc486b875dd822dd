import { CompiledQuery } from 'kysely';
import type { Db } from '@strata/db';

/** The pg connection as a submitted query sees it: only what this file uses. */
interface PgConnection {
  query(text: string): void;
}

interface PgMessage {
  readonly chunk?: Buffer;
}

const SIGNATURE = Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1');

/**
 * Reads rows of `(offset int8, bytes bytea)` from a `COPY ... TO STDOUT (FORMAT binary)` stream, in whatever
 * pieces it arrives. Why COPY: pg hands out query results only as text, so a bytea travels hex-encoded (twice its
 * size) and is decoded in JavaScript, which bound reads to under 100 MB/s; CopyData messages arrive as raw bytes.
 */
class RowParser {
  private header = Buffer.alloc(0);
  private headerDone = false;
  /** Bytes of the fixed part of the current row (field count, offset, length) gathered so far. */
  private fixed = Buffer.alloc(18);
  private fixedGot = 0;
  private inRow = false;
  private rowLeft = 0;
  private ended = false;
  rows = 0;
  size = 0;

  constructor(
    private expectedOffset: number,
    private readonly onBytes: (view: Buffer) => void,
  ) {}

  push(chunk: Buffer): void {
    let at = 0;
    if (!this.headerDone) {
      this.header = Buffer.concat([this.header, chunk]);
      if (this.header.length < 19) return;
      if (!this.header.subarray(0, 11).equals(SIGNATURE)) throw new Error('not a binary COPY stream');
      const extension = this.header.readUInt32BE(15);
      if (this.header.length < 19 + extension) return;
      chunk = this.header.subarray(19 + extension);
      this.headerDone = true;
    }
    while (at < chunk.length) {
      if (this.ended) throw new Error('bytes after the end of a binary COPY stream');
      if (!this.inRow) {
        if (this.fixedGot < 2) {
          const n = Math.min(2 - this.fixedGot, chunk.length - at);
          chunk.copy(this.fixed, this.fixedGot, at, at + n);
          this.fixedGot += n;
          at += n;
          if (this.fixedGot < 2) return;
          const fields = this.fixed.readInt16BE(0);
          if (fields === -1) {
            this.ended = true;
            this.fixedGot = 0;
            continue;
          }
          if (fields !== 2) throw new Error(`expected 2 fields per COPY row, got ${fields}`);
        }
        const n = Math.min(18 - this.fixedGot, chunk.length - at);
        chunk.copy(this.fixed, this.fixedGot, at, at + n);
        this.fixedGot += n;
        at += n;
        if (this.fixedGot < 18) return;
        if (this.fixed.readInt32BE(2) !== 8) throw new Error('expected an int8 offset in a COPY row');
        const offset = Number(this.fixed.readBigInt64BE(6));
        if (offset !== this.expectedOffset)
          throw new Error(`COPY row at offset ${offset}, expected ${this.expectedOffset}`);
        const length = this.fixed.readInt32BE(14);
        if (length < 0) throw new Error('a COPY row holds no bytes');
        this.rowLeft = length;
        this.inRow = true;
      }
      const n = Math.min(this.rowLeft, chunk.length - at);
      // A view of pg's buffer, valid only during the call: pg reuses the buffer CopyData messages are cut from.
      if (n > 0) this.onBytes(chunk.subarray(at, at + n));
      this.rowLeft -= n;
      this.size += n;
      this.expectedOffset += n;
      at += n;
      if (this.rowLeft === 0) {
        this.rows += 1;
        this.inRow = false;
        this.fixedGot = 0;
      }
    }
  }

  finish(): void {
    if (!this.ended || this.inRow || this.fixedGot !== 0) throw new Error('binary COPY stream ended early');
  }
}

/**
 * One COPY statement, submitted to pg as a query object of its own (pg calls these handlers) and awaited by
 * kysely like pg's own results: kysely hands the compiled SQL to the pooled client's `query`, which runs any
 * object with a `submit` method as the query.
 */
class CopyOutQuery implements PromiseLike<{ command: string; rowCount: number; rows: never[] }> {
  private readonly done: Promise<{ command: string; rowCount: number; rows: never[] }>;
  private settle!: (error: Error | null) => void;
  private failed: Error | null = null;

  constructor(
    private readonly text: string,
    private readonly parser: RowParser,
  ) {
    this.done = new Promise((resolve, reject) => {
      let settled = false;
      this.settle = (error) => {
        if (settled) return;
        settled = true;
        if (error) reject(error);
        else resolve({ command: 'COPY', rowCount: parser.rows, rows: [] });
      };
    });
  }

  submit(connection: PgConnection): void {
    connection.query(this.text);
  }

  handleCopyData(message: PgMessage): void {
    if (this.failed || !message.chunk) return;
    try {
      this.parser.push(message.chunk);
    } catch (e) {
      this.failed = e as Error;
    }
  }

  handleCommandComplete(): void {
    if (this.failed) return;
    try {
      this.parser.finish();
    } catch (e) {
      this.failed = e as Error;
    }
  }

  handleError(error: Error): void {
    // A lost connection sends no ReadyForQuery: settle now, as pg's own queries do.
    this.settle(error);
  }

  handleReadyForQuery(): void {
    this.settle(this.failed);
  }

  // Messages a COPY TO does not send; pg calls these only for other statements.
  handleRowDescription(): void {}
  handleDataRow(): void {}
  handleEmptyQuery(): void {
    this.failed = new Error('empty COPY statement');
  }
  handleCopyInResponse(): void {
    this.failed = new Error('COPY FROM where COPY TO was sent');
  }
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

/**
 * Runs `select`, a query of `(offset int8, bytes bytea)` rows whose offsets start at `from` and follow each other,
 * through `COPY (select) TO STDOUT (FORMAT binary)` on one of `db`'s pooled connections, handing the rows' bytes to
 * `onBytes` in order as they arrive, as views valid only during the call (copy what is kept); resolves with the
 * number of bytes once the statement is done. `select` is inlined in the COPY statement (COPY takes no
 * parameters): callers build it from numbers only.
 */
export async function copyBytes(
  db: Db,
  select: string,
  from: number,
  onBytes: (view: Buffer) => void,
): Promise<number> {
  const parser = new RowParser(from, onBytes);
  const query = new CopyOutQuery(`COPY (${select}) TO STDOUT (FORMAT binary)`, parser);
  const compiled = CompiledQuery.raw('');
  await db.executeQuery({ ...compiled, sql: query as unknown as string });
  return parser.size;
}
