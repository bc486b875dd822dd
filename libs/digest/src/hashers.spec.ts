import { createHash, randomBytes } from 'node:crypto';
import { NativeHashCache, nativeDigester, ResumableSha256, SHA256_STATE_BYTES } from './hashers';

describe('ResumableSha256', () => {
  it('continues from a saved state on a new hasher with the same result as one pass', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 17);
    const expected = createHash('sha256').update(data).digest('hex');
    const cuts = [0, 1, 64, 65, 1024 * 1024 + 3, data.length];
    let state: Buffer | null = null;
    for (let i = 0; i < cuts.length - 1; i++) {
      const h = await ResumableSha256.create(state);
      h.update(data.subarray(cuts[i], cuts[i + 1]));
      state = h.save();
      expect(state).toHaveLength(SHA256_STATE_BYTES);
    }
    const last = await ResumableSha256.create(state);
    expect(last.hex()).toBe(expected);
  });

  it('refuses a state of the wrong size', async () => {
    await expect(ResumableSha256.create(Buffer.alloc(10))).rejects.toThrow(/bad SHA-256 state/);
  });
});

describe('nativeDigester', () => {
  it('computes sha256 and sha512', () => {
    const d = nativeDigester('sha256');
    d.update(Buffer.from('abc'));
    expect(d.hex()).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
    const e = nativeDigester('sha512');
    e.update(Buffer.from(''));
    expect(e.hex()).toMatch(/^cf83e135/);
  });
});

describe('NativeHashCache', () => {
  const abcDigest = 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad';

  it('forks the hasher at the offset it covers and leaves the cached one untouched', () => {
    const cache = new NativeHashCache();
    const d = nativeDigester('sha256');
    d.update(Buffer.from('ab'));
    cache.set('u', 2, d);
    const loser = cache.forkAt('u', 2)!;
    loser.update(Buffer.from('zzz'));
    const winner = cache.forkAt('u', 2)!;
    winner.update(Buffer.from('c'));
    expect(winner.hex()).toBe(abcDigest);
  });

  it('forgets an upload whose offset moved on elsewhere', () => {
    const cache = new NativeHashCache();
    cache.set('u', 2, nativeDigester('sha256'));
    expect(cache.forkAt('u', 5)).toBeNull();
    expect(cache.forkAt('u', 2)).toBeNull();
    expect(cache.size).toBe(0);
  });

  it('keeps at most its capacity, dropping the least recently set', () => {
    const cache = new NativeHashCache(2);
    cache.set('a', 1, nativeDigester('sha256'));
    cache.set('b', 1, nativeDigester('sha256'));
    cache.set('a', 2, nativeDigester('sha256'));
    cache.set('c', 1, nativeDigester('sha256'));
    expect(cache.size).toBe(2);
    expect(cache.forkAt('b', 1)).toBeNull();
    expect(cache.forkAt('a', 2)).not.toBeNull();
    expect(cache.forkAt('c', 1)).not.toBeNull();
  });
});
