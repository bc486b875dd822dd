import type { Logger } from 'pino';
import type { UploadRow } from '@strata/db';
import {
  type Algorithm,
  HashWorker,
  NativeHashCache,
  nativeDigester,
  ResumableSha256,
  type WorkerDigester,
} from '@strata/digest';
import type { BlobStorage } from '@strata/storage';
import type { UploadStore } from '../stores/upload.store';

/** How many times faster node's native SHA-256 runs than hash-wasm's on these machines (1750 vs 280 MB/s). */
const WASM_TO_NATIVE_SPEED = 6;
/** How long an upload must go without a chunk here before its saved hash state is brought up to date. */
const ADVANCE_WHEN_IDLE_MS = 1000;

/**
 * Every decision about hashing an upload's bytes, in one place:
 *
 * - Bytes are hashed natively as they arrive when this process holds the hash of all bytes before them: from
 *   offset 0, or from where the last chunk it appended ended (the native hash cache). The upload's row then holds
 *   the digest of everything so far, and the commit needs no hashing at all.
 * - A chunk that arrives at a replica without that hash is only stored; the upload's saved resumable SHA-256
 *   state catches up from storage off the request path (`advance`), so a client that resumes on another replica
 *   finds it current.
 * - While chunks keep arriving here, their native hash is all that is needed: the saved state catches up once the
 *   upload pauses (`ADVANCE_WHEN_IDLE_MS`), not after every chunk.
 * - At the commit, the digest is the row's prefix digest, else the saved state continued over what it lacks when
 *   that is cheaper than hashing everything natively, else every stored byte hashed natively.
 *
 * The native hashes run on a worker thread, beside the event loop that receives the bytes.
 */
export class UploadHashing {
  private readonly worker = new HashWorker();
  private readonly cache = new NativeHashCache<WorkerDigester>();
  private readonly advancing = new Map<string, Promise<void>>();
  private readonly advanceAgain = new Set<string>();
  private readonly idleTimers = new Map<string, NodeJS.Timeout>();

  constructor(
    private readonly uploads: UploadStore,
    private readonly storage: BlobStorage,
    private readonly logger: Logger,
  ) {}

  /** A native hash of a whole blob arriving in one request. */
  whole(algorithm: Algorithm): WorkerDigester {
    return this.worker.native(algorithm);
  }

  /** The native hash a chunk at `offset` continues, or null when this process does not hold one. */
  forChunk(uploadId: string, offset: number): WorkerDigester | null {
    return offset === 0 ? this.worker.native('sha256') : this.cache.forkAt(uploadId, offset);
  }

  /**
   * A chunk was accepted. With its native hash (`hash`, now covering [0, size)), that hash is kept for the next
   * chunk and the saved state catches up once the upload goes idle; without one, the saved state catches up now.
   */
  chunkAccepted(uploadId: string, offset: number, size: number, hash: WorkerDigester | null): void {
    if (hash === null) {
      this.advance(uploadId);
      return;
    }
    this.cache.set(uploadId, size, hash);
    // A single chunk from offset 0 (docker's one PATCH per layer) needs no state: its digest is in the row.
    if (offset > 0) this.advanceWhenIdle(uploadId);
  }

  /** Before a commit reads the row: catch-ups under way here are waited for, rather than redone. */
  async settle(uploadId: string, algorithm: Algorithm): Promise<boolean> {
    clearTimeout(this.idleTimers.get(uploadId));
    const advancing = this.advancing.get(uploadId);
    if (!advancing || algorithm !== 'sha256') return false;
    this.advanceAgain.delete(uploadId);
    await advancing;
    return true;
  }

  /**
   * The digest of the upload's bytes at the commit; `trusted`: digests and states taken as the bytes arrived
   * still hold (every chunk was flushed under this boot).
   */
  async finalDigest(row: UploadRow, algorithm: Algorithm, trusted: boolean): Promise<string> {
    if (algorithm === 'sha256' && trusted) {
      if (row.prefix_digest) return row.prefix_digest;
      // Continue the saved state when what it lacks costs less in WebAssembly than everything natively.
      const lag = row.size - row.hash_offset;
      if (row.hash_state && lag * WASM_TO_NATIVE_SPEED < row.size) {
        const hasher = await ResumableSha256.create(row.hash_state);
        for await (const b of this.storedBytes(row.id, row.hash_offset, row.size)) hasher.update(b);
        return hasher.hex();
      }
    }
    const native = nativeDigester(algorithm);
    for await (const b of this.storedBytes(row.id, 0, row.size)) native.update(b);
    return native.hex();
  }

  /** The digest of a stored object, hashed here (when hashing it as it arrived failed). */
  async hashObject(key: string, algorithm: Algorithm): Promise<string> {
    const digester = nativeDigester(algorithm);
    for await (const b of await this.storage.read(key)) digester.update(b as Buffer);
    return digester.hex();
  }

  /** The upload is gone (committed, cancelled): nothing of it is kept. */
  forget(uploadId: string): void {
    this.cache.delete(uploadId);
    clearTimeout(this.idleTimers.get(uploadId));
    this.idleTimers.delete(uploadId);
  }

  /** Forgets native hashes too old to be worth keeping. */
  sweep(): void {
    this.cache.sweep();
  }

  /** Stops the worker once catch-ups under way finish. */
  async close(): Promise<void> {
    for (const timer of this.idleTimers.values()) clearTimeout(timer);
    this.idleTimers.clear();
    await Promise.all(this.advancing.values());
    this.cache.clear();
    await this.worker.close();
  }

  private advanceWhenIdle(uploadId: string): void {
    clearTimeout(this.idleTimers.get(uploadId));
    const timer = setTimeout(() => {
      this.idleTimers.delete(uploadId);
      this.advance(uploadId);
    }, ADVANCE_WHEN_IDLE_MS);
    timer.unref();
    this.idleTimers.set(uploadId, timer);
  }

  /**
   * Brings the upload's saved SHA-256 state up to its size in the background. It runs while the client sends its
   * next chunk, so hashing in WebAssembly (about 280 MB/s here) stays off the request path.
   */
  private advance(uploadId: string): void {
    if (this.advancing.has(uploadId)) {
      this.advanceAgain.add(uploadId);
      return;
    }
    const run = async (): Promise<void> => {
      do {
        this.advanceAgain.delete(uploadId);
        await this.advanceOnce(uploadId);
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

  /** One catch-up of the saved state to the upload's size now. */
  async advanceOnce(uploadId: string): Promise<void> {
    const row = await this.uploads.findById(uploadId);
    if (!row || row.hash_offset >= row.size) return;
    const state = await this.worker.continueOver(
      row.hash_state,
      this.storedBytes(uploadId, row.hash_offset, row.size),
    );
    await this.uploads.saveHashState(uploadId, state, row.size, row.hash_offset);
  }

  /** Stored bytes [from, to) of an upload, in order. */
  private async *storedBytes(uploadId: string, from: number, to: number): AsyncGenerator<Buffer> {
    if (from >= to) return;
    for (const c of await this.uploads.chunks(uploadId)) {
      const end = c.offset + c.size;
      if (end <= from || c.offset >= to) continue;
      const start = Math.max(from, c.offset) - c.offset;
      const last = Math.min(to, end) - 1 - c.offset;
      for await (const b of await this.storage.read(c.storage_key, { start, end: last })) yield b as Buffer;
    }
  }
}
