import { mkdir, readdir, rm, stat, utimes } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fsyncDir } from './filesystem-sync';
import { tempDirOwner } from './temp-owner';

/** How often a process marks its temp directory as in use, and how long an unmarked one is kept. */
const TEMP_HEARTBEAT_MS = 60 * 1000;
const STALE_TEMP_MS = 3600 * 1000;
const PREFIXES = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/** The directories of the layout (paths.ts) under `root`, made durable. */
export async function prepareRoot(root: string): Promise<void> {
  for (const top of ['blobs', 'uploads']) {
    await mkdir(join(root, top), { recursive: true });
    await Promise.all(PREFIXES.map((p) => mkdir(join(root, top, p), { recursive: true })));
    await fsyncDir(join(root, top));
  }
  await fsyncDir(root);
}

/** The directory's mtime says it is in use, for processes that cannot see this one (another host). */
export function markInUse(tmp: string): void {
  setInterval(() => {
    const now = new Date();
    utimes(tmp, now, now).catch(() => undefined);
  }, TEMP_HEARTBEAT_MS).unref();
}

/**
 * Removes the temp directories beside `tmp` (this process's own) of processes that died; see
 * `FilesystemDriver.removeLeftovers`. Returns how many were removed.
 */
export async function removeDeadTempDirs(tmp: string): Promise<number> {
  const top = dirname(tmp);
  const now = Date.now();
  let removed = 0;
  for (const name of await readdir(top)) {
    const dir = join(top, name);
    if (dir === tmp) continue;
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
