// Starting and stopping the two servers under test, and the bench database.
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, openSync, readFileSync, writeFileSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { freePort, request, sleep } from './util.mjs';

const REGISTRY_BIN = '/usr/bin/docker-registry';

function onPath(bin) {
  try {
    execFileSync('sh', ['-c', `command -v ${bin}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

/** Installs Debian's reference registry (distribution 2.8) and skopeo when either is missing. */
export function ensureTools(log) {
  if (existsSync(REGISTRY_BIN) && onPath('skopeo')) return;
  log('installing docker-registry and skopeo with apt-get …');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  execFileSync('apt-get', ['update'], { stdio: ['ignore', 'ignore', 'inherit'], env });
  execFileSync('apt-get', ['install', '-y', '--no-install-recommends', 'docker-registry', 'skopeo'], {
    stdio: ['ignore', 'ignore', 'inherit'],
    env,
  });
  if (!existsSync(REGISTRY_BIN)) throw new Error(`${REGISTRY_BIN} is still missing after apt-get install`);
}

export function toolVersions() {
  const v = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8' }).trim().split('\n')[0];
    } catch {
      return '?';
    }
  };
  return { registry: v(REGISTRY_BIN, ['--version']), skopeo: v('skopeo', ['--version']) };
}

async function waitReady(base, child, name, logFile, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `${name} exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${tail(logFile)}`,
      );
    }
    try {
      const res = await request(base, { path: '/v2/', timeoutMs: 2000 });
      // 401: up, with authentication on (the bench's auth mode).
      if (res.status === 200 || res.status === 401) return;
      last = `HTTP ${res.status}`;
    } catch (e) {
      last = e.code ?? e.message;
    }
    await sleep(100);
  }
  throw new Error(`${name} not ready after ${timeoutMs} ms (last: ${last}):\n${tail(logFile)}`);
}

function tail(file, lines = 30) {
  try {
    return readFileSync(file, 'utf8').trim().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** SIGTERM, then SIGKILL after `graceMs`. Resolves when the process is gone. */
export function stopProcess(child, graceMs = 10_000) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

function spawnLogged(cmd, args, { env, cwd, logFile }) {
  const fd = openSync(logFile, 'a');
  const child = spawn(cmd, args, { env, cwd, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  return child;
}

/** `htpasswd`: a file of bcrypt entries, for the reference registry with its basic authentication on. */
export async function startReference({ dir, log, htpasswd = null }) {
  const port = await freePort();
  const root = join(dir, 'storage');
  const configFile = join(dir, 'config.yml');
  writeFileSync(
    configFile,
    [
      'version: 0.1',
      'log:',
      '  level: error',
      '  accesslog:',
      '    disabled: true',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${root}`,
      '  delete:',
      '    enabled: true',
      '  cache:',
      '    blobdescriptor: inmemory',
      'http:',
      `  addr: 127.0.0.1:${port}`,
      ...(htpasswd ? ['auth:', '  htpasswd:', '    realm: bench', `    path: ${htpasswd}`] : []),
      '',
    ].join('\n'),
  );
  const logFile = join(dir, 'registry.log');
  const env = { PATH: process.env.PATH, HOME: process.env.HOME ?? '/root' };
  const child = spawnLogged(REGISTRY_BIN, ['serve', configFile], { env, logFile });
  const base = `http://127.0.0.1:${port}`;
  log(`reference registry pid ${child.pid} on ${base}`);
  await waitReady(base, child, 'docker-registry', logFile);
  return { name: 'reference', base, port, child, pid: child.pid, logFile };
}

/** BENCH_STRATA_ENV="K=V K2=V2" as an environment; a word without `=` is refused. */
function strataSettings() {
  return Object.fromEntries(
    (process.env.BENCH_STRATA_ENV ?? '')
      .split(/\s+/)
      .filter(Boolean)
      .map((kv) => {
        const eq = kv.indexOf('=');
        if (eq <= 0) throw new Error(`BENCH_STRATA_ENV: expected KEY=VALUE, got ${JSON.stringify(kv)}`);
        return [kv.slice(0, eq), kv.slice(eq + 1)];
      }),
  );
}

export async function startStrata({ root, dir, db, log, name = 'strata', env: extra = {} }) {
  const databaseUrl = db.url;
  const port = await freePort();
  const logFile = join(dir, 'strata.log');
  const env = {
    PATH: process.env.PATH,
    HOME: process.env.HOME ?? '/root',
    DATABASE_URL: databaseUrl,
    STRATA_DATA_DIR: join(dir, 'data'),
    PORT: String(port),
    HOST: '127.0.0.1',
    STRATA_LOG_LEVEL: 'warn',
    STRATA_JOBS: 'false',
    // BENCH_STRATA_ENV="STRATA_DIRECT_IO=false STRATA_DIRECT_IO_AFTER=0": settings to compare (shown in the header).
    ...strataSettings(),
    // STRATA_STORAGE=postgres for the large-object Strata, compared with the filesystem one in the same run.
    ...extra,
  };
  const main = join(root, 'dist/apps/registry/src/main.js');
  // Started as users start it: the launcher, with the V8 settings it carries (bin/strata).
  const launcher = join(root, 'bin/strata');
  if (!existsSync(main)) throw new Error(`${main} is missing: run npm run build first (npm run bench does)`);
  const child = spawnLogged(launcher, ['serve'], { env, cwd: root, logFile });
  const base = `http://127.0.0.1:${port}`;
  log(`${name} pid ${child.pid} on ${base}`);
  await waitReady(base, child, name, logFile);
  return { name, base, port, child, pid: child.pid, logFile, db };
}

/**
 * Creates a fresh database strata_bench_<rand> on the server of $DATABASE_URL, or of
 * postgres://postgres@127.0.0.1:5432/ when unset. Returns { url, drop() }.
 */
export async function createBenchDatabase() {
  const server = new URL(process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/postgres');
  const admin = new URL(server);
  if (!process.env.DATABASE_URL || admin.pathname === '/' || admin.pathname === '')
    admin.pathname = '/postgres';
  const name = `strata_bench_${randomBytes(4).toString('hex')}`;
  const run = async (sql) => {
    const client = new pg.Client({ connectionString: admin.toString() });
    await client.connect();
    try {
      return await client.query(sql);
    } finally {
      await client.end();
    }
  };
  await run(`CREATE DATABASE ${name}`);
  // The postmaster's pid, when the server runs on this machine: to tell its processes' CPU time.
  let postmasterPid = null;
  try {
    const dataDir = (await run('SHOW data_directory')).rows[0].data_directory;
    postmasterPid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]) || null;
  } catch {
    // not a local server, or not allowed to see: no PostgreSQL CPU figures
  }
  const url = new URL(server);
  url.pathname = `/${name}`;
  let dropped = false;
  return {
    name,
    postmasterPid,
    url: url.toString(),
    async drop() {
      if (dropped) return;
      dropped = true;
      await run(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}
