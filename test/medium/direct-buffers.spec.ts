import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DirectAppender,
  directBuffersHeld,
  directBuffersLent,
  directWritesWork,
  releaseIdleDirectBuffers,
} from '../../libs/storage/src/direct-io';

describe('the aligned buffer pool', () => {
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'strata-pool-'));
  });
  afterAll(() => rm(dir, { recursive: true, force: true }));

  it('gives up, when the process goes quiet, every memory no writer is using, and only those', async () => {
    if (!(await directWritesWork(dir, 'probe'))) return; // a filesystem without O_DIRECT: no appender to open
    const plain = await Promise.all([0, 1, 2, 3, 4].map((i) => open(join(dir, `f${i}`), 'w')));
    const appenders = await Promise.all(plain.map((fh, i) => DirectAppender.open(join(dir, `f${i}`), fh, 0)));
    expect(appenders.every((a) => a !== undefined)).toBe(true);
    expect(directBuffersLent()).toBe(15);
    const slabs = directBuffersHeld();
    expect(slabs).toBeGreaterThanOrEqual(16);

    // One writer goes on: its memories stay, with nothing else.
    for (const a of appenders.slice(1)) await a!.finish();
    expect(directBuffersLent()).toBe(3);
    releaseIdleDirectBuffers();
    expect(directBuffersHeld()).toBeGreaterThanOrEqual(3);
    expect(directBuffersHeld()).toBeLessThanOrEqual(16); // its 3 buffers lie in at most two memories of 8
    expect(directBuffersHeld()).toBeLessThan(slabs);

    await appenders[0]!.finish();
    releaseIdleDirectBuffers();
    expect(directBuffersLent()).toBe(0);
    expect(directBuffersHeld()).toBe(0);
    await Promise.all(plain.map((fh) => fh.close()));
  });
});
