import {
  isValidPattern,
  parseScope,
  parseScopePattern,
  patternMatches,
  patternRegex,
  ScopeError,
} from './scope';

describe('repository patterns', () => {
  it.each([
    ['team/app', 'team/app', true],
    ['team/app', 'team/app2', false],
    ['team/*', 'team/app', true],
    ['team/*', 'team/app/sub', false],
    ['team/*', 'team', false],
    ['team/app-*', 'team/app-1', true],
    ['team/app-*', 'team/web-1', false],
    ['team/**', 'team/app', true],
    ['team/**', 'team/app/sub/x', true],
    ['team/**', 'team', false],
    ['team/**', 'teamx/app', false],
    ['**', 'a', true],
    ['**', 'a/b/c', true],
    ['**/b', 'b', true],
    ['**/b', 'x/y/b', true],
    ['**/b', 'x/y/c', false],
    ['a/**/b', 'a/b', true],
    ['a/**/b', 'a/x/y/b', true],
    ['a/**/b', 'a/x/y/c', false],
    ['*.*', 'a.b', true],
    ['a.b', 'axb', false],
  ])('%s against %s: %s', (pattern, name, expected) => {
    expect(patternMatches(pattern, name)).toBe(expected);
  });

  it('takes linear time on patterns built to make a backtracking matcher blow up', () => {
    const t0 = performance.now();
    expect(patternMatches('*a*a*a*a*a*a*a*a*a*a*a*a*ab', 'a'.repeat(1000))).toBe(false);
    expect(patternMatches('public/*-*-*-*-*-*-slim', `public/${'-'.repeat(1000)}`)).toBe(false);
    expect(patternMatches(`${'**/'.repeat(20)}x`, Array.from({ length: 100 }, () => 'a').join('/'))).toBe(
      false,
    );
    expect(performance.now() - t0).toBeLessThan(200);
  });

  it('accepts the pattern grammar only', () => {
    for (const ok of ['team/app', 'team/*', 'team/**', '**', 'a/**/b', 'team/app-*'])
      expect(isValidPattern(ok)).toBe(true);
    for (const bad of ['', 'Team/app', 'team//app', '/team', 'team/***', 'a b'])
      expect(isValidPattern(bad)).toBe(false);
  });
});

describe('scopes', () => {
  it('parses the token specification grammar, dropping unknown actions', () => {
    expect(parseScope('repository:team/app:pull,push')).toEqual({
      type: 'repository',
      name: 'team/app',
      actions: ['pull', 'push'],
    });
    expect(parseScope('repository:team/app:*')).toEqual({
      type: 'repository',
      name: 'team/app',
      actions: ['pull', 'push', 'delete'],
    });
    expect(parseScope('repository:team/app:pull,fly')).toEqual({
      type: 'repository',
      name: 'team/app',
      actions: ['pull'],
    });
    expect(parseScope('registry:catalog:*')).toEqual({ type: 'registry', name: 'catalog', actions: ['*'] });
    expect(parseScope('repository(plugin):team/app:pull').name).toBe('team/app');
  });

  it.each([
    'nonsense',
    'repository::pull',
    'repository:Team/App:pull',
    'registry:foo:*',
    'blob:x:pull',
    'x'.repeat(2000),
  ])('refuses %s', (scope) => {
    expect(() => parseScope(scope)).toThrow(ScopeError);
  });

  it('parses command-line token scopes with patterns', () => {
    expect(parseScopePattern('repository:team/**:pull,push')).toEqual({
      pattern: 'team/**',
      actions: ['pull', 'push'],
    });
    expect(() => parseScopePattern('repository:team/**:fly')).toThrow(ScopeError);
  });
});

describe('patternRegex', () => {
  const patterns = [
    '**',
    'team/**',
    'team/*',
    'team/app',
    'team/app-*',
    '*/app',
    'a/**/b',
    '**/b',
    'a.b/*',
    'x*y/**/z*',
  ];
  const names = [
    'team',
    'team/app',
    'team/app-1',
    'team/app/x',
    'other/app',
    'a/b',
    'a/x/y/b',
    'a/b/c',
    'b',
    'x/b',
    'a.b/c',
    'axb/c',
    'xy/z',
    'xqy/k/zz',
    'xy/k',
  ];

  it('accepts exactly the names patternMatches accepts (the SQL filters of the UI API use it)', () => {
    for (const p of patterns)
      for (const n of names)
        expect([p, n, new RegExp(patternRegex(p)).test(`${n}/`)]).toEqual([p, n, patternMatches(p, n)]);
  });
});
