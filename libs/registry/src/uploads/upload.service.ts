import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { Batcher, type UploadRow } from '@strata/db';
import { tapAsync, type WorkerDigester } from '@strata/digest';
import type { RequestMeta } from '@strata/events';
import { parseDigest, RegistryError } from '@strata/oci';
import { type BlobStorage, chunkKey } from '@strata/storage';
import type { RepositoryStore } from '../stores/repository.store';
import type { NewUpload, UploadStore } from '../stores/upload.store';
import { type BlobCommits, type CommittedBlob, rangeError } from './blob-commits';
import { readHead, replay } from './body';
import type { UploadHashing } from './upload-hashing';

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

export interface UploadOptions {
  /** A blob of at most this many bytes that arrives in one request is stored in its row; 0: never. */
  readonly inlineMax: number;
  /** Answer a chunk once written, its flush left to the background and the commit (default true). */
  readonly deferChunkSync?: boolean;
}

/** How session starts are batched: a lone one goes at once; under load, up to 64 share one statement. */
const BATCHING = { maxBatch: 64, maxInFlight: 1 };

/**
 * Blob uploads: sessions, chunks and commits. Each chunk is streamed to its own storage key and accepted by a
 * row update conditional on the offset it started from, so of two racing chunks exactly one wins and the
 * loser's bytes are never seen. Commits are `BlobCommits`'; hashing decisions are `UploadHashing`'s.
 */
export class UploadService {
  private readonly starts = new Batcher<NewUpload, true>(async (batch) => {
    await this.uploads.start(batch);
    return batch.map(() => true as const);
  }, BATCHING);

  constructor(
    private readonly uploads: UploadStore,
    private readonly repositories: RepositoryStore,
    private readonly storage: BlobStorage,
    private readonly hashing: UploadHashing,
    private readonly commits: BlobCommits,
    private readonly logger: Logger,
    private readonly options: UploadOptions,
  ) {}

  /** Stops the hashing worker once background catch-ups finish; the service is not used after. */
  async close(): Promise<void> {
    await this.hashing.close();
  }

  async start(repository: string, meta: RequestMeta): Promise<UploadStatus> {
    const repositoryId = await this.repositories.ensure(repository);
    const id = randomUUID();
    await this.starts.submit({ id, repositoryId, repository, meta });
    return { id, repository, size: 0 };
  }

  private async load(repository: string, id: string): Promise<UploadRow> {
    const repositoryId = await this.repositories.find(repository);
    if (!UUID_RE.test(id) || repositoryId === null)
      throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { upload: id });
    const row = await this.uploads.find(id, repositoryId);
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
    if (range && range.start !== row.size) throw rangeError(repository, id, row.size);
    const size = await this.appendAt(repository, row, body, range, meta);
    return { id, repository, size };
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
    const native = this.hashing.forChunk(row.id, offset);
    // The chunk is answered once its bytes are written; their flush to disk finishes in the background, and the
    // commit makes sure of it before the blob becomes visible (`BlobCommits.syncChunks`).
    const unsyncedBoot = this.options.deferChunkSync === false ? null : this.storage.unsyncedMark();
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
      let accepted: boolean;
      try {
        accepted = await this.uploads.recordChunk({
          uploadId: row.id,
          repository,
          offset,
          size: written,
          key,
          prefixDigest: prefix,
          unsyncedBoot,
          meta,
        });
      } catch (e) {
        await this.removeUnrecorded(row.id, key);
        throw e;
      }
      if (!accepted) {
        await this.storage.delete(key);
        const current = await this.uploads.size(row.id, row.repository_id);
        if (current === null) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { upload: row.id });
        throw rangeError(repository, row.id, current);
      }
      const hashed = native && prefix !== null ? native : null;
      this.hashing.chunkAccepted(row.id, offset, size, hashed);
      kept = hashed !== null;
      return size;
    } finally {
      if (native && !kept) native.drop();
    }
  }

  /**
   * Removes a chunk's bytes after recording it failed, unless the failure hid a commit (a connection lost while
   * committing): the row then holds the key, and the bytes must stay.
   */
  private async removeUnrecorded(uploadId: string, key: string): Promise<void> {
    try {
      if (!(await this.uploads.chunkRecorded(uploadId, key))) await this.storage.delete(key);
    } catch (err) {
      this.logger.warn({ err, key }, 'failed to remove unrecorded chunk');
    }
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
    if (body && this.options.inlineMax > 0) {
      // A small blob in one PUT (a config, say) is committed before the session is even read: one statement in
      // all. If that cannot be done (the session has bytes already, or does not exist, or the digest is wrong), the
      // bytes read so far are replayed through the general path below, which then gives the right answer.
      const repositoryId = UUID_RE.test(id) ? await this.repositories.find(repository) : null;
      if (repositoryId !== null) {
        const { head, rest } = await readHead(body, this.options.inlineMax);
        if (rest === null) {
          const done = await this.commits.whole(
            repository,
            repositoryId,
            id,
            parsed,
            replay([head]),
            meta,
            true,
          );
          if (done) {
            this.hashing.forget(id);
            return done;
          }
          body = replay([head]);
        } else body = rest;
      }
    }
    let row = await this.load(repository, id);
    if (body && row.size === 0) {
      const done = await this.commits.whole(repository, row.repository_id, id, parsed, body, meta);
      this.hashing.forget(id);
      return done!;
    }
    if (body) {
      const size = await this.appendAt(repository, row, body, null, meta);
      if (size !== row.size) row = await this.load(repository, id);
    }
    // The state this replica is already computing is further along than the row says: wait rather than redo.
    if (await this.hashing.settle(id, parsed.algorithm)) row = await this.load(repository, id);
    return this.commits.chunked(repository, row, parsed, meta);
  }

  async cancel(repository: string, id: string, meta: RequestMeta): Promise<void> {
    const row = await this.load(repository, id);
    const keys = await this.uploads.cancel(id, row.repository_id, meta);
    if (keys === null) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { upload: id });
    this.hashing.forget(id);
    await this.commits.removeObjects(keys);
  }

  /**
   * Removes uploads idle for longer than `ttlSeconds`, at most `limit` per call; rows locked by a request that is
   * using them are skipped. Returns how many were removed.
   */
  async expireIdle(ttlSeconds: number, meta: RequestMeta, limit = 500): Promise<number> {
    this.hashing.sweep();
    const { removed, keys } = await this.uploads.expire(ttlSeconds, limit, meta);
    await this.commits.removeObjects(keys);
    return removed;
  }

  /** Monolithic upload: a session, its only bytes and its commit in one request and one statement. */
  async upload(
    repository: string,
    digest: string,
    body: AsyncIterable<Buffer>,
    meta: RequestMeta,
  ): Promise<CommittedBlob> {
    const parsed = parseDigest(digest);
    const repositoryId = await this.repositories.ensure(repository);
    return (await this.commits.whole(repository, repositoryId, null, parsed, body, meta))!;
  }
}
