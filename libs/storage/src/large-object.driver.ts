import { Readable } from 'node:stream';
import { sql } from 'kysely';
import type { Db, Tx } from '@strata/db';
import { assertKey, type BlobStorage, type ByteRange } from './blob-storage';
import { streamed } from './reclaim';

/** Bytes read per statement while streaming. */
const SLICE = 4 * 1024 * 1024;
/** Bytes sent per statement while writing: small, since pg encodes a bytea parameter as text on the way. */
const WRITE_SLICE = 1024 * 1024;

function enoent(key: string): NodeJS.ErrnoException {
  const e: NodeJS.ErrnoException = new Error(`no object at ${key}`);
  e.code = 'ENOENT';
  return e;
}

/**
 * Blob bytes in PostgreSQL large objects, one per key, tracked in `storage_objects`. A write streams slices
 * into the object with `lo_put` (each statement commits, so no connection is held while a client sends);
 * the object counts only once marked complete. Compose concatenates server-side inside the caller's
 * transaction, so an assembled blob becomes visible exactly when the row naming it commits.
 */
export class LargeObjectDriver implements BlobStorage {
  readonly driver = 'postgres' as const;
  readonly transactional = true;

  constructor(private readonly db: Db) {}

  async init(): Promise<void> {
    // Writes that never completed (a process killed mid-write) leave rows that no upload references.
    await sql`DELETE FROM storage_objects WHERE NOT complete AND created_at < now() - interval '1 day'`.execute(
      this.db,
    );
  }

  /** Every write commits in PostgreSQL, so it is durable however it was asked for: this only checks they exist. */
  async sync(keys: readonly string[]): Promise<void> {
    for (const key of keys) await this.object(assertKey(key));
  }

  async write(key: string, source: AsyncIterable<Buffer>): Promise<number> {
    assertKey(key);
    const created = await sql<{ loid: number }>`
      INSERT INTO storage_objects (key, loid) VALUES (${key}, lo_create(0)) RETURNING loid`.execute(this.db);
    const loid = created.rows[0]!.loid;
    let size = 0;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async (): Promise<void> => {
      if (pendingBytes === 0) return;
      const slice = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
      await sql`SELECT lo_put(${loid}::oid, ${size}::bigint, ${slice})`.execute(this.db);
      size += pendingBytes;
      pending = [];
      pendingBytes = 0;
    };
    try {
      for await (const chunk of source) {
        pending.push(chunk);
        pendingBytes += chunk.length;
        streamed(chunk.length);
        if (pendingBytes >= WRITE_SLICE) await flush();
      }
      await flush();
      await sql`UPDATE storage_objects SET size = ${size}, complete = true WHERE key = ${key}`.execute(
        this.db,
      );
    } catch (e) {
      await this.delete(key).catch(() => undefined);
      throw e;
    }
    return size;
  }

  async compose(key: string, parts: readonly string[], tx?: Tx): Promise<void> {
    assertKey(key);
    parts.forEach(assertKey);
    const result = await sql<{ n: number }>`
      WITH src AS (
        SELECT array_agg(o.loid ORDER BY p.ord) AS loids, sum(o.size) AS size, count(*) AS n
        FROM unnest(${sql.val(parts)}::text[]) WITH ORDINALITY AS p(key, ord)
        JOIN storage_objects o ON o.key = p.key AND o.complete
      )
      INSERT INTO storage_objects (key, loid, size, complete)
      SELECT ${key}, strata_lo_concat(src.loids), src.size, true FROM src WHERE src.n = ${parts.length}
      RETURNING 1 AS n`.execute(tx ?? this.db);
    if (result.rows.length !== 1) throw new Error(`failed to compose ${key}: a part is missing`);
  }

  private async object(key: string): Promise<{ loid: number; size: number }> {
    assertKey(key);
    const r = await sql<{ loid: number; size: number }>`
      SELECT loid, size FROM storage_objects WHERE key = ${key} AND complete`.execute(this.db);
    const row = r.rows[0];
    if (!row) throw enoent(key);
    return row;
  }

  async read(key: string, range?: ByteRange): Promise<Readable> {
    const { loid, size } = await this.object(key);
    const db = this.db;
    const from = range?.start ?? 0;
    const to = range ? Math.min(range.end, size - 1) : size - 1;
    async function* slices(): AsyncGenerator<Buffer> {
      for (let off = from; off <= to; off += SLICE) {
        const len = Math.min(SLICE, to - off + 1);
        const r = await sql<{ b: Buffer }>`SELECT lo_get(${loid}::oid, ${off}::bigint, ${len}) AS b`.execute(
          db,
        );
        const b = r.rows[0]?.b;
        if (!b || b.length !== len) throw new Error(`failed to read ${key}: large object ${loid} is short`);
        yield b;
      }
    }
    return Readable.from(slices(), { objectMode: false });
  }

  async size(key: string): Promise<number | null> {
    try {
      return (await this.object(key)).size;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async delete(key: string): Promise<void> {
    assertKey(key);
    await sql`DELETE FROM storage_objects WHERE key = ${key}`.execute(this.db);
  }

  async check(): Promise<void> {
    await sql`SELECT 1 FROM storage_objects LIMIT 1`.execute(this.db);
  }
}
