import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { EmbeddedPostgresError } from './embedded-cluster';
import { liveProcess } from './postmaster-pid';

/** The pid in `<dir>/owner.pid`: the process that started the running postmaster; 0 if none. */
export async function readOwnerPid(dir: string): Promise<number> {
  const pid = Number(await readFile(join(dir, 'owner.pid'), 'utf8').catch(() => ''));
  return pid > 0 ? pid : 0;
}

/**
 * One process per data directory: an abstract Unix socket named after the directory (its device and inode) is
 * bound for as long as this process runs the cluster. The kernel lets one process bind it, and releases it when
 * that process dies however it dies, so there is no stale lock to judge. Linux only (so is the embedded build);
 * elsewhere `postmaster.pid` alone guards the directory.
 */
export class DataDirLock {
  private server: Server | undefined;
  private owned = false;

  constructor(private readonly dir: string) {}

  /** Held from start to stop, so one process at a time runs its cluster. */
  get held(): boolean {
    return this.owned;
  }

  async take(): Promise<void> {
    if (this.owned) return;
    if (process.platform === 'linux') {
      await mkdir(this.dir, { recursive: true, mode: 0o755 });
      const { dev, ino } = await stat(this.dir);
      const server = createServer();
      try {
        await new Promise<void>((res, rej) => {
          server.once('error', rej);
          server.listen({ path: `\0strata-embedded-postgres-${dev}-${ino}`, exclusive: true }, () => res());
        });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e;
        const owner = await this.currentOwner();
        throw new EmbeddedPostgresError(
          `it is in use by ${owner > 0 ? `process ${owner}` : 'another process'}; one process per data directory on the embedded database`,
        );
      }
      server.unref();
      this.server = server;
    }
    this.owned = true;
    await writeFile(join(this.dir, 'owner.pid'), `${process.pid}\n`);
  }

  release(): void {
    this.server?.close();
    this.server = undefined;
    this.owned = false;
  }

  /** The pid in owner.pid, given a moment to be written by a holder that has just taken the lock; 0 if none. */
  private async currentOwner(): Promise<number> {
    for (let i = 0; ; i++) {
      const pid = await readOwnerPid(this.dir);
      if ((pid > 0 && pid !== process.pid && (await liveProcess(pid))) || i >= 20) return pid;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
