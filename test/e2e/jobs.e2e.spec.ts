import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { sql } from 'kysely';
import { systemMeta } from '@strata/events';
import { UploadService } from '@strata/registry';
import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { Writable } from 'node:stream';
import pino from 'pino';
import { createPool } from '@strata/db';
import { FilesystemDriver } from '@strata/storage';
import { ExpireUploadsJob } from '../../apps/registry/src/jobs/expire-uploads.job';
import { JOB_LOCKS, withJobLock } from '../../apps/registry/src/jobs/job-lock';
import { tempDirName } from '../../libs/storage/src/temp-owner';
import { startTestApp, type TestApp } from '../support/test-app';

describe('the expire-uploads job', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(async () => {
    expect(t.serverErrors()).toEqual([]);
    await t.close();
  });

  async function chunkFiles(): Promise<string[]> {
    const dir = join(t.dataDir, 'storage', 'uploads');
    const out: string[] = [];
    for (const prefix of await readdir(dir)) out.push(...(await readdir(join(dir, prefix))));
    return out;
  }

  it('removes only uploads idle past the TTL, with their bytes, and records each as an event of system:expire-uploads', async () => {
    const stale = await fetch(`${t.url}/v2/jobs/app/blobs/uploads/`, { method: 'POST' });
    const staleLocation = stale.headers.get('location')!;
    await fetch(`${t.url}${staleLocation}`, { method: 'PATCH', body: Buffer.alloc(1000, 7) });
    const fresh = await fetch(`${t.url}/v2/jobs/app/blobs/uploads/`, { method: 'POST' });
    const freshLocation = fresh.headers.get('location')!;
    const staleId = staleLocation.split('/').pop()!;
    await t.database.db
      .updateTable('uploads')
      .set({ updated_at: sql<Date>`now() - interval '2 hours'` })
      .where('id', '=', staleId)
      .execute();
    expect((await chunkFiles()).some((f) => f.startsWith(staleId))).toBe(true);

    const uploads = t.app.get(UploadService);
    const removed = await withJobLock(t.runtime.pool, 'expire-uploads', () =>
      uploads.expireIdle(3600, systemMeta('expire-uploads')),
    );
    expect(removed).toBe(1);

    expect((await fetch(`${t.url}${staleLocation}`)).status).toBe(404);
    expect((await fetch(`${t.url}${freshLocation}`)).status).toBe(204);
    expect((await chunkFiles()).some((f) => f.startsWith(staleId))).toBe(false);
    const events = await t.database.db
      .selectFrom('events')
      .select(['type', 'actor', 'subject'])
      .where('type', '=', 'upload.expired')
      .execute();
    expect(events).toEqual([{ type: 'upload.expired', actor: 'system:expire-uploads', subject: staleId }]);
  });

  it('runs on one replica at a time: a second holder of the lock gets nothing to do', async () => {
    let inner: number | null = -1;
    const outer = await withJobLock(t.runtime.pool, 'expire-uploads', async () => {
      inner = await withJobLock(t.runtime.pool, 'expire-uploads', () => Promise.resolve(1));
      return 2;
    });
    expect(outer).toBe(2);
    expect(inner).toBeNull();
  });
  it('with the database away, warns in one line and still removes the leftovers of dead processes', async () => {
    const lines: Record<string, unknown>[] = [];
    const logger = pino(
      { level: 'info', formatters: { level: (l) => ({ level: l }) } },
      new Writable({
        write(chunk: Buffer, _enc, cb) {
          for (const l of chunk.toString('utf8').split('\n'))
            if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
          cb();
        },
      }),
    );
    const child = spawn(process.execPath, ['-e', '']);
    await new Promise((r) => child.once('exit', r));
    const dead = tempDirName('00ff').replace(`.${process.pid}.`, `.${child.pid!}.`);
    const storage = new FilesystemDriver(join(t.dataDir, 'storage'), { directIo: false });
    await storage.init();
    await mkdir(join(t.dataDir, 'storage', 'tmp', dead), { recursive: true });
    await writeFile(join(t.dataDir, 'storage', 'tmp', dead, 'partial'), Buffer.alloc(100));
    // Nothing listens on port 1: every connection is refused, as while the database restarts.
    const away = createPool({ connectionString: 'postgres://postgres@127.0.0.1:1/none' });
    try {
      const job = new ExpireUploadsJob(
        t.app.get(UploadService),
        away,
        t.runtime.config,
        logger,
        storage,
        null,
      );
      await job.tick();
    } finally {
      await away.end();
    }
    expect(lines.filter((l) => l.level === 'error')).toEqual([]);
    const warned = lines.filter((l) => l.level === 'warn');
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatchObject({ msg: 'failed to expire idle uploads: the database is unavailable' });
    expect(warned[0]).not.toHaveProperty('err');
    expect(lines.some((l) => l.msg === 'removed partial writes of dead processes')).toBe(true);
    expect(await readdir(join(t.dataDir, 'storage', 'tmp'))).not.toContain(dead);
  });

  it('keeps what the job did when the database ends the session holding its lock, and frees the lock', async () => {
    const result = await withJobLock(t.runtime.pool, 'expire-uploads', async () => {
      await sql`
        SELECT pg_terminate_backend(pid) FROM pg_locks
        WHERE locktype = 'advisory' AND objid = ${JOB_LOCKS['expire-uploads']} AND granted`.execute(
        t.database.db,
      );
      return 42;
    });
    expect(result).toBe(42);
    expect(await withJobLock(t.runtime.pool, 'expire-uploads', () => Promise.resolve(1))).toBe(1);
    await expect(sql`SELECT 1`.execute(t.runtime.db)).resolves.toBeDefined();
  });
});
