import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { Batcher, lostConflict, type Tx, type UploadRow } from '@strata/db';
import { nativeDigester, tapAsync } from '@strata/digest';
import type { RequestMeta } from '@strata/events';
import { type ParsedDigest, RegistryError } from '@strata/oci';
import { type BlobStorage, blobKey } from '@strata/storage';
import type { BlobStore, Publication, PublishOutcome } from '../stores/blob.store';
import type { Chunk, UploadStore } from '../stores/upload.store';
import { readHead } from './body';
import type { UploadHashing } from './upload-hashing';

export interface CommittedBlob {
  readonly digest: string;
  readonly size: number;
  /** The registry held the blob already (an identical upload committed first): this one's bytes were dropped. */
  readonly existed: boolean;
}

/**
 * How blobs kept in their row are batched: a lone request goes at once; while a statement is under way,
 * requests wait and then go together, up to 64 in one statement.
 */
const BATCHING = { maxBatch: 64, maxInFlight: 1 };

/** `Range` header value for an upload of `size` bytes: the spec's inclusive `0-<last byte>`. */
export function uploadRange(size: number): string {
  return `0-${Math.max(size - 1, 0)}`;
}

/**
 * The answer to a chunk or commit that does not start where the upload is: 416, telling the upload's size (the
 * HTTP layer adds its Location and Range).
 */
export function rangeError(repository: string, id: string, size: number): RegistryError {
  return new RegistryError('RANGE_INVALID', { repository, upload: id, size });
}

/**
 * The commit of a blob: its bytes verified against its digest, then its publication (`BlobStore.publish`, one
 * statement), whichever way the bytes came. Every identical concurrent upload succeeds: the blob row is inserted
 * under its unique digest, the first one's bytes are kept and the others' removed, and the blob is complete before
 * any of them answers.
 */
export class BlobCommits {
  private readonly inline = new Batcher<Publication, PublishOutcome>(
    (batch) => this.publishBatch(batch),
    BATCHING,
  );

  constructor(
    private readonly uploads: UploadStore,
    private readonly blobs: BlobStore,
    private readonly storage: BlobStorage,
    private readonly hashing: UploadHashing,
    private readonly logger: Logger,
    private readonly inlineMax: number,
  ) {}

  /**
   * All of a blob's bytes in one request (docker, podman and skopeo send layers so): a small one kept for its row,
   * a larger one streamed straight to the blob's own key while hashed natively; then published. `uploadId` is the
   * session being completed (which must hold no bytes yet), or null for a POST that carries the blob itself.
   * `optimistic`: the session was not read first; answer null, not an error, when it is not ready for this.
   */
  async whole(
    repository: string,
    repositoryId: number,
    uploadId: string | null,
    { digest, algorithm, hex }: ParsedDigest,
    body: AsyncIterable<Buffer>,
    meta: RequestMeta,
    optimistic = false,
  ): Promise<CommittedBlob | null> {
    const { head, rest } = await readHead(body, this.inlineMax);
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
      const digester = this.hashing.whole(algorithm);
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
          return this.hashing.hashObject(stored, algorithm);
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
    const publication: Publication = {
      uploadId: uploadId ?? randomUUID(),
      completes: uploadId !== null,
      uploadSize: 0,
      repositoryId,
      repository,
      digest,
      size,
      key,
      content,
      whole: true,
      meta,
    };
    let outcome: PublishOutcome;
    try {
      // Blobs held in their row go through the batcher: under load, many small pushes share one statement.
      outcome = content !== null ? await this.inline.submit(publication) : await this.publishOne(publication);
    } catch (e) {
      if (key !== null) await this.removeUnpublished(key);
      throw e;
    }
    const copies = key === null ? [] : [key];
    if (!outcome.accepted) {
      await this.removeObjects(copies);
      if (optimistic) return null;
      if (uploadId !== null && outcome.uploadSize !== null)
        throw rangeError(repository, uploadId, outcome.uploadSize);
      throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { upload: publication.uploadId });
    }
    if (!outcome.created) await this.removeObjects(copies);
    assertStoredSize(outcome, digest, size);
    return { digest, size, existed: !outcome.created };
  }

  /**
   * The commit of an upload whose bytes came in chunks: every chunk made durable, the digest verified over every
   * byte, the chunks composed into the blob (unless it is stored already), and the blob published in place of the
   * session. On a mismatch nothing becomes visible and the upload stays as it was.
   */
  async chunked(
    repository: string,
    row: UploadRow,
    parsed: ParsedDigest,
    meta: RequestMeta,
  ): Promise<CommittedBlob> {
    const { digest, algorithm, hex } = parsed;
    const { id, size } = row;
    const repositoryId = row.repository_id;
    // Between the reads above and the commit, a cancel or a racing commit of the same upload may remove its
    // objects: whatever that breaks here, the answer is then that the upload is gone.
    const { chunks, created, key } = await this.unlessGone(id, repositoryId, digest, async () => {
      const chunks = await this.uploads.chunks(id);
      if (chunks.reduce((n, c) => n + c.size, 0) !== size) {
        // A PATCH of the same upload landed since its row was read: the client raced its own requests.
        const now = await this.uploads.size(id, repositoryId);
        if (now === null) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { upload: id });
        throw rangeError(repository, id, now);
      }
      const trusted = await this.syncChunks(id, chunks);
      const actual = await this.hashing.finalDigest(row, algorithm, trusted);
      if (actual !== hex) {
        throw new RegistryError('DIGEST_INVALID', {
          expected: digest,
          actual: `${algorithm}:${actual}`,
          size,
        });
      }
      const base = {
        uploadId: id,
        completes: true,
        uploadSize: size,
        repositoryId,
        repository,
        digest,
        size,
        content: null,
        whole: false,
        meta,
      };
      let key: string | null = null;
      let outcome: PublishOutcome;
      try {
        if ((await this.blobs.size(digest)) !== null) {
          // Stored already (another repository, an identical upload): only the link is made.
          outcome = await this.publishOne({ ...base, key: null });
        } else {
          const composed = blobKey(hex);
          key = composed;
          // Whole and durable before the row naming it commits, inside its transaction where the bytes live in
          // the database.
          outcome = await this.storage.composeThen(
            composed,
            chunks.map((c) => c.storage_key),
            (tx) => this.publishOne({ ...base, key: composed }, tx),
          );
        }
      } catch (e) {
        // Not a plain delete: a connection lost during COMMIT fails here too, after the row naming the key
        // may have committed.
        if (key !== null) await this.removeUnpublished(key);
        throw e;
      }
      if (!outcome.accepted) {
        if (key !== null) await this.removeObjects([key]);
        // Gone, or grown by a PATCH that landed meanwhile (the client raced its own requests): say which.
        if (outcome.uploadSize !== null) throw rangeError(repository, id, outcome.uploadSize);
        throw new RegistryError('BLOB_UPLOAD_UNKNOWN', { upload: id });
      }
      assertStoredSize(outcome, digest, size);
      return { chunks, created: outcome.created, key };
    });
    this.hashing.forget(id);
    // The upload's own bytes are no longer needed: a composed blob holds its own links or copy.
    await this.removeObjects([
      ...chunks.map((c) => c.storage_key),
      ...(created || key === null ? [] : [key]),
    ]);
    return { digest, size, existed: !created };
  }

  private async publishOne(p: Publication, tx?: Tx): Promise<PublishOutcome> {
    const [outcome] = await this.blobs.publish([p], tx);
    return outcome!;
  }

  /**
   * Several publications in one statement, each accepted or not on its own exactly as alone. A conflict with
   * another statement fails nothing of the statement's: the publications are then tried one by one.
   */
  private async publishBatch(batch: readonly Publication[]): Promise<(PublishOutcome | Error)[]> {
    try {
      return await this.blobs.publish(batch);
    } catch (e) {
      if (batch.length === 1 || !lostConflict(e)) throw e;
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
  }

  /**
   * Runs the part of a commit that reads and composes the upload's objects and publishes the blob. If it fails
   * once the upload's row is gone (cancelled, expired, committed by a racing PUT, each of which removes the
   * objects; or committed by this very call, its COMMIT's answer lost with the connection), the blob's link in
   * the repository settles it: linked, the commit stands, as a HEAD would show; not linked, the upload is
   * unknown, as a request a moment later would be told. A failure the check cannot settle is passed on.
   */
  private async unlessGone<T extends { chunks: Chunk[]; created: boolean; key: string | null }>(
    id: string,
    repositoryId: number,
    digest: string,
    work: () => Promise<T>,
  ): Promise<T | { chunks: Chunk[]; created: false; key: null }> {
    try {
      return await work();
    } catch (e) {
      let settled: 'linked' | 'gone' | null = null;
      try {
        if ((await this.uploads.findById(id)) === undefined)
          settled = (await this.blobs.isLinked(repositoryId, digest)) ? 'linked' : 'gone';
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
    const mark = this.storage.unsyncedMark();
    return unsynced.every((c) => c.unsynced_boot === mark);
  }

  /** Removes a blob's bytes after its commit failed, unless the failure hid a commit that names them. */
  private async removeUnpublished(key: string): Promise<void> {
    try {
      if (!(await this.blobs.keyPublished(key))) await this.storage.delete(key);
    } catch (err) {
      this.logger.warn({ err, key }, 'failed to remove unpublished blob');
    }
  }

  async removeObjects(keys: readonly string[]): Promise<void> {
    for (const key of keys) {
      try {
        await this.storage.delete(key);
      } catch (err) {
        this.logger.warn({ err, key }, 'failed to remove storage object');
      }
    }
  }
}

function assertStoredSize(outcome: PublishOutcome, digest: string, size: number): void {
  if (outcome.storedSize === null) throw new Error(`failed to commit ${digest}: its blob row vanished`);
  if (outcome.storedSize !== size)
    throw new Error(`failed to commit ${digest}: stored with size ${outcome.storedSize}, not ${size}`);
}
