import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm, statfs } from 'node:fs/promises';
import { request } from 'node:http';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../libs/db/src/embedded-postgres';
import { sha256 } from '../support/http';
import { MAIN, startServer, type ServerProcess } from '../support/server-process';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

/** Sends `total` bytes in `piece`-sized writes, pausing `delayMs` between them; resolves with the status. */
function slowPatch(url: string, total: number, piece: number, delayMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method: 'PATCH',
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(total) },
    });
    req.on('response', (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    });
    req.on('error', reject);
    let sent = 0;
    const tick = (): void => {
      if (sent >= total) return void req.end();
      const n = Math.min(piece, total - sent);
      req.write(randomBytes(n));
      sent += n;
      setTimeout(tick, delayMs);
    };
    tick();
  });
}

function noErrors(server: ServerProcess): void {
  expect(server.lines.filter((l) => l.level === 'error' || l.level === 'fatal')).toEqual([]);
  expect(server.lines.filter((l) => typeof l.status === 'number' && l.status >= 500)).toEqual([]);
}

describe('the strata process', () => {
  let database: TestDatabase;
  let dataDir: string;

  beforeAll(async () => {
    database = await createTestDatabase();
    dataDir = await mkdtemp(join(tmpdir(), 'strata-proc-'));
  });
  afterAll(async () => {
    await database.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('exits non-zero with one line naming the key of a bad config value', () => {
    const r = spawnSync(MAIN, ['verify-config'], {
      env: { PATH: process.env.PATH, PORT: 'eighty' },
      encoding: 'utf8',
    });
    expect(r.status).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toContain('PORT');
    const ok = spawnSync(MAIN, ['verify-config'], {
      env: { PATH: process.env.PATH, PORT: '5000' },
      encoding: 'utf8',
    });
    expect(ok.status).toBe(0);
    const serve = spawnSync(MAIN, ['serve'], {
      env: { PATH: process.env.PATH, STRATA_STORAGE: 'tape' },
      encoding: 'utf8',
    });
    expect(serve.status).toBe(2);
    expect(serve.stderr).toMatch(/STRATA_STORAGE/);
  });

  it('says in one line that the port is taken, and nothing else', async () => {
    const taken = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    try {
      const { port } = taken.address() as AddressInfo;
      const r = spawnSync(MAIN, ['serve'], {
        env: {
          PATH: process.env.PATH,
          DATABASE_URL: database.url,
          STRATA_DATA_DIR: dataDir,
          STRATA_JOBS: 'false',
          HOST: '127.0.0.1',
          PORT: String(port),
        },
        encoding: 'utf8',
      });
      expect(r.status).toBe(1);
      expect(r.stderr.trim().split('\n')).toEqual([
        `strata: failed to start: 127.0.0.1:${port} is already in use by another program: stop it, or set PORT (or HOST)`,
      ]);
      const logged = r.stdout
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      expect(logged.filter((l) => l.level !== 'info')).toEqual([]);
    } finally {
      taken.close();
    }
  });

  it('`npm start` exits 0 on a Ctrl-C to its process group, once the registry has drained', async () => {
    const port = await freePort();
    // What a terminal runs: npm, its shell and the registry in one foreground process group, all sent SIGINT.
    const npm = spawn('npm', ['start'], {
      cwd: join(__dirname, '../..'),
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? tmpdir(),
        DATABASE_URL: database.url,
        STRATA_DATA_DIR: dataDir,
        STRATA_JOBS: 'false',
        HOST: '127.0.0.1',
        PORT: String(port),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let out = '';
    npm.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    npm.stderr.on('data', (d: Buffer) => (out += d.toString('utf8')));
    const exited = new Promise<number | string>((r) =>
      npm.once('exit', (code, signal) => r(code ?? signal ?? -1)),
    );
    // A build may run first if the sources changed since the last one.
    const deadline = Date.now() + 180_000;
    while (!/"msg":"strata listening"/.test(out)) {
      if (Date.now() > deadline || npm.exitCode !== null) throw new Error(`npm start did not listen: ${out}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    process.kill(-npm.pid!, 'SIGINT');
    expect(await exited).toBe(0);
    expect(out).toContain('"msg":"stopped"');
  }, 240_000);

  it('streams a 64 MiB body to storage without its peak memory growing by more than a few MiB over a 32 MiB one', async () => {
    const server = await startServer({ DATABASE_URL: database.url, STRATA_DATA_DIR: dataDir });
    try {
      // Warm up code paths, pools and the young generation's size with two 32 MiB bodies first. The measure is
      // the peak: a process that buffered would raise it by 32 MiB more for a body of 64. (Not the resident size
      // before the body: a full collection once the process goes quiet hands memory back to the system, so
      // that would count the heap growing again to its working size.)
      for (let i = 0; i < 2; i++) {
        const post = await fetch(`${server.url}/v2/mem/blobs/uploads/`, { method: 'POST' });
        expect(await slowPatch(`${server.url}${post.headers.get('location')}`, 32 << 20, 1 << 20, 0)).toBe(
          202,
        );
      }
      const before = await server.rssKiB('VmHWM');
      const post = await fetch(`${server.url}/v2/mem/blobs/uploads/`, { method: 'POST' });
      expect(await slowPatch(`${server.url}${post.headers.get('location')}`, 64 << 20, 1 << 20, 0)).toBe(202);
      const peak = await server.rssKiB('VmHWM');
      const grownMiB = (peak - before) / 1024;
      expect(grownMiB).toBeLessThan(8);
      noErrors(server);
    } finally {
      server.child.kill('SIGTERM');
      await server.exited;
    }
  });

  it('on SIGTERM stops accepting, finishes the in-flight request and exits 0', async () => {
    const server = await startServer({
      DATABASE_URL: database.url,
      STRATA_DATA_DIR: dataDir,
      STRATA_SHUTDOWN_TIMEOUT: '20s',
    });
    const post = await fetch(`${server.url}/v2/drain/blobs/uploads/`, { method: 'POST' });
    const location = post.headers.get('location')!;
    const inflight = slowPatch(`${server.url}${location}`, 2 << 20, 128 << 10, 100);
    await new Promise((r) => setTimeout(r, 500));
    server.child.kill('SIGTERM');
    expect(await inflight).toBe(202);
    expect(await server.exited).toBe(0);
    await expect(fetch(`${server.url}/v2/`)).rejects.toThrow();
    const size = await database.db
      .selectFrom('uploads')
      .select('size')
      .where('id', '=', location.split('/').pop()!)
      .executeTakeFirst();
    expect(size?.size).toBe(2 << 20);
    noErrors(server);
    const messages = server.lines.map((l) => l.msg);
    expect(messages).toContain('shutting down');
    expect(messages).toContain('stopped');
  });

  it('writes JSON log lines that carry the request id, which every response carries too', async () => {
    const server = await startServer({ DATABASE_URL: database.url, STRATA_DATA_DIR: dataDir });
    try {
      const res = await fetch(`${server.url}/v2/logs/nested/blobs/uploads/`, {
        method: 'POST',
        headers: { 'x-request-id': 'trace-me-123' },
      });
      expect(res.headers.get('x-request-id')).toBe('trace-me-123');
      const other = await fetch(`${server.url}/v2/`);
      expect(other.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
      await new Promise((r) => setTimeout(r, 100));
      const mine = server.lines.filter((l) => l.reqId === 'trace-me-123');
      expect(mine.length).toBeGreaterThan(0);
      // The path as the client sent it, not as rewritten for routing (/v2/logs%2Fnested/...).
      expect(mine.find((l) => l.msg === 'request completed')).toMatchObject({
        status: 202,
        method: 'POST',
        url: '/v2/logs/nested/blobs/uploads/',
      });
      // A start warns of nothing: no Fastify FSTWRN004 about the error handler, no Node warning of any kind.
      expect(server.lines.filter((l) => l.level === 'warn')).toEqual([]);
      expect(server.stderr.join('')).toBe('');
      // Once per line, though Fastify's request logger binds it and the request context would add it too.
      const raw = server.text.filter((l) => l.includes('trace-me-123'));
      expect(raw.length).toBe(mine.length);
      for (const l of raw) expect(l.split('"reqId"').length - 1).toBe(1);
      for (const l of server.lines) expect(typeof l.time).toBe('string');
      // A hang-up (a closed terminal) without TLS to reload is logged and changes nothing; Node's default ends
      // the process.
      server.child.kill('SIGHUP');
      for (let i = 0; i < 100 && !server.lines.some((l) => l.signal === 'SIGHUP'); i++)
        await new Promise((r) => setTimeout(r, 20));
      expect(server.lines.find((l) => l.signal === 'SIGHUP')).toMatchObject({
        level: 'info',
        msg: 'nothing to reload: no TLS configured',
      });
      expect((await fetch(`${server.url}/v2/`)).status).toBe(200);
    } finally {
      server.child.kill('SIGINT');
      expect(await server.exited).toBe(0);
    }
  });

  it('survives SIGKILL during many uploads: every 201 reads back, and no blob row points at missing or short bytes', async () => {
    const crashDir = await mkdtemp(join(tmpdir(), 'strata-crash-'));
    const db = await createTestDatabase();
    try {
      // Direct writes past each blob's first MiB, so the kill also lands among O_DIRECT writes.
      const env = { DATABASE_URL: db.url, STRATA_DATA_DIR: crashDir, STRATA_DIRECT_IO_AFTER: '1048576' };
      const server = await startServer(env);
      // ext4, xfs, btrfs take O_DIRECT: there the server must have turned it on.
      if ([0xef53, 0x58465342, 0x9123683e].includes((await statfs(crashDir)).type)) {
        // The line may reach the pipe just after the server first answers.
        const listening = (): Record<string, unknown> | undefined =>
          server.lines.find((l) => l.msg === 'strata listening');
        for (let i = 0; i < 100 && !listening(); i++) await new Promise((r) => setTimeout(r, 20));
        expect(listening()?.directWrites).toBe(true);
      }
      const committed: { repo: string; digest: string }[] = [];
      const blobs = Array.from({ length: 40 }, (_, i) => {
        // Every fifth is small enough to be kept in its row; the rest are files.
        const data = randomBytes(i % 5 === 0 ? 3000 : (1 + (i % 4)) << 20);
        return { repo: `crash/r${i % 5}`, data, digest: sha256(data) };
      });
      const pushes = blobs.map(async (b, i) => {
        await new Promise((r) => setTimeout(r, i * 40));
        try {
          const res = await fetch(`${server.url}/v2/${b.repo}/blobs/uploads/?digest=${b.digest}`, {
            method: 'POST',
            body: b.data,
            headers: { 'content-type': 'application/octet-stream' },
          });
          if (res.status === 201) committed.push({ repo: b.repo, digest: b.digest });
        } catch {
          // Cut off by the kill: the client saw no 201, so nothing is owed to it.
        }
      });
      // Kill once some uploads have been answered and others are still streaming.
      const deadline = Date.now() + 30_000;
      while (committed.length < 8 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      server.child.kill('SIGKILL');
      await Promise.all(pushes);
      await server.exited;
      expect(committed.length).toBeGreaterThan(0);

      const again = await startServer(env);
      try {
        for (const c of committed) {
          const res = await fetch(`${again.url}/v2/${c.repo}/blobs/${c.digest}`);
          expect(res.status).toBe(200);
          expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(c.digest);
        }
        const rows = await db.db
          .selectFrom('repository_blobs as rb')
          .innerJoin('repositories as r', 'r.id', 'rb.repository_id')
          .innerJoin('blobs as b', 'b.digest', 'rb.digest')
          .select(['r.name', 'b.digest', 'b.size'])
          .execute();
        expect(rows.length).toBeGreaterThanOrEqual(committed.length);
        for (const row of rows) {
          const res = await fetch(`${again.url}/v2/${row.name}/blobs/${row.digest}`);
          const body = Buffer.from(await res.arrayBuffer());
          expect(body.length).toBe(row.size);
          expect(`sha256:${createHash('sha256').update(body).digest('hex')}`).toBe(row.digest);
        }
        noErrors(again);
      } finally {
        again.child.kill('SIGTERM');
        await again.exited;
      }
    } finally {
      await db.drop();
      await rm(crashDir, { recursive: true, force: true });
    }
  });
});
