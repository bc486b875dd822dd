import { createHash, randomBytes } from 'node:crypto';
import { nativeDigester, ResumableSha256, SHA256_STATE_BYTES } from './hashers';

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
