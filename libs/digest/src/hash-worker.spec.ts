import { Readable } from 'node:stream';
import { createHash, randomBytes } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { NativeHashCache, ResumableSha256 } from './hashers';
import { HashWorker, tapAsync, type WorkerDigester } from './hash-worker';

function pieces(data: Buffer, size: number): AsyncIterable<Buffer> {
  const parts: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) parts.push(data.subarray(i, i + size));
  return Readable.from(parts);
}

const sha = (data: Buffer, algorithm = 'sha256'): string => createHash(algorithm).update(data).digest('hex');

async function feed(d: WorkerDigester, data: Buffer, piece: number): Promise<void> {
  for await (const _ of tapAsync(pieces(data, piece), d)) void _;
}

describe('HashWorker', () => {
  const worker = new HashWorker();
  afterAll(() => worker.close());

  it('saves a resumable state that hash-wasm continues to the same digest as one native pass', async () => {
    const data = randomBytes(20 * 1024 * 1024 + 5);
    const cut = 7 * 1024 * 1024 + 3;
    const first = await worker.continueOver(null, pieces(data.subarray(0, cut), 65536));
    const second = await worker.continueOver(first, pieces(data.subarray(cut), 1 << 20));
    const h = await ResumableSha256.create(second);
    expect(h.hex()).toBe(sha(data));
  });

  it('runs interleaved resumable jobs independently', async () => {
    const a = randomBytes(3 << 20);
    const b = randomBytes(5 << 20);
    const [sa, sb] = await Promise.all([
      worker.continueOver(null, pieces(a, 4096 * 16)),
      worker.continueOver(null, pieces(b, 1 << 20)),
    ]);
    expect((await ResumableSha256.create(sa)).hex()).toBe(sha(a));
    expect((await ResumableSha256.create(sb)).hex()).toBe(sha(b));
  });

  it('refuses a state of the wrong size', async () => {
    await expect(worker.continueOver(Buffer.alloc(3), pieces(Buffer.alloc(1), 1))).rejects.toThrow(
      /bad SHA-256 state/,
    );
  });

  it('hashes natively, sha256 and sha512, giving digests along the way without ending the hash', async () => {
    const data = randomBytes(12 * 1024 * 1024 + 17);
    const d = worker.native('sha256');
    await feed(d, data.subarray(0, 5_000_000), 65536);
    expect(await d.digest()).toBe(sha(data.subarray(0, 5_000_000)));
    await feed(d, data.subarray(5_000_000), 1 << 20);
    expect(await d.digest()).toBe(sha(data));
    d.drop();
    const e = worker.native('sha512');
    await feed(e, data, 100_000);
    expect(await e.digest()).toBe(sha(data, 'sha512'));
    e.drop();
  });

  it('forks a native hash: the fork and the original go on independently', async () => {
    const a = worker.native('sha256');
    void a.update(Buffer.from('ab'));
    const loser = a.fork();
    void loser.update(Buffer.from('zzz'));
    const winner = a.fork();
    void winner.update(Buffer.from('c'));
    expect(await winner.digest()).toBe(sha(Buffer.from('abc')));
    expect(await loser.digest()).toBe(sha(Buffer.from('abzzz')));
    expect(await a.digest()).toBe(sha(Buffer.from('ab')));
    for (const d of [a, loser, winner]) d.drop();
  });

  it('refuses to fork a dropped hash', () => {
    const a = worker.native('sha256');
    a.drop();
    expect(a.alive).toBe(false);
    expect(() => a.fork()).toThrow(/no longer alive/);
  });
});

describe('HashWorker and the garbage collector', () => {
  it('keeps a digester that waits for the worker, and whoever awaits it, alive though nothing else refers to them', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const worker = new HashWorker();
    try {
      const warm = randomBytes(1 << 20);
      expect(
        (await ResumableSha256.create(await worker.continueOver(null, pieces(warm, 1 << 20)))).hex(),
      ).toBe(sha(warm));
      // One resumable update of 128 MiB keeps the worker busy for a few hundred milliseconds, so the acks of
      // what is fed next come late, after the collections below.
      const busy = worker.continueOver(null, pieces(Buffer.alloc(128 << 20), 128 << 20));
      await new Promise((r) => setTimeout(r, 100));
      const data = randomBytes(8 << 20);
      // Only the promise is kept: the digester, the generator feeding it and this function's frame are reachable
      // from the worker's bookkeeping alone while it waits (as a request's are, its socket being paused).
      const fed = (async () => {
        const d = worker.native('sha256');
        await feed(d, data, 1 << 20);
        const hex = await d.digest();
        d.drop();
        return hex;
      })();
      await new Promise((r) => setImmediate(r));
      gc();
      gc();
      const timeout = new Promise<string>((r) => setTimeout(() => r('never settled'), 10_000).unref());
      expect(await Promise.race([fed, timeout])).toBe(sha(data));
      await busy;
    } finally {
      await worker.close();
    }
  });
});

describe('HashWorker when idle', () => {
  it('stops its worker once nothing is in use, and starts another for the next job', async () => {
    const worker = new HashWorker(50);
    try {
      const data = randomBytes(1 << 20);
      const d = worker.native('sha256');
      await feed(d, data, 65536);
      expect(await d.digest()).toBe(sha(data));
      await new Promise((r) => setTimeout(r, 200));
      expect(worker.running).toBe(true);
      d.drop();
      await new Promise((r) => setTimeout(r, 300));
      expect(worker.running).toBe(false);
      const state = await worker.continueOver(null, pieces(data, 65536));
      expect((await ResumableSha256.create(state)).hex()).toBe(sha(data));
    } finally {
      await worker.close();
    }
  });
});

describe('HashWorker when its thread is gone', () => {
  it('lets a digester being fed go on without waiting, refuses its digest, and has the cache forget it', async () => {
    const worker = new HashWorker();
    const cache = new NativeHashCache<WorkerDigester>();
    const d = worker.native('sha256');
    cache.set('u', 0, d);
    const fed = worker.native('sha256');
    await feed(fed, randomBytes(2 << 20), 65536);
    await worker.close();
    // 32 MiB more than may ever be in flight: a digester that still counted on acks would wait forever here.
    await feed(fed, randomBytes(32 << 20), 1 << 20);
    await expect(fed.digest()).rejects.toThrow(/hash worker stopped/);
    expect(d.alive).toBe(false);
    expect(cache.forkAt('u', 0)).toBeNull();
    expect(cache.size).toBe(0);
  });
});

describe('NativeHashCache', () => {
  const worker = new HashWorker();
  afterAll(() => worker.close());

  it('forks the hash at the offset it covers and leaves the cached one untouched', async () => {
    const cache = new NativeHashCache<WorkerDigester>();
    const d = worker.native('sha256');
    void d.update(Buffer.from('ab'));
    cache.set('u', 2, d);
    const loser = cache.forkAt('u', 2)!;
    void loser.update(Buffer.from('zzz'));
    const winner = cache.forkAt('u', 2)!;
    void winner.update(Buffer.from('c'));
    expect(await winner.digest()).toBe(sha(Buffer.from('abc')));
    cache.clear();
  });

  it('forgets, and drops, an upload whose offset moved on elsewhere', async () => {
    const cache = new NativeHashCache<WorkerDigester>();
    const d = worker.native('sha256');
    cache.set('u', 2, d);
    expect(cache.forkAt('u', 5)).toBeNull();
    expect(cache.forkAt('u', 2)).toBeNull();
    expect(cache.size).toBe(0);
    await expect(d.digest()).rejects.toThrow(/failed to hash in worker/);
  });

  it('keeps at most its capacity and nothing older than its age limit', () => {
    const cache = new NativeHashCache<WorkerDigester>(2, 1000);
    cache.set('a', 1, worker.native('sha256'), 0);
    cache.set('b', 1, worker.native('sha256'), 10);
    cache.set('a', 2, worker.native('sha256'), 20);
    cache.set('c', 1, worker.native('sha256'), 30);
    expect(cache.size).toBe(2);
    expect(cache.forkAt('b', 1)).toBeNull();
    cache.sweep(1025);
    expect(cache.size).toBe(1);
    const c = cache.forkAt('c', 1);
    expect(c).not.toBeNull();
    c?.drop();
    cache.clear();
  });
});
