import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultMaxConnections, FD_RESERVE, openFileLimit, REFUSED_MAX } from '../http/connection-guard';
import { ConfigError, loadConfig } from './config';

function errorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('expected a ConfigError');
}

/** A temp directory for config files, removed after the test file. */
const dirs: string[] = [];
function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'strata-config-'));
  dirs.push(dir);
  return dir;
}
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe('loadConfig', () => {
  it('has defaults for everything but the database', () => {
    const c = loadConfig({});
    expect(c.databaseUrl).toBeNull();
    expect(c.port).toBe(5000);
    expect(c.host).toBe('0.0.0.0');
    expect(c.storage).toBe('filesystem');
    expect(c.dataDir).toMatch(/\/data$/);
    expect(c.uploadTtlSeconds).toBe(86400);
    expect(c.directIo).toBe(true);
    expect(c.directIoAfter).toBe(64 * 1024 * 1024);
    expect(c.dbIdleInTransactionSeconds).toBe(60);
    expect(c.headerTimeoutMs).toBe(30_000);
    expect(c.clientIdleTimeoutMs).toBe(60_000);
    expect(c.keepAliveTimeoutMs).toBe(65_000);
    expect(c.maxConnections).toBe(defaultMaxConnections(openFileLimit()));
    expect(c.maxConnectionsPerClient).toBe(256);
  });

  it.each([
    ['PORT', 'abc'],
    ['PORT', '70000'],
    ['STRATA_STORAGE', 's3'],
    ['STRATA_UPLOAD_TTL', 'forever'],
    ['DATABASE_URL', 'mysql://x'],
    ['DATABASE_URL', 'not a url'],
    ['STRATA_MIGRATE_ON_BOOT', 'maybe'],
    ['STRATA_LOG_LEVEL', 'loud'],
    ['STRATA_DIRECT_IO', 'sometimes'],
    ['STRATA_DIRECT_IO_AFTER', '64M'],
    ['STRATA_DB_IDLE_IN_TRANSACTION', '0'],
    ['STRATA_DB_IDLE_IN_TRANSACTION', '30d'],
    ['STRATA_HEADER_TIMEOUT', '0'],
    ['STRATA_HEADER_TIMEOUT', '30d'],
    ['STRATA_CLIENT_IDLE_TIMEOUT', 'never'],
    ['STRATA_KEEPALIVE_TIMEOUT', '-1'],
    ['STRATA_MAX_CONNECTIONS', '0'],
    ['STRATA_MAX_CONNECTIONS', 'many'],
    ['STRATA_MAX_CONNECTIONS_PER_IP', '1.5'],
  ])('names %s when it is %j', (key, value) => {
    const e = errorOf(() => loadConfig({ [key]: value }));
    expect(e.key).toBe(key);
    expect(e.message).toContain(key);
    expect(e.message).not.toContain('\n');
  });

  it('parses durations', () => {
    expect(loadConfig({ STRATA_UPLOAD_TTL: '15m' }).uploadTtlSeconds).toBe(900);
    expect(loadConfig({ STRATA_UPLOAD_TTL: '90' }).uploadTtlSeconds).toBe(90);
    expect(loadConfig({ STRATA_DB_IDLE_IN_TRANSACTION: '2m' }).dbIdleInTransactionSeconds).toBe(120);
  });

  it('parses the connection timeouts and limits', () => {
    const c = loadConfig({
      STRATA_HEADER_TIMEOUT: '5s',
      STRATA_CLIENT_IDLE_TIMEOUT: '2m',
      STRATA_KEEPALIVE_TIMEOUT: '75',
      STRATA_MAX_CONNECTIONS: '100',
      STRATA_MAX_CONNECTIONS_PER_IP: '0',
    });
    expect([c.headerTimeoutMs, c.clientIdleTimeoutMs, c.keepAliveTimeoutMs]).toEqual([5000, 120_000, 75_000]);
    expect([c.maxConnections, c.maxConnectionsPerClient]).toEqual([100, 0]);
  });

  it('keeps the connection limit under the open-file limit, with room for the rest of the process', () => {
    expect(defaultMaxConnections(1024)).toBe(1024 - FD_RESERVE - REFUSED_MAX);
    expect(defaultMaxConnections(1_048_576)).toBe(4096);
    expect(defaultMaxConnections(null)).toBe(4096);
    const limit = openFileLimit();
    if (limit === null) return;
    const e = errorOf(() => loadConfig({ STRATA_MAX_CONNECTIONS: String(limit) }));
    expect(e.key).toBe('STRATA_MAX_CONNECTIONS');
    expect(e.message).toContain(`open-file limit of ${limit}`);
  });

  it('reads a YAML file, overridden by the environment', () => {
    const dir = tempDir();
    const file = join(dir, 'strata.yaml');
    writeFileSync(file, 'PORT: 6000\nSTRATA_STORAGE: postgres\n');
    expect(loadConfig({ STRATA_CONFIG: file }).port).toBe(6000);
    expect(loadConfig({ STRATA_CONFIG: file }).storage).toBe('postgres');
    expect(loadConfig({ STRATA_CONFIG: file, PORT: '7000' }).port).toBe(7000);
  });

  it('names an unknown key of a file and a bad file', () => {
    const dir = tempDir();
    const file = join(dir, 'strata.json');
    writeFileSync(file, '{"PROT": 1}');
    expect(errorOf(() => loadConfig({ STRATA_CONFIG: file })).key).toBe('PROT');
    expect(errorOf(() => loadConfig({ STRATA_CONFIG: join(dir, 'missing.yaml') })).key).toBe('STRATA_CONFIG');
  });
});

/** A self-signed certificate and its key, made by openssl in a temp directory. */
function selfSigned(dir: string, name: string): { cert: string; key: string } {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1'].concat([
      '-subj',
      `/CN=${name}`,
      '-keyout',
      key,
      '-out',
      cert,
    ]),
    { stdio: 'ignore' },
  );
  return { cert, key };
}

describe('TLS settings', () => {
  it('are off unless set', () => {
    expect(loadConfig({}).tls).toBeNull();
  });

  it('take a certificate and its key, as absolute paths', () => {
    const dir = tempDir();
    const { cert, key } = selfSigned(dir, 'a');
    expect(loadConfig({ STRATA_TLS_CERT: cert, STRATA_TLS_KEY: key }).tls).toEqual({
      certFile: cert,
      keyFile: key,
    });
  });

  it.each([
    ['STRATA_TLS_KEY', 'a certificate without a key', { STRATA_TLS_CERT: 'a.crt' }],
    ['STRATA_TLS_CERT', 'a key without a certificate', { STRATA_TLS_KEY: 'a.key' }],
  ])('name %s for %s', (key, _what, env) => {
    const e = errorOf(() => loadConfig(env));
    expect(e.key).toBe(key);
    expect(e.message).toContain(key);
    expect(e.message).not.toContain('\n');
  });

  it('name the file that cannot be read, is not PEM, or does not belong to the other', () => {
    const dir = tempDir();
    const a = selfSigned(dir, 'a');
    const b = selfSigned(dir, 'b');
    const garbage = join(dir, 'garbage.pem');
    writeFileSync(garbage, 'not a certificate\n');
    const cases: [Record<string, string>, string, string][] = [
      [{ STRATA_TLS_CERT: join(dir, 'missing.crt'), STRATA_TLS_KEY: a.key }, 'STRATA_TLS_CERT', 'ENOENT'],
      [{ STRATA_TLS_CERT: a.cert, STRATA_TLS_KEY: join(dir, 'missing.key') }, 'STRATA_TLS_KEY', 'ENOENT'],
      [{ STRATA_TLS_CERT: garbage, STRATA_TLS_KEY: a.key }, 'STRATA_TLS_CERT', 'not a PEM certificate'],
      [{ STRATA_TLS_CERT: a.cert, STRATA_TLS_KEY: garbage }, 'STRATA_TLS_KEY', 'not an unencrypted PEM'],
      [
        { STRATA_TLS_CERT: a.cert, STRATA_TLS_KEY: b.key },
        'STRATA_TLS_KEY',
        'not the key of the certificate',
      ],
    ];
    for (const [env, key, reason] of cases) {
      const e = errorOf(() => loadConfig(env));
      expect([e.key, e.message]).toEqual([key, expect.stringContaining(reason)]);
      expect(e.message).not.toContain('\n');
    }
  });
});
