import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { sql } from 'kysely';
import { systemMeta } from '@strata/events';
import { UploadService } from '@strata/registry';
import { withJobLock } from '../../apps/registry/src/jobs/job-lock';
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
});
