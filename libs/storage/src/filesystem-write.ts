import { link, mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DIRECT_ALIGN, DirectAppender } from './direct-io';
import { DeferredFlushes, fsyncDir } from './filesystem-sync';
import { nonce } from './paths';
import { streamed } from './reclaim';

/** Flush written data every this many bytes while a write goes on, so the final fsync has little left to do. */
const SYNC_EVERY = 1024 * 1024;
const WRITE_BATCH = 1024 * 1024;

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

/** One object to write: streamed into a file of the process's temp directory, then renamed into place. */
export interface ObjectWrite {
  readonly key: string;
  readonly target: string;
  /** The process's temp directory. */
  readonly tmpDir: string;
  readonly durable: boolean;
  readonly blobOffset: number;
  /** Whether bytes past the blob's first `cachedHead` may go to the disk directly (see direct-io.ts). */
  readonly directIo: boolean;
  readonly cachedHead: number;
  /** The filesystem turned a direct write down after all: later writes need not try. */
  readonly directFellBack: () => void;
  /** Where a write with `durable: false` leaves its flush. */
  readonly flushes: DeferredFlushes;
}

/** Streams `source` into a new object (see `BlobStorage.write`); resolves with its size. */
export async function writeObject(source: AsyncIterable<Buffer>, w: ObjectWrite): Promise<number> {
  const { key, target, durable, blobOffset } = w;
  const tmp = join(w.tmpDir, nonce());
  const fh = await open(tmp, 'wx', 0o644);
  let size = 0;
  let unsynced = 0;
  let syncing: Promise<void> | undefined;
  let syncFailure: Error | undefined;
  // Past the blob's cached head, bytes go to the disk directly (see direct-io.ts); undefined until then.
  let direct: DirectAppender | undefined;
  let directTried = !w.directIo;
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
        if (!directTried && blobOffset + size >= w.cachedHead) {
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
      if (appender.fellBack) w.directFellBack();
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
  w.flushes.track(
    key,
    target,
    flushed().finally(() => fh.close()),
  );
  return size;
}

/** The object at `target` made of the files `parts`, in order, by hard links (the layout is drawn in paths.ts). */
export async function composeObject(target: string, parts: readonly string[], tmpDir: string): Promise<void> {
  const first = parts[0];
  if (parts.length === 1 && first !== undefined) {
    await link(first, target);
    await fsyncDir(dirname(target));
    return;
  }
  const dir = join(tmpDir, nonce());
  await mkdir(dir);
  try {
    let offset = 0;
    for (const src of parts) {
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
