import {
  ADDRESS_FAILURES_ALLOWED,
  clientKey,
  FAILURE_WINDOW_MS,
  FAILURES_ALLOWED,
  FailureTracker,
} from './failures';

describe('failed-login tracking', () => {
  it('keys IPv4 by address and IPv6 by its /64', () => {
    expect(clientKey('10.1.2.3')).toBe('10.1.2.3');
    expect(clientKey('::ffff:10.1.2.3')).toBe('10.1.2.3');
    expect(clientKey('2001:db8:0:1:aaaa::1')).toBe('2001:db8:0:1::/64');
    expect(clientKey('2001:db8:0:1:bbbb:cccc:dddd:eeee')).toBe('2001:db8:0:1::/64');
    expect(clientKey('2001:db8::1')).toBe('2001:db8:0:0::/64');
    expect(clientKey('::1')).toBe('0:0:0:0::/64');
    expect(clientKey(null)).toBe('');
  });

  it('counts an attempt when it starts, refunds a success, and makes the address wait past the allowance', () => {
    const f = new FailureTracker();
    const now = 1_000_000;
    for (let i = 0; i < FAILURES_ALLOWED; i++) expect(f.begin('a', 'x', now)).toBe(0);
    // All still being checked: the next is refused already.
    expect(f.begin('a', 'x', now)).toBe(FAILURE_WINDOW_MS);
    f.succeeded('a', 'x');
    expect(f.begin('a', 'x', now)).toBe(0);
    // Another name from the same address is not held up until the address sprays.
    expect(f.begin('a', 'y', now)).toBe(0);
    expect(f.begin('a', 'x', now + FAILURE_WINDOW_MS)).toBe(0);
  });

  it('limits one address across names', () => {
    const f = new FailureTracker();
    for (let i = 0; i < ADDRESS_FAILURES_ALLOWED; i++) expect(f.begin('a', `n${i}`, 0)).toBe(0);
    expect(f.begin('a', 'fresh', 0)).toBeGreaterThan(0);
  });

  it('reports each address at most once a window, with the counts since its last report', () => {
    const f = new FailureTracker();
    f.begin('a', 'x', 0);
    f.failed('a', 'x', 0);
    expect(f.due(0)).toEqual([{ address: 'a', failures: 1, refused: 0, accounts: ['x'] }]);
    f.begin('a', 'y', 10);
    f.failed('a', 'y', 10);
    expect(f.due(20)).toEqual([]);
    expect(f.due(FAILURE_WINDOW_MS)).toEqual([{ address: 'a', failures: 1, refused: 0, accounts: ['y'] }]);
  });
});
