import { mkdir, rm, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import {
  assertKey,
  type BlobStorage,
  type ByteRange,
  type ObjectReader,
  type WriteOptions,
} from './blob-storage';
import { directWritesWork } from './direct-io';
import { markInUse, prepareRoot, removeDeadTempDirs } from './filesystem-maintenance';
import { objectParts, partsReader, partsSize, readParts } from './filesystem-read';
import { DeferredFlushes, syncObjects } from './filesystem-sync';
import { composeObject, writeObject } from './filesystem-write';
import { bootId, nonce } from './paths';
import { tempDirName } from './temp-owner';

/**
 * The first bytes of every blob are written through the page cache, the rest past it (see direct-io.ts). Most
 * layers fit, so a pull right after a push is served from memory; the tail of a large layer, which costs more to
 * put in the cache than the disk takes to write it, is cached only once something reads it (reads are buffered).
 */
const CACHED_HEAD = 64 * 1024 * 1024;

export class FilesystemDriver implements BlobStorage {
  readonly driver = 'filesystem' as const;
  private readonly tmp: string;
  /** Flushes of objects written with `durable: false`: under way, or failed. */
  private readonly flushes = new DeferredFlushes();

  /** Whether large writes go to the disk directly: asked for, and found to work at `init`. */
  private directIo: boolean;

  /** Bytes at the start of each blob written and read through the page cache when `directIo` is on. */
  private readonly cachedHead: number;

  constructor(
    private readonly root: string,
    options: { readonly directIo?: boolean; readonly cachedHead?: number } = {},
  ) {
    this.directIo = options.directIo ?? true;
    this.cachedHead = options.cachedHead ?? CACHED_HEAD;
    // Each process writes under its own directory, named after the process (see temp-owner.ts): replicas share
    // the root, and one cleaning up must not remove another's writes in progress.
    this.tmp = join(root, 'tmp', tempDirName(nonce()));
  }

  async init(): Promise<void> {
    await mkdir(this.tmp, { recursive: true });
    await this.removeLeftovers();
    markInUse(this.tmp);
    if (this.directIo) this.directIo = await directWritesWork(this.tmp, `direct-${nonce()}`);
    await prepareRoot(this.root);
  }

  /**
   * Removes the partial writes of processes that died (a crash, a SIGKILL mid-upload): their temp directories.
   * A directory of a process on this machine and in this pid namespace is removed as soon as that process is
   * gone; any other (another host on shared storage, another container, from before a reboot) once it has gone
   * unmarked for an hour. Returns how many were removed.
   */
  async removeLeftovers(): Promise<number> {
    return removeDeadTempDirs(this.tmp);
  }

  /** True when large writes bypass the page cache (asked for, and the filesystem took it at `init`). */
  get directWrites(): boolean {
    return this.directIo;
  }

  private path(key: string): string {
    return join(this.root, assertKey(key));
  }

  async write(key: string, source: AsyncIterable<Buffer>, options: WriteOptions = {}): Promise<number> {
    return writeObject(source, {
      key,
      target: this.path(key),
      tmpDir: this.tmp,
      durable: options.durable ?? true,
      blobOffset: options.blobOffset ?? 0,
      directIo: this.directIo,
      cachedHead: this.cachedHead,
      directFellBack: () => {
        this.directIo = false;
      },
      flushes: this.flushes,
    });
  }

  async sync(keys: readonly string[]): Promise<void> {
    await syncObjects(keys, (key) => this.path(key), this.flushes);
  }

  /** The boot id: a write left unflushed under another boot (the machine restarted since) may have lost bytes. */
  unsyncedMark(): string | null {
    return bootId();
  }

  async composeThen<T>(key: string, parts: readonly string[], publish: () => Promise<T>): Promise<T> {
    if (parts.length === 0) await this.write(key, emptySource());
    else await this.compose(key, parts);
    return publish();
  }

  async compose(key: string, parts: readonly string[]): Promise<void> {
    const target = this.path(key);
    await composeObject(
      target,
      parts.map((part) => this.path(part)),
      this.tmp,
    );
  }

  async read(key: string, range?: ByteRange): Promise<Readable> {
    return readParts(await objectParts(key, this.path(key)), range);
  }

  async openReader(key: string): Promise<ObjectReader> {
    return partsReader(key, await objectParts(key, this.path(key)));
  }

  async size(key: string): Promise<number | null> {
    try {
      return partsSize(await objectParts(key, this.path(key)));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async delete(key: string): Promise<void> {
    await rm(this.path(key), { recursive: true, force: true });
    this.flushes.forget(key);
  }

  async check(): Promise<void> {
    const probe = join(this.tmp, `ready-${nonce()}`);
    await writeFile(probe, 'ok');
    await unlink(probe);
  }
}

async function* emptySource(): AsyncGenerator<Buffer> {}
