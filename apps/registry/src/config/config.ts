import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { isValidPattern } from '@strata/identity';
import { parse as parseYaml } from 'yaml';
import { connectionsAllowedBy, defaultMaxConnections, openFileLimit } from '../http/connection-guard';
import { readTlsFiles, TlsFileError, type TlsFiles } from '../http/tls';

export type StorageDriverName = 'filesystem' | 'postgres';

export interface Config {
  /** Absent: Strata runs its own embedded PostgreSQL under `<dataDir>/postgres`. */
  readonly databaseUrl: string | null;
  readonly dataDir: string;
  readonly storage: StorageDriverName;
  readonly host: string;
  readonly port: number;
  /** Seconds an upload may stay idle before the expiry job removes it. */
  readonly uploadTtlSeconds: number;
  readonly migrateOnBoot: boolean;
  readonly logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  readonly shutdownTimeoutMs: number;
  readonly dbPoolMax: number;
  /** How long PostgreSQL lets one of our sessions sit in a transaction between statements before ending it. */
  readonly dbIdleInTransactionSeconds: number;
  readonly jobsEnabled: boolean;
  /** Run the storage-maintenance job (drivers that need one: large objects). */
  readonly storageMaintenance: boolean;
  /** Milliseconds between two runs of the storage-maintenance job. */
  readonly storageMaintenanceIntervalMs: number;
  /** Blobs up to this many bytes, pushed in one request, are kept in their database row; 0 turns that off. */
  readonly inlineBlobMax: number;
  /** Answer a chunk before its flush to disk; the commit flushes. Off: every chunk is flushed before its 202. */
  readonly deferChunkSync: boolean;
  /** Filesystem driver: write the bulk of large objects with O_DIRECT, past the page cache, where it works. */
  readonly directIo: boolean;
  /** With `directIo`: bytes at the start of each blob still written through the page cache. */
  readonly directIoAfter: number;
  /** Time a client has to send a request's head (and, under TLS, to finish its handshake). */
  readonly headerTimeoutMs: number;
  /** A client sending none of a request body it owes, or reading none of a response, this long is cut. */
  readonly clientIdleTimeoutMs: number;
  /** How long a connection is kept open for a next request after its last response. */
  readonly keepAliveTimeoutMs: number;
  /** Client connections served at once; beyond them, 503 and then a close at accept. */
  readonly maxConnections: number;
  /** The same per client address (the TCP peer: behind a proxy, the proxy); 0: no limit of its own. */
  readonly maxConnectionsPerClient: number;
  /** HTTPS on `port` with this certificate and key (checked readable and matching at start); null: plain HTTP. */
  readonly tls: TlsFiles | null;
  /** STRATA_AUTH=token: the Docker token flow and permissions; null: every client may do anything (the default). */
  readonly auth: AuthConfig | null;
  /** Serve Prometheus metrics (`GET /metrics`). */
  readonly metrics: boolean;
  /** Serve them on this port alone rather than on the registry's; null: the registry's port. */
  readonly metricsPort: number | null;
}

export interface AuthConfig {
  /** The `service` of challenges and the audience of tokens. */
  readonly service: string;
  readonly issuer: string;
  readonly tokenTtlSeconds: number;
  /** The signing key's PEM file, and whether Strata creates it when missing (the data directory's default). */
  readonly keyFile: string;
  readonly createKey: boolean;
  /** Repository patterns anonymous clients may pull. */
  readonly anonymousPull: string[];
  /** The URL clients reach this registry at, for the challenge's realm; null: taken from each request. */
  readonly externalUrl: string | null;
  /** The first administrator's password, used on a database without accounts. */
  readonly adminPassword: string | null;
  /** Remember verified passwords for a few minutes (false: argon2id at every login; the bench's login storm). */
  readonly loginCache: boolean;
}

export class ConfigError extends Error {
  constructor(
    readonly key: string,
    readonly reason: string,
  ) {
    super(`invalid configuration: ${key}: ${reason}`);
  }
}

type Source = Record<string, string | undefined>;

const KEYS = [
  'DATABASE_URL',
  'STRATA_DATA_DIR',
  'STRATA_STORAGE',
  'HOST',
  'PORT',
  'STRATA_UPLOAD_TTL',
  'STRATA_MIGRATE_ON_BOOT',
  'STRATA_LOG_LEVEL',
  'STRATA_SHUTDOWN_TIMEOUT',
  'STRATA_DB_POOL_MAX',
  'STRATA_DB_IDLE_IN_TRANSACTION',
  'STRATA_JOBS',
  'STRATA_STORAGE_MAINTENANCE',
  'STRATA_STORAGE_MAINTENANCE_INTERVAL',
  'STRATA_INLINE_BLOB_MAX',
  'STRATA_DEFER_CHUNK_SYNC',
  'STRATA_DIRECT_IO',
  'STRATA_DIRECT_IO_AFTER',
  'STRATA_TLS_CERT',
  'STRATA_TLS_KEY',
  'STRATA_HEADER_TIMEOUT',
  'STRATA_CLIENT_IDLE_TIMEOUT',
  'STRATA_KEEPALIVE_TIMEOUT',
  'STRATA_MAX_CONNECTIONS',
  'STRATA_MAX_CONNECTIONS_PER_IP',
  'STRATA_AUTH',
  'STRATA_AUTH_SERVICE',
  'STRATA_AUTH_ISSUER',
  'STRATA_TOKEN_TTL',
  'STRATA_TOKEN_KEY',
  'STRATA_ANONYMOUS_PULL',
  'STRATA_EXTERNAL_URL',
  'STRATA_ADMIN_PASSWORD',
  'STRATA_ADMIN_PASSWORD_FILE',
  'STRATA_LOGIN_CACHE',
  'STRATA_METRICS',
  'STRATA_METRICS_PORT',
] as const;

const DURATION_UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** `90`, `90s`, `15m`, `24h`, `7d` → seconds. */
function parseDuration(key: string, raw: string): number {
  const m = /^(\d+)([smhd]?)$/.exec(raw.trim());
  if (!m)
    throw new ConfigError(
      key,
      `expected a duration such as 3600, 90s, 15m, 24h or 7d, got ${JSON.stringify(raw)}`,
    );
  const seconds = Number(m[1]) * (DURATION_UNITS[m[2] || 's'] ?? 1);
  if (seconds <= 0) throw new ConfigError(key, 'must be greater than zero');
  return seconds;
}

function atMost(key: string, seconds: number, max: number): number {
  if (seconds > max) throw new ConfigError(key, `must be at most ${max} seconds, got ${seconds}`);
  return seconds;
}

function parseIntIn(key: string, raw: string, min: number, max: number): number {
  if (!/^\d+$/.test(raw.trim()))
    throw new ConfigError(key, `expected an integer, got ${JSON.stringify(raw)}`);
  const n = Number(raw);
  if (n < min || n > max) throw new ConfigError(key, `must be between ${min} and ${max}, got ${n}`);
  return n;
}

/** Room for the connection limit under the open-file limit, or the limit names the key and why. */
function maxConnections(raw: string | undefined, fileLimit: number | null): number {
  if (raw === undefined) return defaultMaxConnections(fileLimit);
  const n = parseIntIn('STRATA_MAX_CONNECTIONS', raw, 1, 1_000_000);
  const allowed = connectionsAllowedBy(fileLimit);
  if (n > allowed)
    throw new ConfigError(
      'STRATA_MAX_CONNECTIONS',
      `the open-file limit of ${fileLimit} leaves room for at most ${allowed} (raise it with ulimit -n), got ${n}`,
    );
  return n;
}

function parseBool(key: string, raw: string): boolean {
  const v = raw.trim().toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(v)) return true;
  if (['0', 'false', 'no', 'off'].includes(v)) return false;
  throw new ConfigError(key, `expected true or false, got ${JSON.stringify(raw)}`);
}

/** Both files or neither; both readable, valid and belonging together, so a bad pair stops the start. */
function tlsFiles(cert: string | undefined, key: string | undefined): TlsFiles | null {
  if (cert === undefined && key === undefined) return null;
  if (key === undefined) throw new ConfigError('STRATA_TLS_KEY', 'must be set when STRATA_TLS_CERT is');
  if (cert === undefined) throw new ConfigError('STRATA_TLS_CERT', 'must be set when STRATA_TLS_KEY is');
  const files = { certFile: resolve(cert), keyFile: resolve(key) };
  try {
    readTlsFiles(files);
  } catch (e) {
    if (e instanceof TlsFileError)
      throw new ConfigError(e.file === 'cert' ? 'STRATA_TLS_CERT' : 'STRATA_TLS_KEY', e.message);
    throw e;
  }
  return files;
}

function oneOf<T extends string>(key: string, raw: string, allowed: readonly T[]): T {
  if ((allowed as readonly string[]).includes(raw)) return raw as T;
  throw new ConfigError(key, `expected one of ${allowed.join(', ')}, got ${JSON.stringify(raw)}`);
}

/** Reads a YAML or JSON file of the same keys as the environment (values may be strings, numbers or booleans). */
export function readConfigFile(path: string): Source {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(
      'STRATA_CONFIG',
      `cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`,
    );
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new ConfigError(
      'STRATA_CONFIG',
      `${path} is not valid YAML or JSON: ${(e as Error).message.split('\n')[0]}`,
    );
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc))
    throw new ConfigError('STRATA_CONFIG', `${path} must hold a mapping`);
  const out: Source = {};
  for (const [k, v] of Object.entries(doc as Record<string, unknown>)) {
    if (!(KEYS as readonly string[]).includes(k)) throw new ConfigError(k, `unknown key in ${path}`);
    if (v !== null && typeof v === 'object') throw new ConfigError(k, 'must be a string, number or boolean');
    out[k] = v === null || v === undefined ? undefined : String(v as string | number | boolean);
  }
  return out;
}

/**
 * Validates the configuration once: the file named by STRATA_CONFIG (if any), overridden by the environment.
 * Throws ConfigError naming the first bad key.
 */
export function loadConfig(env: Source = process.env): Config {
  const file = env.STRATA_CONFIG ? readConfigFile(env.STRATA_CONFIG) : {};
  const get = (k: (typeof KEYS)[number]): string | undefined => {
    const v = env[k] ?? file[k];
    return v === undefined || v === '' ? undefined : v;
  };

  const databaseUrl = get('DATABASE_URL') ?? null;
  if (databaseUrl !== null) {
    let url: URL;
    try {
      url = new URL(databaseUrl);
    } catch {
      throw new ConfigError('DATABASE_URL', 'is not a URL (expected postgres://user@host:port/database)');
    }
    if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:') {
      throw new ConfigError('DATABASE_URL', `expected a postgres:// URL, got ${url.protocol}//`);
    }
  }
  const host = get('HOST') ?? '0.0.0.0';
  // Timers in Node take 32-bit milliseconds.
  const maxTimerSeconds = Math.floor((2 ** 31 - 1) / 1000);
  const millis = (key: (typeof KEYS)[number], fallback: string): number =>
    atMost(key, parseDuration(key, get(key) ?? fallback), maxTimerSeconds) * 1000;
  if (!/^[A-Za-z0-9.:_-]+$/.test(host))
    throw new ConfigError('HOST', `not a host name or address: ${JSON.stringify(host)}`);

  return {
    databaseUrl,
    dataDir: resolve(get('STRATA_DATA_DIR') ?? './data'),
    storage: oneOf('STRATA_STORAGE', get('STRATA_STORAGE') ?? 'filesystem', [
      'filesystem',
      'postgres',
    ] as const),
    host,
    port: parseIntIn('PORT', get('PORT') ?? '5000', 0, 65535),
    uploadTtlSeconds: parseDuration('STRATA_UPLOAD_TTL', get('STRATA_UPLOAD_TTL') ?? '24h'),
    migrateOnBoot: parseBool('STRATA_MIGRATE_ON_BOOT', get('STRATA_MIGRATE_ON_BOOT') ?? 'true'),
    logLevel: oneOf('STRATA_LOG_LEVEL', get('STRATA_LOG_LEVEL') ?? 'info', [
      'fatal',
      'error',
      'warn',
      'info',
      'debug',
      'trace',
      'silent',
    ] as const),
    shutdownTimeoutMs:
      parseDuration('STRATA_SHUTDOWN_TIMEOUT', get('STRATA_SHUTDOWN_TIMEOUT') ?? '10s') * 1000,
    dbPoolMax: parseIntIn('STRATA_DB_POOL_MAX', get('STRATA_DB_POOL_MAX') ?? '20', 1, 1000),
    dbIdleInTransactionSeconds: atMost(
      'STRATA_DB_IDLE_IN_TRANSACTION',
      parseDuration('STRATA_DB_IDLE_IN_TRANSACTION', get('STRATA_DB_IDLE_IN_TRANSACTION') ?? '60s'),
      // PostgreSQL takes milliseconds in a 32-bit int.
      Math.floor(2 ** 31 / 1000) - 1,
    ),
    jobsEnabled: parseBool('STRATA_JOBS', get('STRATA_JOBS') ?? 'true'),
    storageMaintenance: parseBool('STRATA_STORAGE_MAINTENANCE', get('STRATA_STORAGE_MAINTENANCE') ?? 'true'),
    storageMaintenanceIntervalMs: millis('STRATA_STORAGE_MAINTENANCE_INTERVAL', '10m'),
    inlineBlobMax: parseIntIn('STRATA_INLINE_BLOB_MAX', get('STRATA_INLINE_BLOB_MAX') ?? '65536', 0, 1048576),
    deferChunkSync: parseBool('STRATA_DEFER_CHUNK_SYNC', get('STRATA_DEFER_CHUNK_SYNC') ?? 'true'),
    directIo: parseBool('STRATA_DIRECT_IO', get('STRATA_DIRECT_IO') ?? 'true'),
    directIoAfter: parseIntIn(
      'STRATA_DIRECT_IO_AFTER',
      get('STRATA_DIRECT_IO_AFTER') ?? '67108864',
      0,
      2 ** 40,
    ),
    tls: tlsFiles(get('STRATA_TLS_CERT'), get('STRATA_TLS_KEY')),
    headerTimeoutMs: millis('STRATA_HEADER_TIMEOUT', '30s'),
    clientIdleTimeoutMs: millis('STRATA_CLIENT_IDLE_TIMEOUT', '60s'),
    keepAliveTimeoutMs: millis('STRATA_KEEPALIVE_TIMEOUT', '65s'),
    maxConnections: maxConnections(get('STRATA_MAX_CONNECTIONS'), openFileLimit()),
    maxConnectionsPerClient: parseIntIn(
      'STRATA_MAX_CONNECTIONS_PER_IP',
      get('STRATA_MAX_CONNECTIONS_PER_IP') ?? '256',
      0,
      1_000_000,
    ),
    auth: authConfig(get, resolve(get('STRATA_DATA_DIR') ?? './data')),
    metrics: parseBool('STRATA_METRICS', get('STRATA_METRICS') ?? 'true'),
    metricsPort: get('STRATA_METRICS_PORT')
      ? parseIntIn('STRATA_METRICS_PORT', get('STRATA_METRICS_PORT')!, 1, 65535)
      : null,
  };
}

function authConfig(
  get: (k: (typeof KEYS)[number]) => string | undefined,
  dataDir: string,
): AuthConfig | null {
  const mode = oneOf('STRATA_AUTH', get('STRATA_AUTH') ?? 'off', ['off', 'token'] as const);
  if (mode === 'off') return null;
  const anonymousPull = (get('STRATA_ANONYMOUS_PULL') ?? '')
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '');
  for (const p of anonymousPull)
    if (!isValidPattern(p))
      throw new ConfigError(
        'STRATA_ANONYMOUS_PULL',
        `not a repository pattern (team/app, team/*, team/**, **): ${JSON.stringify(p)}`,
      );
  const externalUrl = get('STRATA_EXTERNAL_URL') ?? null;
  if (externalUrl !== null && !/^https?:\/\/[^\s/?#]+(\/[^\s?#]*)?$/.test(externalUrl))
    throw new ConfigError(
      'STRATA_EXTERNAL_URL',
      `expected http(s)://host[:port][/path], got ${JSON.stringify(externalUrl)}`,
    );
  let adminPassword = get('STRATA_ADMIN_PASSWORD') ?? null;
  const adminFile = get('STRATA_ADMIN_PASSWORD_FILE');
  if (adminPassword === null && adminFile !== undefined) {
    try {
      adminPassword = readFileSync(adminFile, 'utf8').replace(/\r?\n$/, '');
    } catch (e) {
      throw new ConfigError('STRATA_ADMIN_PASSWORD_FILE', (e as Error).message);
    }
  }
  const keyFile = get('STRATA_TOKEN_KEY');
  const service = get('STRATA_AUTH_SERVICE') ?? 'strata';
  if (!/^[\x21-\x7e]{1,255}$/.test(service) || service.includes('"'))
    throw new ConfigError('STRATA_AUTH_SERVICE', 'expected printable characters without spaces or quotes');
  return {
    service,
    issuer: get('STRATA_AUTH_ISSUER') ?? 'strata',
    tokenTtlSeconds: atMost(
      'STRATA_TOKEN_TTL',
      parseDuration('STRATA_TOKEN_TTL', get('STRATA_TOKEN_TTL') ?? '5m'),
      86400,
    ),
    keyFile: keyFile ? resolve(keyFile) : join(dataDir, 'auth', 'token-key.pem'),
    createKey: keyFile === undefined,
    anonymousPull,
    externalUrl: externalUrl?.replace(/\/$/, '') ?? null,
    adminPassword,
    loginCache: parseBool('STRATA_LOGIN_CACHE', get('STRATA_LOGIN_CACHE') ?? 'true'),
  };
}
