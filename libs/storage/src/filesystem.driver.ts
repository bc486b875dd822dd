import { constants, createReadStream } from 'node:fs';
import {
  type FileHandle,
  link,
  lstat,
  mkdir,
  open,
  readdir,
  rename,
  rm,
  stat,
  writeFile,
  unlink,
  utimes,
} from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import {
  assertKey,
  type BlobStorage,
  type ByteRange,
  type ObjectReader,
  type WriteOptions,
} from './blob-storage';
import { DIRECT_ALIGN, DirectAppender, directWritesWork } from './direct-io';
import { bootId, nonce } from './paths';
import { streamed } from './reclaim';
import { tempDirName, tempDirOwner } from './temp-owner';

/** Flush written data every this many bytes while a write goes on, so the final fsync has little left to do. */
const SYNC_EVERY = 1024 * 1024;
const WRITE_BATCH = 1024 * 1024;
/** Objects `sync` flushes at once (each flush waits on the thread pool and the disk, not on this thread). */
const SYNC_PARALLEL = 8;
/**
 * The first bytes of every blob are written through the page cache, the rest past it (see direct-io.ts). Most
 * layers fit, so a pull right after a push is served from memory; the tail of a large layer, which costs more to
 * put in the cache than the disk takes to write it, is cached only once something reads it (reads are buffered).
 */
const CACHED_HEAD = 64 * 1024 * 1024;
const READ_CHUNK = 1024 * 1024;
/** How often a process marks its temp directory as in use, and how long an unmarked one is kept. */
const TEMP_HEARTBEAT_MS = 60 * 1000;
const STALE_TEMP_MS = 3600 * 1000;
const PREFIXES = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function enoent(key: string): NodeJS.ErrnoException {
  const e: NodeJS.ErrnoException = new Error(`no object at ${key}`);
  e.code = 'ENOENT';
  return e;
}

/** `buffers` cut after `n` bytes: the first n, and the rest. */
function split(buffers: readonly Buffer[], n: number): [Buffer[], Buffer[]] {
  const head: Buffer[] = [];
  let i = 0;
  for (; i < buffers.length && n > 0; i++) {
    const b = buffers[i]!;
    if (b.length <= n) {
      head.push(b);
      n -= b.length;
      continue;
    }
    head.push(b.subarray(0, n));
    return [head, [b.subarray(n), ...buffers.slice(i + 1)]];
  }
  return [head, buffers.slice(i)];
}

interface Part {
  readonly path: string;
  readonly start: number;
  readonly size: number;
}

export class FilesystemDriver implements BlobStorage {
  readonly driver = 'filesystem' as const;
  private readonly tmp: string;
  /** Deferred flushes of objects written with `durable: false`, under way, by key. */
  private readonly flushing = new Map<string, Promise<void>>();
  /** Deferred flushes that failed, so `sync` reports them until the object is deleted. */
  private readonly failed = new Map<string, Promise<void>>();

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
    // The directory's mtime says it is in use, for processes that cannot see this one (another host).
    setInterval(() => {
      const now = new Date();
      utimes(this.tmp, now, now).catch(() => undefined);
    }, TEMP_HEARTBEAT_MS).unref();
    if (this.directIo) this.directIo = await directWritesWork(this.tmp, `direct-${nonce()}`);
    for (const top of ['blobs', 'uploads']) {
      await mkdir(join(this.root, top), { recursive: true });
      await Promise.all(PREFIXES.map((p) => mkdir(join(this.root, top, p), { recursive: true })));
      await fsyncDir(join(this.root, top));
    }
    await fsyncDir(this.root);
  }

  /**
   * Removes the partial writes of processes that died (a crash, a SIGKILL mid-upload): their temp directories.
   * A directory of a process on this machine and in this pid namespace is removed as soon as that process is
   * gone; any other (another host on shared storage, another container, from before a reboot) once it has gone
   * unmarked for an hour. Returns how many were removed.
   */
  async removeLeftovers(): Promise<number> {
    const top = dirname(this.tmp);
    const now = Date.now();
    let removed = 0;
    for (const name of await readdir(top)) {
      const dir = join(top, name);
      if (dir === this.tmp) continue;
      // A live owner marks its directory every minute: one unmarked for an hour is dead whoever made it (a
      // stopped process, a pid taken over by another program).
      const owner = tempDirOwner(name);
      const st = owner === 'dead' ? null : await stat(dir).catch(() => null);
      const dead = owner === 'dead' || (st !== null && now - st.mtimeMs > STALE_TEMP_MS);
      if (dead) {
        await rm(dir, { recursive: true, force: true });
        removed++;
      }
    }
    return removed;
  }

  /** True when large writes bypass the page cache (asked for, and the filesystem took it at `init`). */
  get directWrites(): boolean {
    return this.directIo;
  }

  private path(key: string): string {
    return join(this.root, assertKey(key));
  }

  async write(key: string, source: AsyncIterable<Buffer>, options: WriteOptions = {}): Promise<number> {
    const durable = options.durable ?? true;
    const blobOffset = options.blobOffset ?? 0;
    const target = this.path(key);
    const tmp = join(this.tmp, nonce());
    const fh = await open(tmp, 'wx', 0o644);
    let size = 0;
    let unsynced = 0;
    let syncing: Promise<void> | undefined;
    let syncFailure: Error | undefined;
    // Past the blob's cached head, bytes go to the disk directly (see direct-io.ts); undefined until then.
    let direct: DirectAppender | undefined;
    let directTried = !this.directIo;
    // Socket reads arrive in 16-64 KiB pieces; gathering them into one writev per MiB saves a thread-pool round
    // trip per piece.
    let batch: Buffer[] = [];
    let batchBytes = 0;
    let written = 0;
    const flush = async (upTo = size): Promise<void> => {
      const [pending, rest] = split(batch, upTo - written);
      batch = rest;
      batchBytes -= upTo - written;
      written = upTo;
      while (pending.length) {
        let { bytesWritten } = await fh.writev(pending);
        while (pending.length && bytesWritten >= pending[0]!.length) bytesWritten -= pending.shift()!.length;
        if (bytesWritten > 0) pending[0] = pending[0]!.subarray(bytesWritten);
      }
    };
    // Data and the size needed to read it back; timestamps need not reach the disk first.
    const flushed = async (): Promise<void> => {
      await syncing;
      if (syncFailure !== undefined) throw syncFailure;
      await fh.datasync();
    };
    try {
      for await (const chunk of source) {
        size += chunk.length;
        streamed(chunk.length);
        if (direct) {
          await direct.append(chunk);
          continue;
        }
        batch.push(chunk);
        batchBytes += chunk.length;
        unsynced += chunk.length;
        if (batchBytes >= WRITE_BATCH) {
          if (!directTried && blobOffset + size >= this.cachedHead) {
            directTried = true;
            // The ordinary descriptor writes up to a block boundary; the appender takes over from there.
            const from = size - (size % DIRECT_ALIGN);
            direct = await DirectAppender.open(tmp, fh, from);
            if (direct) {
              await flush(from);
              for (const rest of batch.splice(0)) await direct.append(rest);
              batchBytes = 0;
              continue;
            }
          }
          await flush();
        }
        if (unsynced >= SYNC_EVERY && syncing === undefined) {
          // One flush at a time, overlapped with receiving the next bytes, and never waited for here: on a slow
          // disk the flushes just cover more bytes each.
          unsynced = 0;
          syncing = fh.datasync().then(
            () => void (syncing = undefined),
            (e: unknown) => {
              syncFailure ??= e instanceof Error ? e : new Error(String(e));
              syncing = undefined;
            },
          );
        }
      }
      if (direct) {
        const appender = direct;
        direct = undefined;
        await appender.finish();
        if (appender.fellBack) this.directIo = false;
      } else await flush();
      if (durable) {
        await flushed();
        await fh.close();
      }
      await rename(tmp, target);
    } catch (e) {
      await direct?.close();
      await syncing;
      await fh.close().catch(() => undefined);
      await rm(tmp, { force: true });
      throw e;
    }
    if (durable) {
      await fsyncDir(dirname(target));
      return size;
    }
    // The rest of the flush goes on while the caller answers; `sync` waits for it, and learns if it failed.
    const background = flushed().finally(() => fh.close());
    this.flushing.set(key, background);
    const settled = (failed: boolean) => (): void => {
      if (this.flushing.get(key) !== background) return;
      this.flushing.delete(key);
      if (!failed) return;
      this.failed.set(key, background);
      // Bytes whose flush failed may never reach the disk, and only this process saw the error (another file
      // descriptor's fsync would not report it): the object goes, so a commit anywhere finds it missing.
      rm(target, { force: true }).catch(() => undefined);
    };
    background.then(settled(false), settled(true));
    return size;
  }

  async sync(keys: readonly string[]): Promise<void> {
    // Several at once: an upload of many chunks waits for the slowest flush, not for the sum of them.
    const queue = [...new Set(keys)];
    const dirs = new Set<string>();
    let failed = false;
    const worker = async (): Promise<void> => {
      for (let key = queue.shift(); key !== undefined && !failed; key = queue.shift()) {
        try {
          await this.syncOne(key);
        } catch (e) {
          failed = true;
          throw e;
        }
        dirs.add(dirname(this.path(key)));
      }
    };
    // On a failure the other flushes under way end before it is reported, and no new one starts.
    const results = await Promise.allSettled(
      Array.from({ length: Math.min(SYNC_PARALLEL, queue.length) }, worker),
    );
    for (const r of results) if (r.status === 'rejected') throw r.reason;
    await Promise.all([...dirs].map((dir) => fsyncDir(dir)));
  }

  private async syncOne(key: string): Promise<void> {
    const path = this.path(key);
    const background = this.flushing.get(key) ?? this.failed.get(key);
    if (background) {
      try {
        await background;
      } catch (e) {
        throw Object.assign(new Error(`failed to flush ${key}, which was removed: ${String(e)}`), {
          code: 'ENOENT',
        });
      }
    }
    // Flushed again whoever wrote it: another process may have written it and died before its flush.
    const fh = await open(path, constants.O_RDONLY);
    try {
      await fh.datasync();
    } finally {
      await fh.close();
    }
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
    const first = parts[0];
    if (parts.length === 1 && first !== undefined) {
      await link(this.path(first), target);
      await fsyncDir(dirname(target));
      return;
    }
    const dir = join(this.tmp, nonce());
    await mkdir(dir);
    try {
      let offset = 0;
      for (const part of parts) {
        const src = this.path(part);
        const { size } = await stat(src);
        await link(src, join(dir, String(offset).padStart(16, '0')));
        offset += size;
      }
      await fsyncDir(dir);
      await rename(dir, target);
    } catch (e) {
      await rm(dir, { recursive: true, force: true });
      throw e;
    }
    await fsyncDir(dirname(target));
  }

  private async parts(key: string): Promise<Part[]> {
    const path = this.path(key);
    let st;
    try {
      st = await lstat(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw enoent(key);
      throw e;
    }
    if (!st.isDirectory()) return [{ path, start: 0, size: st.size }];
    const names = (await readdir(path)).sort();
    const parts: Part[] = [];
    let start = 0;
    for (const name of names) {
      const { size } = await stat(join(path, name));
      parts.push({ path: join(path, name), start, size });
      start += size;
    }
    return parts;
  }

  async read(key: string, range?: ByteRange): Promise<Readable> {
    const parts = await this.parts(key);
    const first = parts[0];
    if (parts.length === 1 && first) {
      return createReadStream(
        first.path,
        range
          ? { start: range.start, end: range.end, highWaterMark: READ_CHUNK }
          : { highWaterMark: READ_CHUNK },
      );
    }
    const total = parts.reduce((n, p) => n + p.size, 0);
    const from = range?.start ?? 0;
    const to = range?.end ?? total - 1;
    async function* concat(): AsyncGenerator<Buffer> {
      for (const p of parts) {
        const pEnd = p.start + p.size - 1;
        if (pEnd < from || p.start > to || p.size === 0) continue;
        const s = createReadStream(p.path, {
          start: Math.max(from, p.start) - p.start,
          end: Math.min(to, pEnd) - p.start,
          highWaterMark: READ_CHUNK,
        });
        for await (const chunk of s) yield chunk as Buffer;
      }
    }
    return Readable.from(concat(), { objectMode: false, highWaterMark: READ_CHUNK });
  }

  async openReader(key: string): Promise<ObjectReader> {
    const parts = await this.parts(key);
    const size = parts.reduce((n, p) => n + p.size, 0);
    // Reads may run at once (a sender reads ahead), so a part stays open while a read of it is under way. A part
    // is closed once no read uses it and a later one is open: a blob assembled from thousands of chunks does not
    // hold thousands of descriptors.
    const opened = new Map<number, { readonly handle: Promise<FileHandle>; busy: number }>();
    const closeHandle = (entry: { readonly handle: Promise<FileHandle> }): Promise<void> =>
      entry.handle.then(
        (h) => h.close(),
        () => undefined,
      );
    const closeBehind = (index: number): void => {
      for (const [i, entry] of opened) {
        if (i < index && entry.busy === 0) {
          opened.delete(i);
          void closeHandle(entry).catch(() => undefined);
        }
      }
    };
    return {
      size,
      async read(buffer: Buffer, length: number, position: number): Promise<number> {
        // The part holding `position`; a read stops at its end, and the caller asks again for the rest.
        const i = parts.findIndex((p) => position < p.start + p.size);
        if (i < 0) return 0;
        const part = parts[i]!;
        let entry = opened.get(i);
        if (!entry) {
          const handle = open(part.path, 'r').catch((e: unknown) => {
            if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw enoent(key);
            throw e;
          });
          handle.catch(() => undefined);
          entry = { handle, busy: 0 };
          opened.set(i, entry);
        }
        entry.busy++;
        try {
          const within = position - part.start;
          const handle = await entry.handle;
          const { bytesRead } = await handle.read(buffer, 0, Math.min(length, part.size - within), within);
          return bytesRead;
        } finally {
          entry.busy--;
          closeBehind(i);
        }
      },
      async close(): Promise<void> {
        const entries = [...opened.values()];
        opened.clear();
        await Promise.all(entries.map(closeHandle));
      },
    };
  }

  async size(key: string): Promise<number | null> {
    try {
      return (await this.parts(key)).reduce((n, p) => n + p.size, 0);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  async delete(key: string): Promise<void> {
    await rm(this.path(key), { recursive: true, force: true });
    this.failed.delete(key);
  }

  async check(): Promise<void> {
    const probe = join(this.tmp, `ready-${nonce()}`);
    await writeFile(probe, 'ok');
    await unlink(probe);
  }
}

async function* emptySource(): AsyncGenerator<Buffer> {}
