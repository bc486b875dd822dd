import { Readable } from 'node:stream';
import { createHash, randomBytes } from 'node:crypto';
import { ResumableSha256 } from './hashers';
import { WorkerSha256Pool } from './worker-sha256';

function pieces(data: Buffer, size: number): AsyncIterable<Buffer> {
  const parts: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) parts.push(data.subarray(i, i + size));
  return Readable.from(parts);
}

describe('WorkerSha256Pool', () => {
  const pool = new WorkerSha256Pool();
  afterAll(() => pool.close());

  it('saves a state that hash-wasm continues to the same digest as one native pass', async () => {
    const data = randomBytes(20 * 1024 * 1024 + 5);
    const cut = 7 * 1024 * 1024 + 3;
    const first = await pool.continueOver(null, pieces(data.subarray(0, cut), 65536));
    const second = await pool.continueOver(first, pieces(data.subarray(cut), 1 << 20));
    const h = await ResumableSha256.create(second);
    expect(h.hex()).toBe(createHash('sha256').update(data).digest('hex'));
  });

  it('runs interleaved jobs independently', async () => {
    const a = randomBytes(3 << 20);
    const b = randomBytes(5 << 20);
    const [sa, sb] = await Promise.all([
      pool.continueOver(null, pieces(a, 4096 * 16)),
      pool.continueOver(null, pieces(b, 1 << 20)),
    ]);
    expect((await ResumableSha256.create(sa)).hex()).toBe(createHash('sha256').update(a).digest('hex'));
    expect((await ResumableSha256.create(sb)).hex()).toBe(createHash('sha256').update(b).digest('hex'));
  });

  it('refuses a state of the wrong size', async () => {
    await expect(pool.continueOver(Buffer.alloc(3), pieces(Buffer.alloc(1), 1))).rejects.toThrow(
      /bad SHA-256 state/,
    );
  });
});

describe('WorkerSha256Pool when idle', () => {
  it('stops its worker after the idle time and starts another for the next job', async () => {
    const pool = new WorkerSha256Pool(50);
    try {
      const data = randomBytes(1 << 20);
      const expected = createHash('sha256').update(data).digest('hex');
      expect((await ResumableSha256.create(await pool.continueOver(null, pieces(data, 65536)))).hex()).toBe(
        expected,
      );
      expect(pool.running).toBe(true);
      await new Promise((r) => setTimeout(r, 300));
      expect(pool.running).toBe(false);
      expect((await ResumableSha256.create(await pool.continueOver(null, pieces(data, 65536)))).hex()).toBe(
        expected,
      );
    } finally {
      await pool.close();
    }
  });
});
