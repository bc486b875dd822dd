import { isLoopbackHost } from './tls';

describe('isLoopbackHost', () => {
  it.each(['127.0.0.1', '127.10.0.3', '::1', 'localhost', 'LOCALHOST', '::ffff:127.0.0.1'])(
    'counts %s as this machine only',
    (host) => expect(isLoopbackHost(host)).toBe(true),
  );
  it.each([
    '0.0.0.0',
    '::',
    '10.0.0.5',
    '128.0.0.1',
    'registry.example.com',
    '::ffff:10.0.0.1',
    'localhost.com',
  ])('counts %s as reachable from elsewhere', (host) => expect(isLoopbackHost(host)).toBe(false));
});
