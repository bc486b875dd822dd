import { randomUUID } from 'node:crypto';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { sql } from 'kysely';
import { Batcher, type Db, type PreparedStatements, type Tx, type UploadRow } from '@strata/db';
import {
  type Digester,
  HashWorker,
  NativeHashCache,
  nativeDigester,
  ResumableSha256,
  tapAsync,
  type WorkerDigester,
} from '@strata/digest';
import { EventStore, type NewEvent, type RequestMeta, type StatementEvent } from '@strata/events';
import { type ParsedDigest, parseDigest, RegistryError } from '@strata/oci';
import { type BlobStorage, blobKey, bootId, chunkKey } from '@strata/storage';
import type { RepositoryStore } from './repository.store';

/** How many times faster node's native SHA-256 runs than hash-wasm's on these machines (1750 vs 280 MB/s). */
const WASM_TO_NATIVE_SPEED = 6;
/** How long an upload must go without a chunk here before its saved hash state is brought up to date. */
const ADVANCE_WHEN_IDLE_MS = 1000;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface UploadStatus {
  readonly id: string;
  readonly repository: string;
  /** Bytes received so far. */
  readonly size: number;
}

export interface ContentRange {
  readonly start: number;
  readonly end: number;
}

export interface CommittedBlob {
  readonly digest: string;
  readonly size: number;
}

export interface UploadOptions {
  /** A blob of at most this many bytes that arrives in one request is stored in its row; 0: never. */
  readonly inlineMax: number;
  /** Answer a chunk once written, its flush left to the background and the commit (default true). */
  readonly deferChunkSync?: boolean;
}

interface Chunk {
  readonly offset: number;
  readonly size: number;
  readonly storage_key: string;
  readonly unsynced_boot: string | null;
}

/** What the publishing part of a commit leaves: the chunks to remove, and the copy it made, if any. */
interface Published {
  readonly chunks: Chunk[];
  readonly created: boolean;
  readonly key: string | null;
}

/** A blob ready to be made visible: what `publishOne` and `publishMany` write. */
interface Publication {
  readonly repositoryId: number;
  /** The session it completes, or null for a POST that carries the blob itself. */
  readonly uploadId: string | null;
  readonly digest: string;
  readonly size: number;
  /** Exactly one of `key` (the bytes in storage) and `content` (the bytes in the row) is set. */
  readonly key: string | null;
  readonly content: Buffer | null;
  /** In order; the last is `upload.committed`, whose `existed` the statement sets. */
  readonly events: readonly NewEvent[];
}

interface PublishOutcome {
  /** The session was still there to complete (always, for a POST carrying the blob). */
  readonly accepted: boolean;
  /** This publication inserted the blob's row, rather than finding it. */
  readonly created: boolean;
}

interface StartRequest {
  readonly id: string;
  readonly repositoryId: number;
  readonly repository: string;
  readonly meta: RequestMeta;
}

/** Which events a publication writes, as a short name: the statements' text depends on nothing else. */
function eventShape(p: Publication): string {
  return p.events.map((e) => e.type.split('.')[1]).join('_');
}

/**
 * How the hottest small writes (session starts, blobs held in their row) are batched: a lone request goes at
 * once; while a statement is under way, requests wait and then go together, up to 64 in one statement.
 */
const BATCHING = { maxBatch: 64, maxInFlight: 1 };
/**
 * Batches of up to this many are prepared, one statement per size and shape; larger ones, whose text grows with
 * every item, are planned each time, so each pooled connection keeps a bounded number of statements.
 */
const PREPARED_BATCH_MAX = 4;

/** A statement that failed before it could commit, because of a conflict another statement caused. */
function lostConflict(e: unknown): boolean {
  const code = (e as { code?: unknown }).code;
  // 23: integrity constraint violation; 40: transaction rollback (serialization failure, deadlock).
  return typeof code === 'string' && (code.startsWith('23') || code.startsWith('40'));
}

/** `Range` header value for an upload of `size` bytes: the spec's inclusive `0-<last byte>`. */
export function uploadRange(size: number): string {
  return `0-${Math.max(size - 1, 0)}`;
}

async function* emptyIterable(): AsyncGenerator<Buffer> {}

/**
 * Reads `body` until more than `limit` bytes have come. A body that ended by then is returned whole (`rest`
 * null); otherwise `rest` streams all of it, the bytes already read first, so at most `limit` plus one read's
 * worth is ever held.
 */
function replay(chunks: readonly Buffer[]): AsyncIterable<Buffer> {
  return Readable.from(chunks, { objectMode: false }) as AsyncIterable<Buffer>;
}

async function readHead(
  body: AsyncIterable<Buffer>,
  limit: number,
): Promise<{ head: Buffer; rest: AsyncIterable<Buffer> | null }> {
  if (limit <= 0) return { head: Buffer.alloc(0), rest: body };
  const it = body[Symbol.asyncIterator]();
  const read: Buffer[] = [];
  let bytes = 0;
  while (bytes <= limit) {
    const next = await it.next();
    if (next.done) return { head: Buffer.concat(read, bytes), rest: null };
    read.push(next.value);
    bytes += next.value.length;
  }
  async function* rest(): AsyncGenerator<Buffer> {
    yield* read.splice(0);
    for (;;) {
      const next = await it.next();
      if (next.done) return;
      yield next.value;
    }
  }
  return { head: Buffer.alloc(0), rest: rest() };
}

/**
 * Blob uploads: sessions, chunks and commits. Each chunk is streamed to its own storage key and accepted by a
 * row update conditional on the offset it started from, so of two racing chunks exactly one wins and the
 * loser's bytes are never seen. The commit is an insert under the blobs' unique digest: every identical
 * concurrent upload succeeds, and its blob is complete before any of them answers.
 */
export class UploadService {
  private readonly events = new EventStore();
  private readonly advancing = new Map<string, Promise<void>>();
  private readonly hashes = new HashWorker();
  private readonly advanceAgain = new Set<string>();
  private readonly nativeHashes = new NativeHashCache<WorkerDigester>();
  private readonly idleTimers = new Map<string, NodeJS.Timeout>();
  private readonly starts = new Batcher<StartRequest, true>((batch) => this.startMany(batch), BATCHING);
  private readonly inlinePublications = new Batcher<Publication, PublishOutcome>(
    (batch) => this.publishMany(batch),
    BATCHING,
  );

  constructor(
    private readonly db: Db,
    private readonly storage: BlobStorage,
    private readonly repositories: RepositoryStore,
    private readonly logger: Logger,
    private readonly prepared: PreparedStatements,
    private readonly options: UploadOptions = { inlineMax: 0 },
  ) {}

  /** Stops the hashing worker once background catch-ups finish; the service is not used after. */
  async close(): Promise<void> {
    for (const timer of this.idleTimers.values()) clearTimeout(timer);
    this.idleTimers.clear();
    await Promise.all(this.advancing.values());
    this.nativeHashes.clear();
    await this.hashes.close();
  }

  async start(repository: string, meta: RequestMeta): Promise<UploadStatus> {
    const repositoryId = await this.repositories.ensure(repository);
    const id = randomUUID();
    await this.starts.submit({ id, repositoryId, repository, meta });
    return { id, repository, size: 0 };
  }

  /** Sessions and their `upload.started` events, in one statement however many there are. */
  private async startMany(batch: readonly StartRequest[]): Promise<true[]> {
    const ids = batch.map((s) => s.id);
    const repositoryIds = batch.map((s) => s.repositoryId);
    const statement = sql`WITH upload AS (
          INSERT INTO uploads (id, repository_id) SELECT * FROM unnest(${ids}::uuid[], ${repositoryIds}::bigint[])
        )
        ${this.events.insertion(
          batch.map(({ id, repository, meta }) => ({
            type: 'upload.started',
            repository,
            subject: id,
            payload: { upload_id: id },
            meta,
          })),
        )}`.compile(this.db);
    if (batch.length <= PREPARED_BATCH_MAX)
      await this.prepared.run(`upload_start_x${batch.length}`, statement);
    else await this.db.executeQuery(statement);
    return batch.map(() => true);
  }

  private async load(repository: string, id: string): Promise<UploadRow> {
    const repositoryId = await this.repositories.find(repository);
    if (!UUID_RE.test(id) || repositoryId === null)
      throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { upload: id });
    const row = await this.prepared.first<UploadRow>(
      'upload_load',
      // Named columns, not *: a prepared plan must keep its result shape when a migration adds a column.
      `SELECT id, repository_id, started_at, updated_at, size, hash_state, hash_offset, prefix_digest
       FROM uploads WHERE id = $1 AND repository_id = $2`,
      [id, repositoryId],
    );
    if (!row) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { upload: id });
    return row;
  }

  async status(repository: string, id: string): Promise<UploadStatus> {
    const row = await this.load(repository, id);
    return { id, repository, size: row.size };
  }

  /**
   * Appends `body` at the upload's current offset. With a `range`, it must start there (else 416 with the
   * current range) and match the body's length.
   */
  async append(
    repository: string,
    id: string,
    body: AsyncIterable<Buffer>,
    range: ContentRange | null,
    meta: RequestMeta,
  ): Promise<UploadStatus> {
    const row = await this.load(repository, id);
    if (range && range.start !== row.size) throw this.rangeError(repository, id, row.size);
    const size = await this.appendAt(repository, row, body, range, meta);
    return { id, repository, size };
  }

  private rangeError(repository: string, id: string, size: number): RegistryError {
    return new RegistryError(
      'RANGE_INVALID',
      { upload: id, size },
      {
        Location: `/v2/${repository}/blobs/uploads/${id}`,
        Range: uploadRange(size),
        'Docker-Upload-UUID': id,
      },
    );
  }

  /** Streams one chunk to storage and accepts it; returns the upload's new size. */
  private async appendAt(
    repository: string,
    row: UploadRow,
    body: AsyncIterable<Buffer>,
    range: ContentRange | null,
    meta: RequestMeta,
  ): Promise<number> {
    const offset = row.size;
    // Bytes are hashed natively as they arrive when this process holds the hash of all bytes before them: from
    // offset 0, or from where the last chunk it appended ended. The row then holds the digest of everything so
    // far. A chunk that arrives at a replica without that hash is only stored, and the saved resumable state
    // catches up off the request path (advanceHash).
    // The hash runs on the hash worker, beside the event loop that receives the bytes.
    const native = offset === 0 ? this.hashes.native('sha256') : this.nativeHashes.forkAt(row.id, offset);
    // The chunk is answered once its bytes are written; their flush to disk finishes in the background, and the
    // commit makes sure of it before the blob becomes visible (`syncChunks`).
    const unsyncedBoot =
      this.storage.transactional || this.options.deferChunkSync === false ? null : bootId();
    let kept = false;
    try {
      const key = chunkKey(row.id, offset);
      // The digest is asked for as soon as the body ends, so the worker finishes while the bytes are flushed.
      let digested: Promise<string | null> | undefined;
      const digest = (hash: WorkerDigester): Promise<string | null> =>
        hash.digest().catch((err: unknown) => {
          this.logger.warn({ err, upload: row.id }, 'failed to hash chunk as it arrived');
          return null;
        });
      const written = await this.storage.write(
        key,
        native
          ? tapAsync(body, native, () => {
              digested = digest(native);
            })
          : body,
        { durable: unsyncedBoot === null, blobOffset: offset },
      );
      if (written === 0) {
        await this.storage.delete(key);
        if (range && range.end >= range.start)
          throw new RegistryError('RANGE_INVALID', { expected: range, received: 0 });
        return offset;
      }
      if (range && range.end - range.start + 1 !== written) {
        await this.storage.delete(key);
        throw new RegistryError('RANGE_INVALID', {
          expected: range.end - range.start + 1,
          received: written,
        });
      }
      const size = offset + written;
      // Should the hash worker have stopped meanwhile, the chunk is kept unhashed and caught up from storage.
      const prefix = native ? await (digested ?? digest(native)) : null;
      let rows: { accepted: boolean }[];
      try {
        rows = await this.recordChunk(repository, row.id, offset, written, key, prefix, unsyncedBoot, meta);
      } catch (e) {
        await this.removeUnrecorded(row.id, key);
        throw e;
      }
      const accepted = rows[0]?.accepted === true;
      if (!accepted) {
        await this.storage.delete(key);
        const current = await this.db
          .selectFrom('uploads')
          .select('size')
          .where('id', '=', row.id)
          .executeTakeFirst();
        if (!current) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { upload: row.id });
        throw this.rangeError(repository, row.id, current.size);
      }
      if (native && prefix !== null) {
        this.nativeHashes.set(row.id, size, native);
        kept = true;
        // A single chunk from offset 0 (docker's one PATCH per layer) needs no state: its digest is in the row.
        if (offset > 0) this.advanceWhenIdle(row.id);
      } else this.scheduleAdvance(row.id);
      return size;
    } finally {
      if (native && !kept) native.drop();
    }
  }

  /** Accepts a stored chunk if the upload is still at `offset`: one statement, with its event. */
  private async recordChunk(
    repository: string,
    id: string,
    offset: number,
    written: number,
    key: string,
    prefix: string | null,
    unsyncedBoot: string | null,
    meta: RequestMeta,
  ): Promise<{ accepted: boolean }[]> {
    const size = offset + written;
    return this.prepared.run(
      'upload_chunk',
      sql<{ accepted: boolean }>`WITH upload AS (
          UPDATE uploads SET size = ${size}::bigint, updated_at = now(), prefix_digest = ${prefix}::text
          WHERE id = ${id}::uuid AND size = ${offset}::bigint
          RETURNING id
        ), chunk AS (
          INSERT INTO upload_chunks (upload_id, "offset", size, storage_key, unsynced_boot)
          SELECT id, ${offset}::bigint, ${written}::bigint, ${key}::text, ${unsyncedBoot}::text FROM upload
        ), event AS (
          ${this.events.insertion([
            {
              type: 'upload.chunk',
              repository,
              subject: id,
              payload: { upload_id: id, offset, size: written },
              meta,
              onlyIf: 'upload',
            },
          ])}
        )
        SELECT EXISTS (SELECT 1 FROM upload) AS accepted`.compile(this.db),
    );
  }

  /** The digest of a stored object, hashed here. */
  private async hashObject(key: string, algorithm: 'sha256' | 'sha512'): Promise<string> {
    const digester = nativeDigester(algorithm);
    for await (const b of await this.storage.read(key)) digester.update(b as Buffer);
    return digester.hex();
  }

  /** Removes a blob's bytes after its commit failed, unless the failure hid a commit that names them. */
  private async removeUnpublished(key: string): Promise<void> {
    try {
      const published = await this.db
        .selectFrom('blobs')
        .select('digest')
        .where('storage_key', '=', key)
        .executeTakeFirst();
      if (!published) await this.storage.delete(key);
    } catch (err) {
      this.logger.warn({ err, key }, 'failed to remove unpublished blob');
    }
  }

  /**
   * Removes a chunk's bytes after recording it failed, unless the failure hid a commit (a connection lost while
   * committing): the row then holds the key, and the bytes must stay.
   */
  private async removeUnrecorded(uploadId: string, key: string): Promise<void> {
    try {
      const recorded = await this.db
        .selectFrom('upload_chunks')
        .select('storage_key')
        .where('upload_id', '=', uploadId)
        .where('storage_key', '=', key)
        .executeTakeFirst();
      if (!recorded) await this.storage.delete(key);
    } catch (err) {
      this.logger.warn({ err, key }, 'failed to remove unrecorded chunk');
    }
  }

  /**
   * While chunks keep arriving here, their native hash is all that is needed, and hashing them again in
   * WebAssembly would only take a core from the upload. Once the upload pauses, its saved state catches up, so a
   * client that resumes on another replica finds it current.
   */
  private advanceWhenIdle(uploadId: string): void {
    clearTimeout(this.idleTimers.get(uploadId));
    const timer = setTimeout(() => {
      this.idleTimers.delete(uploadId);
      this.scheduleAdvance(uploadId);
    }, ADVANCE_WHEN_IDLE_MS);
    timer.unref();
    this.idleTimers.set(uploadId, timer);
  }

  private forget(uploadId: string): void {
    this.nativeHashes.delete(uploadId);
    clearTimeout(this.idleTimers.get(uploadId));
    this.idleTimers.delete(uploadId);
  }

  /**
   * Brings the upload's saved SHA-256 state up to its size in the background, once a second chunk shows the state
   * is needed. It runs while the client sends its next chunk, so hashing (WebAssembly, about 280 MB/s here) stays
   * off the request path. The saved state only moves forward, under a condition on the offset it started from, so
   * replicas advancing the same upload at once cannot store a wrong one.
   */
  private scheduleAdvance(uploadId: string): void {
    if (this.advancing.has(uploadId)) {
      this.advanceAgain.add(uploadId);
      return;
    }
    const run = async (): Promise<void> => {
      do {
        this.advanceAgain.delete(uploadId);
        await this.advanceHash(uploadId);
      } while (this.advanceAgain.has(uploadId));
    };
    this.advancing.set(
      uploadId,
      run()
        .catch((err: unknown) =>
          this.logger.warn({ err, upload: uploadId }, 'failed to advance upload hash state'),
        )
        .finally(() => this.advancing.delete(uploadId)),
    );
  }

  async advanceHash(uploadId: string): Promise<void> {
    const row = await this.db.selectFrom('uploads').selectAll().where('id', '=', uploadId).executeTakeFirst();
    if (!row || row.hash_offset >= row.size) return;
    const state = await this.hashes.continueOver(
      row.hash_state,
      this.storedBytes(uploadId, row.hash_offset, row.size),
    );
    await this.db
      .updateTable('uploads')
      .set({ hash_state: state, hash_offset: row.size })
      .where('id', '=', uploadId)
      .where('hash_offset', '=', row.hash_offset)
      .where('size', '>=', row.size)
      .execute();
  }

  /** A resumable SHA-256 over bytes [0, offset): the row's saved state, caught up from stored chunks. */
  private async resumeAt(row: UploadRow, offset: number): Promise<ResumableSha256> {
    const hasher = await ResumableSha256.create(row.hash_state);
    await this.feedStored(row.id, row.hash_offset, offset, hasher);
    return hasher;
  }

  private async chunks(uploadId: string): Promise<Chunk[]> {
    return this.db
      .selectFrom('upload_chunks')
      .select(['offset', 'size', 'storage_key', 'unsynced_boot'])
      .where('upload_id', '=', uploadId)
      .orderBy('offset')
      .execute();
  }

  /** Stored bytes [from, to) of an upload, in order. */
  private async *storedBytes(uploadId: string, from: number, to: number): AsyncGenerator<Buffer> {
    if (from >= to) return;
    for (const c of await this.chunks(uploadId)) {
      const end = c.offset + c.size;
      if (end <= from || c.offset >= to) continue;
      const start = Math.max(from, c.offset) - c.offset;
      const last = Math.min(to, end) - 1 - c.offset;
      for await (const b of await this.storage.read(c.storage_key, { start, end: last })) yield b as Buffer;
    }
  }

  /** Feeds stored bytes [from, to) of an upload to `digester`. */
  private async feedStored(uploadId: string, from: number, to: number, digester: Digester): Promise<void> {
    for await (const b of this.storedBytes(uploadId, from, to)) digester.update(b);
  }

  /**
   * Completes the upload: appends `body` if any, verifies `digest` over every byte, and makes the blob visible
   * in the repository. On a mismatch nothing becomes visible and the upload stays as it was.
   */
  async commit(
    repository: string,
    id: string,
    digest: string,
    body: AsyncIterable<Buffer> | null,
    meta: RequestMeta,
  ): Promise<CommittedBlob> {
    const parsed = parseDigest(digest);
    const { algorithm, hex } = parsed;
    if (body && this.options.inlineMax > 0) {
      // A small blob in one PUT (a config, say) is committed before the session is even read: one statement in
      // all. If that cannot be done (the session has bytes already, or does not exist, or the digest is wrong), the
      // bytes read so far are replayed through the general path below, which then gives the right answer.
      const repositoryId = UUID_RE.test(id) ? await this.repositories.find(repository) : null;
      if (repositoryId !== null) {
        const { head, rest } = await readHead(body, this.options.inlineMax);
        if (rest === null) {
          const done = await this.commitWhole(
            repository,
            repositoryId,
            id,
            parsed,
            replay([head]),
            meta,
            true,
          );
          if (done) return done;
          body = replay([head]);
        } else body = rest;
      }
    }
    let row = await this.load(repository, id);
    clearTimeout(this.idleTimers.get(id));
    if (body && row.size === 0)
      return this.commitWhole(repository, row.repository_id, id, parsed, body, meta);
    if (body) {
      const size = await this.appendAt(repository, row, body, null, meta);
      if (size !== row.size) row = await this.load(repository, id);
    }
    const advancing = this.advancing.get(id);
    if (advancing && algorithm === 'sha256') {
      // The state this replica is already computing is further along than the row says: wait rather than redo.
      this.advanceAgain.delete(id);
      await advancing;
      row = await this.load(repository, id);
    }
    const size = row.size;
    // Between the reads above and the commit, a cancel or a racing commit of the same upload may remove its
    // objects: whatever that breaks here, the answer is then that the upload is gone.
    const repositoryId = row.repository_id;
    const { chunks, created, key } = await this.unlessGone(id, repositoryId, digest, async () => {
      const chunks = await this.chunks(id);
      if (chunks.reduce((n, c) => n + c.size, 0) !== size) {
        // A PATCH of the same upload landed since its row was read: the client raced its own requests.
        const now = await this.load(repository, id);
        throw this.rangeError(repository, id, now.size);
      }
      const trusted = await this.syncChunks(id, chunks);
      const actual = await this.finalDigest(row, algorithm, trusted);
      if (actual !== hex) {
        throw new RegistryError('DIGEST_INVALID', {
          expected: digest,
          actual: `${algorithm}:${actual}`,
          size,
        });
      }
      const existing = await this.db
        .selectFrom('blobs')
        .select(['size'])
        .where('digest', '=', digest)
        .executeTakeFirst();
      let key: string | null = null;
      if (!existing && (!this.storage.transactional || chunks.length === 0)) {
        key = blobKey(hex);
        if (chunks.length === 0) await this.storage.write(key, emptyIterable());
        else
          await this.storage.compose(
            key,
            chunks.map((c) => c.storage_key),
          );
      }
      let created = false;
      try {
        created = await this.db.transaction().execute(async (tx) => {
          if (!existing && key === null) {
            // Identical commits wait for each other here, so only the first copies bytes inside the database;
            // the others find its row and link it. Waiting, not losing: every one of them still answers 201.
            await sql`SELECT pg_advisory_xact_lock(hashtextextended(${digest}, 0))`.execute(tx);
            const raced = await tx
              .selectFrom('blobs')
              .select('digest')
              .where('digest', '=', digest)
              .executeTakeFirst();
            if (!raced) {
              key = blobKey(hex);
              await this.storage.compose(
                key,
                chunks.map((c) => c.storage_key),
                tx,
              );
            }
          }
          const inserted = await this.publish(tx, repositoryId, digest, size, key);
          const removed = await tx
            .deleteFrom('uploads')
            .where('id', '=', id)
            .where('size', '=', size)
            .executeTakeFirst();
          if (removed.numDeletedRows !== 1n) {
            // Gone, or grown by a PATCH that landed meanwhile (the client raced its own requests): say which.
            const now = await tx.selectFrom('uploads').select('size').where('id', '=', id).executeTakeFirst();
            if (now) throw this.rangeError(repository, id, now.size);
            throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { upload: id });
          }
          await this.events.append(tx, {
            type: 'upload.committed',
            repository,
            subject: digest,
            payload: { upload_id: id, digest, size, existed: !inserted },
            meta,
          });
          return inserted;
        });
      } catch (e) {
        // Not a plain delete: a connection lost during COMMIT fails here too, after the row naming the key
        // may have committed.
        if (key !== null && !this.storage.transactional) await this.removeUnpublished(key);
        throw e;
      }
      return { chunks, created, key };
    });
    this.forget(id);
    // The upload's own bytes are no longer needed: a composed blob holds its own links or copy.
    await this.removeObjects([
      ...chunks.map((c) => c.storage_key),
      ...(created || key === null ? [] : [key]),
    ]);
    return { digest, size };
  }

  /**
   * Runs the part of a commit that reads and composes the upload's objects and publishes the blob. If it fails
   * once the upload's row is gone (cancelled, expired, committed by a racing PUT, each of which removes the
   * objects; or committed by this very call, its COMMIT's answer lost with the connection), the blob's link in
   * the repository settles it: linked, the commit stands, as a HEAD would show; not linked, the upload is
   * unknown, as a request a moment later would be told. A failure the check cannot settle is passed on.
   */
  private async unlessGone(
    id: string,
    repositoryId: number,
    digest: string,
    work: () => Promise<Published>,
  ): Promise<Published> {
    try {
      return await work();
    } catch (e) {
      let settled: 'linked' | 'gone' | null = null;
      try {
        const upload = await this.db
          .selectFrom('uploads')
          .select('id')
          .where('id', '=', id)
          .executeTakeFirst();
        if (upload === undefined) {
          const link = await this.db
            .selectFrom('repository_blobs')
            .select('digest')
            .where('repository_id', '=', repositoryId)
            .where('digest', '=', digest)
            .executeTakeFirst();
          settled = link === undefined ? 'gone' : 'linked';
        }
      } catch {
        throw e;
      }
      if (settled === 'gone') throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { upload: id });
      if (settled === 'linked') {
        this.logger.warn(
          { err: e, upload: id, digest },
          'commit failed, but the blob is linked in the repository: answered as committed',
        );
        // Whatever copy this call made is left to the catch above (only unpublished ones are removed).
        return { chunks: [], created: false, key: null };
      }
      throw e;
    }
  }

  /**
   * Makes every chunk of the upload durable before anything can point at it. False when some chunk was written,
   * not yet flushed, under another boot id (the writer's machine restarted since, or is another host): the bytes
   * that survived may not be the bytes hashed as they arrived, so the digest must be taken from storage.
   */
  private async syncChunks(id: string, chunks: readonly Chunk[]): Promise<boolean> {
    const unsynced = chunks.filter((c) => c.unsynced_boot !== null);
    if (unsynced.length === 0) return true;
    try {
      await this.storage.sync(unsynced.map((c) => c.storage_key));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      throw new RegistryError('BLOB_UPLOAD_INVALID', {
        upload: id,
        reason: 'the bytes of a chunk of this upload were lost; start the upload again',
      });
    }
    const boot = bootId();
    return unsynced.every((c) => c.unsynced_boot === boot);
  }

  /** The digest of the upload's bytes; `trusted`: digests and states taken as the bytes arrived still hold. */
  private async finalDigest(
    row: UploadRow,
    algorithm: 'sha256' | 'sha512',
    trusted: boolean,
  ): Promise<string> {
    if (algorithm === 'sha256' && trusted) {
      if (row.prefix_digest) return row.prefix_digest;
      // Continue the saved state when what it lacks costs less in WebAssembly than everything natively.
      const lag = row.size - row.hash_offset;
      if (row.hash_state && lag * WASM_TO_NATIVE_SPEED < row.size)
        return (await this.resumeAt(row, row.size)).hex();
    }
    const native = nativeDigester(algorithm);
    await this.feedStored(row.id, 0, row.size, native);
    return native.hex();
  }

  async cancel(repository: string, id: string, meta: RequestMeta): Promise<void> {
    const row = await this.load(repository, id);
    const chunks = await this.chunks(id);
    const removed = await this.db.transaction().execute(async (tx) => {
      const del = await tx.deleteFrom('uploads').where('id', '=', id).executeTakeFirst();
      if (del.numDeletedRows !== 1n) return false;
      await this.events.append(tx, {
        type: 'upload.cancelled',
        repository,
        subject: id,
        payload: { upload_id: id, size: row.size },
        meta,
      });
      return true;
    });
    if (!removed) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { upload: id });
    this.forget(id);
    await this.removeObjects(chunks.map((c) => c.storage_key));
  }

  /**
   * Removes uploads idle for longer than `ttlSeconds`, at most `limit` per call; rows locked by a request that is
   * using them are skipped. Returns how many were removed.
   */
  async expireIdle(ttlSeconds: number, meta: RequestMeta, limit = 500): Promise<number> {
    this.nativeHashes.sweep();
    const expired = await this.db.transaction().execute(async (tx) => {
      const rows = await tx
        .selectFrom('uploads as u')
        .innerJoin('repositories as r', 'r.id', 'u.repository_id')
        .select(['u.id', 'u.size', 'u.updated_at', 'r.name'])
        .where('u.updated_at', '<', sql<Date>`now() - make_interval(secs => ${ttlSeconds})`)
        .orderBy('u.updated_at')
        .limit(limit)
        .forUpdate('u')
        .skipLocked()
        .execute();
      if (rows.length === 0) return { count: 0, keys: [] as string[] };
      const ids = rows.map((r) => r.id);
      const keys = await tx
        .selectFrom('upload_chunks')
        .select('storage_key')
        .where('upload_id', 'in', ids)
        .execute();
      await tx.deleteFrom('uploads').where('id', 'in', ids).execute();
      for (const r of rows) {
        await this.events.append(tx, {
          type: 'upload.expired',
          repository: r.name,
          subject: r.id,
          payload: { upload_id: r.id, size: r.size, idle_since: r.updated_at.toISOString() },
          meta,
        });
      }
      return { count: rows.length, keys: keys.map((k) => k.storage_key) };
    });
    await this.removeObjects(expired.keys);
    return expired.count;
  }

  /** Monolithic upload: a session, its only bytes and its commit in one request and one transaction. */
  async upload(
    repository: string,
    digest: string,
    body: AsyncIterable<Buffer>,
    meta: RequestMeta,
  ): Promise<CommittedBlob> {
    const parsed = parseDigest(digest);
    const repositoryId = await this.repositories.ensure(repository);
    return this.commitWhole(repository, repositoryId, null, parsed, body, meta);
  }

  /**
   * All of a blob's bytes in one request (docker, podman and skopeo send layers so): streamed straight to the
   * blob's own key while hashed natively, then made visible in one transaction. `uploadId` is the session being
   * completed, or null for a POST that carries the blob itself.
   */
  private async commitWhole(
    repository: string,
    repositoryId: number,
    uploadId: string | null,
    digest: ParsedDigest,
    body: AsyncIterable<Buffer>,
    meta: RequestMeta,
    optimistic: true,
  ): Promise<CommittedBlob | null>;
  private async commitWhole(
    repository: string,
    repositoryId: number,
    uploadId: string | null,
    digest: ParsedDigest,
    body: AsyncIterable<Buffer>,
    meta: RequestMeta,
  ): Promise<CommittedBlob>;
  /** `optimistic`: the session was not read first; answer null, not an error, when it is not ready for this. */
  private async commitWhole(
    repository: string,
    repositoryId: number,
    uploadId: string | null,
    { digest, algorithm, hex }: ParsedDigest,
    body: AsyncIterable<Buffer>,
    meta: RequestMeta,
    optimistic = false,
  ): Promise<CommittedBlob | null> {
    const { head, rest } = await readHead(body, this.options.inlineMax);
    let key: string | null = null;
    let content: Buffer | null = null;
    let size: number;
    let actual: string;
    if (rest === null) {
      // Small enough to hash here at once; a message to the hash worker would cost more.
      content = head;
      size = head.length;
      const digester = nativeDigester(algorithm);
      digester.update(head);
      actual = digester.hex();
    } else {
      key = blobKey(hex);
      const digester = this.hashes.native(algorithm);
      try {
        let digested: Promise<string> | undefined;
        size = await this.storage.write(
          key,
          tapAsync(rest, digester, () => {
            digested = digester.digest();
            // Awaited below; should the write fail first, its failure is the one that counts.
            digested.catch(() => undefined);
          }),
        );
        const stored = key;
        actual = await (digested ?? digester.digest()).catch((err: unknown) => {
          this.logger.warn(
            { err, key: stored },
            'failed to hash blob as it arrived, hashing it from storage',
          );
          return this.hashObject(stored, algorithm);
        });
      } catch (e) {
        await this.storage.delete(key).catch(() => undefined);
        throw e;
      } finally {
        digester.drop();
      }
    }
    if (actual !== hex) {
      if (key !== null) await this.storage.delete(key);
      if (optimistic) return null;
      throw new RegistryError('DIGEST_INVALID', { expected: digest, actual: `${algorithm}:${actual}`, size });
    }
    const id = uploadId ?? randomUUID();
    const events: NewEvent[] = [];
    if (!uploadId)
      events.push({ type: 'upload.started', repository, subject: id, payload: { upload_id: id }, meta });
    if (size > 0) {
      events.push({
        type: 'upload.chunk',
        repository,
        subject: id,
        payload: { upload_id: id, offset: 0, size },
        meta,
      });
    }
    // `existed` is set by the statement, from whether it inserted the blob row.
    events.push({
      type: 'upload.committed',
      repository,
      subject: digest,
      payload: { upload_id: id, digest, size, existed: false },
      meta,
    });
    const publication: Publication = { repositoryId, uploadId, digest, size, key, content, events };
    let outcome: PublishOutcome;
    try {
      // Blobs held in their row go through the batcher: under load, many small pushes share one statement.
      outcome = await (content !== null
        ? this.inlinePublications.submit(publication)
        : this.publishOne(publication));
    } catch (e) {
      if (key !== null) await this.removeUnpublished(key);
      throw e;
    }
    const copies = key === null ? [] : [key];
    if (!outcome.accepted) {
      await this.removeObjects(copies);
      if (optimistic) return null;
      const still = uploadId
        ? await this.db
            .selectFrom('uploads')
            .select('size')
            .where('id', '=', uploadId)
            .where('repository_id', '=', repositoryId)
            .executeTakeFirst()
        : undefined;
      if (uploadId && still) throw this.rangeError(repository, uploadId, still.size);
      throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { upload: id });
    }
    if (!outcome.created) {
      await this.removeObjects(copies);
      await this.assertStoredSize(this.db, digest, size);
    }
    return { digest, size };
  }

  /**
   * One statement, so one round trip and one commit: the session's row goes (or, for a POST carrying the blob, a
   * constant row stands in for it), and only if it did do the blob, its link and the events appear.
   */
  private async publishOne(p: Publication): Promise<PublishOutcome> {
    const session = p.uploadId
      ? sql`DELETE FROM uploads WHERE id = ${p.uploadId}::uuid AND repository_id = ${p.repositoryId}::bigint AND size = 0 RETURNING id`
      : sql`SELECT 1 AS id`;
    const events = p.events.map(
      (e): StatementEvent => ({
        ...e,
        onlyIf: 'session',
        merge:
          e.type === 'upload.committed'
            ? sql`jsonb_build_object('existed', NOT EXISTS (SELECT 1 FROM blob))`
            : undefined,
      }),
    );
    const statement = sql<PublishOutcome>`WITH session AS (${session}),
      blob AS (
        INSERT INTO blobs (digest, size, storage_key, content)
        SELECT ${p.digest}::text, ${p.size}::bigint, ${p.key}::text, ${p.content}::bytea FROM session
        ON CONFLICT (digest) DO NOTHING
        RETURNING digest
      ), link AS (
        INSERT INTO repository_blobs (repository_id, digest) SELECT ${p.repositoryId}::bigint, ${p.digest}::text FROM session
        ON CONFLICT (repository_id, digest) DO NOTHING
      ), event AS (${this.events.insertion(events)})
      SELECT EXISTS (SELECT 1 FROM session) AS accepted, EXISTS (SELECT 1 FROM blob) AS created`;
    // The statement's text depends only on which events it writes, so each shape is prepared once.
    const [outcome] = await this.prepared.run(`commit_whole_${eventShape(p)}`, statement.compile(this.db));
    if (!outcome) throw new Error(`failed to commit ${p.digest}: the statement returned no row`);
    return outcome;
  }

  /**
   * Several publications in one statement: each is accepted or not on its own, exactly as `publishOne` would
   * decide it, and their events follow each other in the order given. Rows are inserted in key order, so two such
   * statements (on two replicas, say) sharing digests wait for each other rather than deadlock.
   */
  private async publishMany(batch: readonly Publication[]): Promise<(PublishOutcome | Error)[]> {
    if (batch.length === 1) return [await this.publishOne(batch[0] as Publication)];
    const rows = batch.map(
      (p, k) =>
        sql`(${sql.lit(k)}::int, ${p.uploadId}::uuid, ${p.repositoryId}::bigint, ${p.digest}::text,
             ${p.size}::bigint, ${p.key}::text, ${p.content}::bytea)`,
    );
    const events = batch.flatMap((p, k) =>
      p.events.map(
        (e): StatementEvent => ({
          ...e,
          onlyIf: sql<boolean>`EXISTS (SELECT 1 FROM accepted WHERE k = ${sql.lit(k)})`,
          merge:
            e.type === 'upload.committed'
              ? sql`jsonb_build_object('existed', NOT EXISTS (SELECT 1 FROM created WHERE k = ${sql.lit(k)}))`
              : undefined,
        }),
      ),
    );
    const statement = sql<PublishOutcome & { k: number }>`WITH input AS (
        SELECT * FROM (VALUES ${sql.join(rows)}) AS i(k, upload_id, repository_id, digest, size, storage_key, content)
      ), session AS (
        DELETE FROM uploads u USING input i
        WHERE u.id = i.upload_id AND u.repository_id = i.repository_id AND u.size = 0
        RETURNING i.k
      ), accepted AS (
        SELECT k FROM session UNION ALL SELECT k FROM input WHERE upload_id IS NULL
      ), first AS (
        SELECT DISTINCT ON (i.digest) i.k, i.digest, i.size, i.storage_key, i.content
        FROM input i JOIN accepted USING (k)
        ORDER BY i.digest, i.k
      ), blob AS (
        INSERT INTO blobs (digest, size, storage_key, content)
        SELECT digest, size, storage_key, content FROM first ORDER BY digest
        ON CONFLICT (digest) DO NOTHING
        RETURNING digest
      ), created AS (
        SELECT first.k FROM first JOIN blob USING (digest)
      ), link AS (
        INSERT INTO repository_blobs (repository_id, digest)
        SELECT DISTINCT i.repository_id, i.digest FROM input i JOIN accepted USING (k)
        ORDER BY 1, 2
        ON CONFLICT (repository_id, digest) DO NOTHING
      ), event AS (${this.events.insertion(events)})
      SELECT i.k, EXISTS (SELECT 1 FROM accepted a WHERE a.k = i.k) AS accepted,
        EXISTS (SELECT 1 FROM created c WHERE c.k = i.k) AS created
      FROM input i ORDER BY i.k`;
    const compiled = statement.compile(this.db);
    // Prepared when small and every publication has the same shape (the usual case: one client's kind of push,
    // many times), so the number of prepared statements stays bounded; anything else is planned each time.
    const shapes = new Set(batch.map(eventShape));
    let result: (PublishOutcome & { k: number })[];
    try {
      result =
        shapes.size === 1 && batch.length <= PREPARED_BATCH_MAX
          ? await this.prepared.run(`commit_many_${[...shapes][0]}_x${batch.length}`, compiled)
          : (await this.db.executeQuery(compiled)).rows;
    } catch (e) {
      // Nothing of the statement committed: a conflict with another statement (a deadlock with a batch on another
      // replica, say) fails only the publications it concerns, each then tried on its own.
      if (!lostConflict(e)) throw e;
      this.logger.warn(
        { err: e, batch: batch.length },
        'batched commit lost a conflict, committing one by one',
      );
      return Promise.all(
        batch.map((p) =>
          this.publishOne(p).catch((err: unknown) => (err instanceof Error ? err : new Error(String(err)))),
        ),
      );
    }
    return batch.map((p, k) => {
      const row = result[k];
      if (row?.k !== k) throw new Error(`failed to commit ${p.digest}: the statement returned no row for it`);
      return { accepted: row.accepted, created: row.created };
    });
  }

  /**
   * Makes `digest` readable in the repository: the blob row under `key` unless an identical upload stored it
   * first (or `key` is null because it already existed), and the link. True when this call stored the blob.
   */
  private async publish(
    tx: Tx,
    repositoryId: number,
    digest: string,
    size: number,
    key: string | null,
  ): Promise<boolean> {
    let created = false;
    if (key !== null) {
      const ins = await tx
        .insertInto('blobs')
        .values({ digest, size, storage_key: key })
        .onConflict((oc) => oc.column('digest').doNothing())
        .executeTakeFirst();
      created = ins.numInsertedOrUpdatedRows === 1n;
    }
    if (!created) await this.assertStoredSize(tx, digest, size);
    await tx
      .insertInto('repository_blobs')
      .values({ repository_id: repositoryId, digest })
      .onConflict((oc) => oc.columns(['repository_id', 'digest']).doNothing())
      .execute();
    return created;
  }

  private async assertStoredSize(tx: Db | Tx, digest: string, size: number): Promise<void> {
    const blob = await tx.selectFrom('blobs').select('size').where('digest', '=', digest).executeTakeFirst();
    if (!blob) throw new Error(`failed to commit ${digest}: its blob row vanished`);
    if (blob.size !== size)
      throw new Error(`failed to commit ${digest}: stored with size ${blob.size}, not ${size}`);
  }

  private async removeObjects(keys: readonly string[]): Promise<void> {
    for (const key of keys) {
      try {
        await this.storage.delete(key);
      } catch (err) {
        this.logger.warn({ err, key }, 'failed to remove storage object');
      }
    }
  }
}
