import { RegistryError } from './errors';
import { isValidName, isValidTag, parseDigest } from './grammar';

const SHA256 = `sha256:${'a'.repeat(64)}`;

describe('repository names', () => {
  it.each(['a', 'library/ubuntu', 'a/b/c', 'my-app', 'my__app', 'a.b_c-d', 'x0/y1', 'a--b'])(
    'accepts %s',
    (n) => expect(isValidName(n)).toBe(true),
  );
  it.each(['', 'A', 'a/', '/a', 'a//b', 'a_', '-a', 'a___b', 'a/../b', 'a b', 'ä', 'a'.repeat(256)])(
    'refuses %j',
    (n) => expect(isValidName(n)).toBe(false),
  );
});

describe('tags', () => {
  it.each(['latest', 'v1.0', '_x', 'A-b_c.d', 'x'.repeat(128)])('accepts %s', (t) =>
    expect(isValidTag(t)).toBe(true),
  );
  it.each(['', '.x', '-x', 'a/b', 'x'.repeat(129), 'a:b'])('refuses %j', (t) =>
    expect(isValidTag(t)).toBe(false),
  );
});

describe('digests', () => {
  it('parses sha256 and sha512', () => {
    expect(parseDigest(SHA256)).toEqual({ algorithm: 'sha256', hex: 'a'.repeat(64), digest: SHA256 });
    expect(parseDigest(`sha512:${'b'.repeat(128)}`).algorithm).toBe('sha512');
  });

  it.each([
    'sha256:abc',
    `sha256:${'A'.repeat(64)}`,
    'nocolon',
    'sha256:',
    `sha256:${'g'.repeat(64)}`,
    ':' + 'a'.repeat(64),
  ])('refuses %j as DIGEST_INVALID', (d) => {
    expect(() => parseDigest(d)).toThrow(RegistryError);
    try {
      parseDigest(d);
    } catch (e) {
      expect((e as RegistryError).code).toBe('DIGEST_INVALID');
    }
  });

  it('refuses an algorithm it does not compute as UNSUPPORTED', () => {
    try {
      parseDigest('md5:d41d8cd98f00b204e9800998ecf8427e');
      throw new Error('not refused');
    } catch (e) {
      expect((e as RegistryError).code).toBe('UNSUPPORTED');
      expect((e as RegistryError).status).toBe(400);
    }
  });
});
