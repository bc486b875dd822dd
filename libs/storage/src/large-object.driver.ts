import { Readable } from 'node:stream';
import { sql } from 'kysely';
import type { Db, Tx } from '@strata/db';
import {
  assertKey,
  type BlobStorage,
  type ByteRange,
  type MaintenanceReport,
  type ObjectReader,
} from './blob-storage';
import { copyBytes } from './copy-out';
import { loPut } from './lo-put';
import { streamed } from './reclaim';

/** Bytes per row of a read's COPY: the most pg holds of one message at a time. */
const ROW = 64 * 1024;
/**
 * The read size offered to senders. Each read is a statement, with a fixed cost (a backend woken, a plan) that
 * must stay small beside its bytes; a sender holds two such pieces per download.
 */
const READ_PIECE = 512 * 1024;
/** Bytes per statement of a streamed read (`read`), and what such a stream buffers ahead of its consumer. */
const STREAM_PIECE = 256 * 1024;
/** Bytes sent per statement while writing: a whole number of large-object pages (2 KiB). */
const WRITE_SLICE = 1024 * 1024;
/** Slices of one write in flight at once, each on its own connection. */
const WRITE_DEPTH = 3;

/**
 * By default, an incomplete object whose large object has not grown for this long is a write whose writer died: a
 * live one sends a 1 MiB slice far more often (a client silent for STRATA_CLIENT_IDLE_TIMEOUT is cut, and its
 * write removes its own object).
 */
const ABANDONED_AFTER_MS = 15 * 60 * 1000;

export interface LargeObjectOptions {
  /** How long an incomplete object's large object must not have grown before `maintain` removes it. */
  readonly abandonedAfterMs?: number;
}
/** Tables vacuumed by `maintain`, and the dead rows past which one is: autovacuum's rule (50 + 20% of the live). */
const VACUUMED = ['pg_largeobject', 'pg_largeobject_metadata', 'storage_objects'] as const;
const VACUUM_BASE = 50;
const VACUUM_SCALE = 0.2;

function enoent(key: string): NodeJS.ErrnoException {
  const e: NodeJS.ErrnoException = new Error(`no object at ${key}`);
  e.code = 'ENOENT';
  return e;
}

/** A run of an object's bytes: a large object, from its start. */
interface Segment {
  readonly loid: number;
  readonly size: number;
}

interface StoredObject {
  readonly size: number;
  readonly segments: readonly Segment[];
}

/** A segment placed in its object: `base` is where its first byte sits. */
interface Placed extends Segment {
  readonly base: number;
}

/**
 * Positional reads of an object: each read is one COPY statement of the bytes asked for, whose rows are copied
 * straight into the caller's buffer as they arrive, on whichever pooled connection is free. Reads may run at once
 * (a sender reading ahead gets its pieces from several backends in parallel); nothing is buffered here and no
 * connection is held between reads, so a download whose client stops reading holds only the caller's buffers.
 */
class LargeObjectReader implements ObjectReader {
  private readonly placed: readonly Placed[];
  readonly size: number;
  readonly pieceSize = READ_PIECE;

  constructor(
    private readonly db: Db,
    private readonly key: string,
    object: StoredObject,
  ) {
    let base = 0;
    this.placed = object.segments.map((segment) => {
      const p = { ...segment, base };
      base += segment.size;
      return p;
    });
    this.size = object.size;
  }

  /** Reads within the segment holding `position`; a read across its end stops there, and the caller asks again. */
  async read(buffer: Buffer, length: number, position: number): Promise<number> {
    const segment = this.placed.find((p) => position >= p.base && position < p.base + p.size);
    if (!segment) return 0;
    const start = position - segment.base;
    const n = Math.min(length, buffer.length, segment.size - start);
    if (n <= 0) return 0;
    const end = start + n - 1;
    let at = 0;
    const got = await copyBytes(
      this.db,
      `SELECT o, lo_get(${int(segment.loid)}::oid, o, least(${ROW}, ${int(end)} - o + 1)::int)
       FROM generate_series(${int(start)}::bigint, ${int(end)}::bigint, ${ROW}) AS o`,
      start,
      (view) => {
        if (at + view.length > n) throw new Error(`failed to read ${this.key}: more bytes than asked for`);
        view.copy(buffer, at);
        at += view.length;
      },
    );
    if (got !== n) throw new Error(`failed to read ${this.key}: large object ${segment.loid} is short`);
    streamed(n);
    return n;
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/**
 * Bytes [from, to] of an object as a stream, one positional read of a fresh buffer at a time, asked for only when
 * the consumer wants more: what it buffers is bounded by its high-water mark and one piece.
 */
class ObjectStream extends Readable {
  private at: number;
  private reading = false;

  constructor(
    private readonly reader: ObjectReader,
    from: number,
    private readonly to: number,
  ) {
    super({ highWaterMark: STREAM_PIECE });
    this.at = from;
  }

  override _read(): void {
    if (this.reading) return;
    if (this.at > this.to) {
      this.push(null);
      return;
    }
    this.reading = true;
    const length = Math.min(STREAM_PIECE, this.to - this.at + 1);
    const buffer = Buffer.allocUnsafe(length);
    this.reader.read(buffer, length, this.at).then(
      (n) => {
        this.reading = false;
        if (this.destroyed) return;
        if (n === 0) {
          this.destroy(new Error(`object ends at ${this.at}, before byte ${this.to}`));
          return;
        }
        this.at += n;
        // push() returning true: the consumer wants more now, and _read is not called again by itself.
        if (this.push(n === length ? buffer : buffer.subarray(0, n))) this._read();
      },
      (e: unknown) => {
        this.reading = false;
        this.destroy(e as Error);
      },
    );
  }
}

/** An integer for SQL text (COPY takes no parameters). */
function int(n: number): string {
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`not an offset or oid: ${n}`);
  return String(n);
}

/**
 * Blob bytes in PostgreSQL large objects, tracked in `storage_objects`. A write streams slices into a new large
 * object with `lo_put` (each statement commits, so no connection is held while a client sends); the object counts
 * only once marked complete. Compose makes a row that names its parts' large objects in order, inside the caller's
 * transaction, so an assembled blob becomes visible exactly when the row naming it commits and no byte is copied;
 * a large object goes with the last row that names it (migration 0008). Reads are positional: one binary COPY
 * statement per piece asked for, in rows of 64 KiB copied into the reader's buffer.
 */
export class LargeObjectDriver implements BlobStorage {
  readonly driver = 'postgres' as const;

  /** Incomplete objects seen by `maintain`, with their large object's size and since when it was that size. */
  private readonly stalled = new Map<string, { readonly size: number; readonly since: number }>();

  private readonly abandonedAfterMs: number;

  constructor(
    private readonly db: Db,
    options: LargeObjectOptions = {},
  ) {
    this.abandonedAfterMs = options.abandonedAfterMs ?? ABANDONED_AFTER_MS;
  }

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
    // Slices on their way to the server, each on a connection of its own, while the next ones arrive. Slices cover
    // whole 2 KiB pages of the large object, so no two of them (in their own transactions) write the same page.
    const inFlight = new Set<Promise<void>>();
    const failed: { error: Error | null } = { error: null };
    const send = async (bytes: Buffer[], length: number): Promise<void> => {
      const offset = size;
      size += length;
      while (inFlight.size >= WRITE_DEPTH) await Promise.race(inFlight);
      if (failed.error) throw failed.error;
      const put: Promise<void> = loPut(this.db, loid, offset, bytes).then(
        () => void inFlight.delete(put),
        (e: unknown) => {
          inFlight.delete(put);
          failed.error ??= e instanceof Error ? e : new Error(String(e));
        },
      );
      inFlight.add(put);
    };
    try {
      for await (const chunk of source) {
        streamed(chunk.length);
        let rest = chunk;
        while (pendingBytes + rest.length >= WRITE_SLICE) {
          const take = WRITE_SLICE - pendingBytes;
          pending.push(rest.subarray(0, take));
          rest = rest.subarray(take);
          const slice = pending;
          pending = [];
          pendingBytes = 0;
          await send(slice, WRITE_SLICE);
        }
        if (rest.length > 0) {
          pending.push(rest);
          pendingBytes += rest.length;
        }
      }
      if (pendingBytes > 0) await send(pending, pendingBytes);
      await Promise.all(inFlight);
      if (failed.error) throw failed.error;
      // Every slice has committed: this commit's WAL flush covers theirs.
      await sql`UPDATE storage_objects SET size = ${size}, complete = true WHERE key = ${key}`.execute(
        this.db,
      );
    } catch (e) {
      await Promise.all(inFlight);
      await this.delete(key).catch(() => undefined);
      throw e;
    }
    return size;
  }

  /** Every write commits in PostgreSQL before it resolves: nothing is ever left to flush. */
  unsyncedMark(): null {
    return null;
  }

  async composeThen<T>(key: string, parts: readonly string[], publish: (tx: Tx) => Promise<T>): Promise<T> {
    return this.db.transaction().execute(async (tx) => {
      await this.compose(key, parts, tx);
      return publish(tx);
    });
  }

  async compose(key: string, parts: readonly string[], tx?: Tx): Promise<void> {
    assertKey(key);
    parts.forEach(assertKey);
    // FOR KEY SHARE: a part being deleted meanwhile is waited for (and then missing); one not yet being deleted
    // cannot be until this commits, so its large objects are still named when the part's row goes.
    const result = await sql<{ n: number }>`
      WITH locked AS (
        SELECT o.key, o.loid, o.size, o.parts, o.part_sizes FROM storage_objects o
        WHERE o.key = ANY(${sql.val(parts)}::text[]) AND o.complete
        FOR KEY SHARE
      ), wanted AS (
        SELECT p.ord, l.* FROM unnest(${sql.val(parts)}::text[]) WITH ORDINALITY AS p(key, ord)
        JOIN locked l ON l.key = p.key
      ), segments AS (
        SELECT w.ord, 0::bigint AS sub, w.loid, w.size FROM wanted w WHERE w.loid IS NOT NULL
        UNION ALL
        SELECT w.ord, s.sub, s.loid, s.size FROM wanted w
        CROSS JOIN LATERAL unnest(w.parts, w.part_sizes) WITH ORDINALITY AS s(loid, size, sub)
        WHERE w.loid IS NULL
      ), src AS (
        SELECT
          coalesce(array_agg(s.loid ORDER BY s.ord, s.sub) FILTER (WHERE s.size > 0), '{}') AS loids,
          coalesce(array_agg(s.size ORDER BY s.ord, s.sub) FILTER (WHERE s.size > 0), '{}') AS sizes,
          coalesce(sum(s.size), 0) AS size
        FROM segments s
      )
      INSERT INTO storage_objects (key, loid, size, complete, parts, part_sizes)
      SELECT ${key}, NULL, src.size, true, src.loids, src.sizes FROM src
      WHERE (SELECT count(*) FROM wanted) = ${parts.length}
      RETURNING 1 AS n`.execute(tx ?? this.db);
    if (result.rows.length !== 1) throw new Error(`failed to compose ${key}: a part is missing`);
  }

  private async object(key: string): Promise<StoredObject> {
    assertKey(key);
    const r = await sql<{
      loid: number | string | null;
      size: number;
      parts: (number | string)[] | null;
      part_sizes: (number | string)[] | null;
    }>`
      SELECT loid, size, array_to_json(parts) AS parts, array_to_json(part_sizes) AS part_sizes
      FROM storage_objects WHERE key = ${key} AND complete`.execute(this.db);
    const row = r.rows[0];
    if (!row) throw enoent(key);
    if (row.loid !== null) return { size: row.size, segments: [{ loid: Number(row.loid), size: row.size }] };
    const sizes = row.part_sizes ?? [];
    return {
      size: row.size,
      segments: (row.parts ?? []).map((loid, i) => ({ loid: Number(loid), size: Number(sizes[i]) })),
    };
  }

  async read(key: string, range?: ByteRange): Promise<Readable> {
    const reader = await this.openReader(key);
    const from = range?.start ?? 0;
    const to = range ? Math.min(range.end, reader.size - 1) : reader.size - 1;
    return new ObjectStream(reader, from, to);
  }

  async openReader(key: string): Promise<ObjectReader> {
    return new LargeObjectReader(this.db, key, await this.object(key));
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

  /**
   * Removes incomplete objects whose large object stopped growing at least `abandonedAfterMs` ago (seen by two runs
   * of this process at least that far apart: a write under way on any replica grows between them), then large
   * objects of Strata's role that no row names (vacuumlo's rule; a row and its large object are created in one
   * statement and a large object is unlinked with its last row, so no live write has one), then vacuums the tables
   * whose dead rows warrant it. VACUUM needs the table's owner, the database's owner or a superuser: tables this
   * role may not vacuum are reported, not attempted.
   */
  async maintain(): Promise<MaintenanceReport> {
    const now = Date.now();
    const incomplete = await sql<{ key: string; size: number | string }>`
      SELECT key, lo_lseek64(lo_open(loid, 262144), 0, 2) AS size FROM storage_objects
      WHERE NOT complete AND loid IS NOT NULL AND created_at < now() - make_interval(secs => ${this.abandonedAfterMs / 1000})`.execute(
      this.db,
    );
    const seen = new Set<string>();
    const abandoned: string[] = [];
    for (const row of incomplete.rows) {
      const size = Number(row.size);
      seen.add(row.key);
      const before = this.stalled.get(row.key);
      if (!before || before.size !== size) this.stalled.set(row.key, { size, since: now });
      else if (now - before.since >= this.abandonedAfterMs) abandoned.push(row.key);
    }
    for (const key of this.stalled.keys()) if (!seen.has(key)) this.stalled.delete(key);
    let abandonedWrites = 0;
    if (abandoned.length > 0) {
      const removed = await sql`
        DELETE FROM storage_objects WHERE key = ANY(${sql.val(abandoned)}::text[]) AND NOT complete`.execute(
        this.db,
      );
      abandonedWrites = Number(removed.numAffectedRows ?? 0);
      for (const key of abandoned) this.stalled.delete(key);
    }
    const orphans = await sql<{ n: number | string }>`
      WITH unlinked AS (
        SELECT lo_unlink(m.oid) FROM pg_largeobject_metadata m
        WHERE m.lomowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
          AND NOT EXISTS (SELECT 1 FROM storage_objects o WHERE o.loid = m.oid)
          AND NOT EXISTS (SELECT 1 FROM storage_objects o WHERE o.parts @> ARRAY[m.oid])
      )
      SELECT count(*) AS n FROM unlinked`.execute(this.db);
    const vacuumed: string[] = [];
    const refused: string[] = [];
    for (const table of await this.tablesToVacuum()) {
      if (!table.allowed) {
        refused.push(table.name);
        continue;
      }
      // Outside any transaction (VACUUM refuses to run in one): kysely runs a lone statement in autocommit.
      await sql`VACUUM (ANALYZE) ${sql.table(table.name)}`.execute(this.db);
      vacuumed.push(table.name);
    }
    return { abandonedWrites, orphans: Number(orphans.rows[0]?.n ?? 0), vacuumed, refused };
  }

  /** The tables of VACUUMED whose dead rows warrant a vacuum, and whether this role may run it. */
  private async tablesToVacuum(): Promise<{ name: string; allowed: boolean }[]> {
    const version = await sql<{
      v: number | string;
    }>`SELECT current_setting('server_version_num') AS v`.execute(this.db);
    // PostgreSQL 17 added the MAINTAIN privilege, which lets a role vacuum a table it does not own.
    const maintain =
      Number(version.rows[0]?.v ?? 0) >= 170000 ? sql`OR has_table_privilege(c.oid, 'MAINTAIN')` : sql``;
    const r = await sql<{ name: string; allowed: boolean }>`
      SELECT c.relname AS name,
        (pg_has_role(c.relowner, 'USAGE')
          OR pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')
          OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) ${maintain}) AS allowed
      FROM pg_stat_all_tables s JOIN pg_class c ON c.oid = s.relid
      WHERE s.relid = ANY(ARRAY[${sql.join(VACUUMED.map((t) => sql`${t}::regclass`))}])
        AND s.n_dead_tup > ${VACUUM_BASE}::float8 + ${VACUUM_SCALE}::float8 * s.n_live_tup
      ORDER BY c.relname`.execute(this.db);
    return r.rows;
  }

  async check(): Promise<void> {
    await sql`SELECT 1 FROM storage_objects LIMIT 1`.execute(this.db);
  }
}
