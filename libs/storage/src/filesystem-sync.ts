import { constants } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { dirname } from 'node:path';

/** Objects `sync` flushes at once (each flush waits on the thread pool and the disk, not on this thread). */
const SYNC_PARALLEL = 8;

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** The flushes of objects written with `durable: false`, by key: those under way, and those that failed. */
export class DeferredFlushes {
  /** Deferred flushes under way, by key. */
  private readonly flushing = new Map<string, Promise<void>>();
  /** Deferred flushes that failed, so `sync` reports them until the object is deleted. */
  private readonly failed = new Map<string, Promise<void>>();

  /** `background` flushes the object at `key`, whose file is `path`. */
  track(key: string, path: string, background: Promise<void>): void {
    this.flushing.set(key, background);
    const settled = (failed: boolean) => (): void => {
      if (this.flushing.get(key) !== background) return;
      this.flushing.delete(key);
      if (!failed) return;
      this.failed.set(key, background);
      // Bytes whose flush failed may never reach the disk, and only this process saw the error (another file
      // descriptor's fsync would not report it): the object goes, so a commit anywhere finds it missing.
      rm(path, { force: true }).catch(() => undefined);
    };
    background.then(settled(false), settled(true));
  }

  /** Waits for the deferred flush of `key`, if any; rejects (code ENOENT) when it failed. */
  async settled(key: string): Promise<void> {
    const background = this.flushing.get(key) ?? this.failed.get(key);
    if (!background) return;
    try {
      await background;
    } catch (e) {
      throw Object.assign(new Error(`failed to flush ${key}, which was removed: ${String(e)}`), {
        code: 'ENOENT',
      });
    }
  }

  /** The object at `key` is deleted: its failed flush is no longer reported. */
  forget(key: string): void {
    this.failed.delete(key);
  }
}

/** Makes the objects at `keys` durable (see `BlobStorage.sync`); `pathOf` names an object's file. */
export async function syncObjects(
  keys: readonly string[],
  pathOf: (key: string) => string,
  flushes: DeferredFlushes,
): Promise<void> {
  // Several at once: an upload of many chunks waits for the slowest flush, not for the sum of them.
  const queue = [...new Set(keys)];
  const dirs = new Set<string>();
  let failed = false;
  const syncOne = async (key: string): Promise<void> => {
    const path = pathOf(key);
    await flushes.settled(key);
    // Flushed again whoever wrote it: another process may have written it and died before its flush.
    const fh = await open(path, constants.O_RDONLY);
    try {
      await fh.datasync();
    } finally {
      await fh.close();
    }
  };
  const worker = async (): Promise<void> => {
    for (let key = queue.shift(); key !== undefined && !failed; key = queue.shift()) {
      try {
        await syncOne(key);
      } catch (e) {
        failed = true;
        throw e;
      }
      dirs.add(dirname(pathOf(key)));
    }
  };
  // On a failure the other flushes under way end before it is reported, and no new one starts.
  const results = await Promise.allSettled(
    Array.from({ length: Math.min(SYNC_PARALLEL, queue.length) }, worker),
  );
  for (const r of results) if (r.status === 'rejected') throw r.reason;
  await Promise.all([...dirs].map((dir) => fsyncDir(dir)));
}
