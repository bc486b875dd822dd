import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { pushBlob, sha256 } from '../support/http';
import { startServer, type ServerProcess } from '../support/server-process';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

/** Polls until `check` holds; fails after `timeoutMs`. What is awaited is an event, never a duration. */
async function waitFor(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Waits for the server to close `c`, for at most `timeoutMs`: generous next to the bounds these tests set (1-2 s),
 * short of Node's and the old defaults (a minute and more), so a bound that is not enforced fails the test.
 */
async function closedWithin(c: Raw, timeoutMs = 20_000): Promise<void> {
  await waitFor('the server to close the connection', () => c.isClosed(), timeoutMs);
}

/** A connection written to by hand: what it received, and whether the server closed it. */
interface Raw {
  readonly socket: Socket;
  readonly received: () => string;
  readonly closed: Promise<void>;
  isClosed(): boolean;
}

function open(port: number, localAddress = '127.0.0.1'): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1', localAddress });
    const parts: Buffer[] = [];
    let closed = false;
    socket.on('data', (d: Buffer) => parts.push(d));
    socket.on('error', () => undefined);
    const done = new Promise<void>((r) => socket.once('close', () => r()));
    void done.then(() => (closed = true));
    socket.once('connect', () =>
      resolve({
        socket,
        received: () => Buffer.concat(parts).toString('latin1'),
        closed: done,
        isClosed: () => closed,
      }),
    );
    socket.once('error', reject);
  });
}

/** Status and OCI error codes of one response held in `text`. */
function answer(text: string): { status: number; codes: string[]; headers: string } {
  const end = text.indexOf('\r\n\r\n');
  const headers = text.slice(0, end);
  const body = text.slice(end + 4);
  const codes = body
    ? ((JSON.parse(body) as { errors?: { code: string }[] }).errors ?? []).map((e) => e.code)
    : [];
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), codes, headers };
}

/** Problems the server logged that the test did not cause on purpose. */
function problems(server: ServerProcess, from: number, refusalsExpected = false): unknown[] {
  return server.lines
    .slice(from)
    .filter(
      (l) =>
        l.level === 'error' ||
        l.level === 'fatal' ||
        (typeof l.status === 'number' && l.status >= 500 && !(refusalsExpected && l.status === 503)),
    );
}

describe('the strata process bounds what hostile clients can hold', () => {
  let database: TestDatabase;
  let dataDir: string;
  let server: ServerProcess;
  let port: number;

  beforeAll(async () => {
    database = await createTestDatabase();
    dataDir = await mkdtemp(join(tmpdir(), 'strata-limits-'));
    server = await startServer({
      DATABASE_URL: database.url,
      STRATA_DATA_DIR: dataDir,
      STRATA_HEADER_TIMEOUT: '2s',
      STRATA_CLIENT_IDLE_TIMEOUT: '2s',
      STRATA_KEEPALIVE_TIMEOUT: '1s',
    });
    port = server.port;
  });
  afterAll(async () => {
    server.child.kill('SIGTERM');
    await server.exited;
    await database.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('answers a request head that stops arriving with 408 in the envelope, then closes', async () => {
    const from = server.lines.length;
    const c = await open(port);
    c.socket.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n');
    await closedWithin(c);
    expect(answer(c.received())).toMatchObject({ status: 408, codes: ['REQUEST_TIMEOUT'] });
    expect(problems(server, from)).toEqual([]);
  });

  it('answers bodies that stall mid-way with 408 in the envelope, then closes their connections', async () => {
    const from = server.lines.length;
    const stalled = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const post = await fetch(`${server.url}/v2/limits/stall/blobs/uploads/`, { method: 'POST' });
        expect(post.status).toBe(202);
        const location = new URL(post.headers.get('location')!, server.url);
        const c = await open(port);
        c.socket.write(
          `PATCH ${location.pathname}${location.search} HTTP/1.1\r\nHost: x\r\nX-Request-Id: stall-${i}\r\n` +
            'Content-Type: application/octet-stream\r\nContent-Length: 1048576\r\n\r\n',
        );
        c.socket.write(randomBytes(10));
        return c;
      }),
    );
    await Promise.all(stalled.map((c) => closedWithin(c)));
    for (const [i, c] of stalled.entries()) {
      const got = answer(c.received());
      expect(got).toMatchObject({ status: 408, codes: ['REQUEST_TIMEOUT'] });
      expect(got.headers).toContain(`X-Request-Id: stall-${i}`);
    }
    const cuts = (): number =>
      server.lines.filter(
        (l) => l.msg === 'closed a connection whose client stopped sending its request body',
      ).length;
    await waitFor('each cut to be logged', () => cuts() >= 20);
    expect(cuts()).toBe(20);
    // The handler reading each body sees it end as a hang-up; its line says what happened instead.
    const mine = (l: Record<string, unknown>): boolean => /^stall-\d+$/.test(String(l.reqId));
    await waitFor(
      'each handler to log the end of its body',
      () =>
        server.lines.filter(
          (l) => mine(l) && l.msg === 'stopped reading a request body its client stopped sending',
        ).length >= 20,
    );
    expect(
      server.lines.filter(
        (l) => mine(l) && l.msg === 'client closed the connection before the request was read',
      ),
    ).toEqual([]);
    expect((await fetch(`${server.url}/v2/`)).status).toBe(200);
    expect(problems(server, from)).toEqual([]);
  });

  it('closes a keep-alive connection idle past the keep-alive timeout', async () => {
    const c = await open(port);
    c.socket.write('GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n');
    await waitFor('the answer', () => c.received().includes('\r\n\r\n{}'));
    expect(answer(c.received().replace(/\{\}$/, '')).status).toBe(200);
    // Kept open for a next request, which never comes.
    expect(c.received()).not.toMatch(/connection: close/i);
    await closedWithin(c);
  });

  it('does not cut a commit that waits on the database longer than the idle bound', async () => {
    const from = server.lines.length;
    const data = randomBytes(100_000);
    const post = await fetch(`${server.url}/v2/limits/slow/blobs/uploads/`, { method: 'POST' });
    const location = new URL(post.headers.get('location')!, server.url);
    const patch = await fetch(location, {
      method: 'PATCH',
      body: data,
      headers: { 'content-type': 'application/octet-stream' },
    });
    expect(patch.status).toBe(202);
    const witness = await fetch(`${server.url}/v2/limits/slow/blobs/uploads/`, { method: 'POST' });
    const witnessAt = new URL(witness.headers.get('location')!, server.url);

    // The commit's first look at the blobs table waits on this lock for as long as the test holds it.
    const lock = new pg.Client({ connectionString: database.url });
    await lock.connect();
    try {
      await lock.query('BEGIN');
      await lock.query('LOCK TABLE blobs IN ACCESS EXCLUSIVE MODE');
      const commitAt = new URL(patch.headers.get('location')!, server.url);
      commitAt.searchParams.set('digest', sha256(data));
      let settled = false;
      const commit = fetch(commitAt, { method: 'PUT' }).finally(() => (settled = true));
      await waitFor('the commit to wait on the lock', async () => {
        const { rows } = await lock.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM pg_locks WHERE NOT granted AND relation = 'blobs'::regclass",
        );
        return rows[0]!.n > 0;
      });
      // A body stalled meanwhile is cut: the bound passes, and is enforced, while the commit waits.
      const stalled = await open(port);
      stalled.socket.write(
        `PATCH ${witnessAt.pathname}${witnessAt.search} HTTP/1.1\r\nHost: x\r\n` +
          'Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\nabc',
      );
      await closedWithin(stalled);
      expect(answer(stalled.received()).status).toBe(408);
      expect(settled).toBe(false);
      await lock.query('COMMIT');
      const done = await commit;
      expect(done.status).toBe(201);
      expect(done.headers.get('docker-content-digest')).toBe(sha256(data));
    } finally {
      await lock.end();
    }
    expect(problems(server, from)).toEqual([]);
  });

  it('cuts a download its client reads none of, and not one read slowly', async () => {
    const from = server.lines.length;
    const blob = randomBytes(16 << 20);
    const digest = sha256(blob);
    expect((await pushBlob(server.url, 'limits/dl', blob, digest)).status).toBe(201);
    const get = (id: string): string =>
      `GET /v2/limits/dl/blobs/${digest} HTTP/1.1\r\nHost: x\r\nX-Request-Id: ${id}\r\n\r\n`;
    const cutLine = (id: string) => (l: Record<string, unknown>) =>
      l.msg === 'closed a connection whose client stopped reading its response' && l.reqId === id;

    const idle = await open(port);
    idle.socket.pause();
    idle.socket.write(get('reads-nothing'));
    await waitFor('the idle download to be cut', () => server.lines.some(cutLine('reads-nothing')));
    idle.socket.resume();
    await idle.closed;
    expect(idle.received().length).toBeLessThan(blob.length);

    // Reads a little, then nothing for a while, over and over: slower than the server writes, never stopped.
    const slow = await open(port);
    const parts: Buffer[] = [];
    slow.socket.removeAllListeners('data');
    let since = 0;
    slow.socket.on('data', (d: Buffer) => {
      parts.push(d);
      since += d.length;
      if (since >= 512 * 1024) {
        since = 0;
        slow.socket.pause();
        setTimeout(() => slow.socket.resume(), 300);
      }
    });
    slow.socket.write(get('reads-slowly'));
    const body = (): Buffer => {
      const text = Buffer.concat(parts);
      const end = text.indexOf('\r\n\r\n');
      return end < 0 ? Buffer.alloc(0) : text.subarray(end + 4);
    };
    await waitFor(
      'the slow download to finish',
      () => body().length >= blob.length || slow.isClosed(),
      120_000,
    );
    expect(body().length).toBe(blob.length);
    expect(`sha256:${createHash('sha256').update(body()).digest('hex')}`).toBe(digest);
    expect(server.lines.some(cutLine('reads-slowly'))).toBe(false);
    slow.socket.destroy();
    expect(problems(server, from)).toEqual([]);
  }, 180_000);
});

describe('the strata process under a connection flood', () => {
  let database: TestDatabase;
  let dataDir: string;
  let server: ServerProcess;
  const flood: Socket[] = [];

  beforeAll(async () => {
    database = await createTestDatabase();
    dataDir = await mkdtemp(join(tmpdir(), 'strata-flood-'));
    server = await startServer({
      DATABASE_URL: database.url,
      STRATA_DATA_DIR: dataDir,
      STRATA_MAX_CONNECTIONS: '300',
      STRATA_MAX_CONNECTIONS_PER_IP: '100',
      // The flood stays for the whole test: what holds it off is the limits, not the timeouts.
      STRATA_HEADER_TIMEOUT: '10m',
    });
    // Fewer descriptors than the flood has sockets: without limits, the process runs out of them.
    execFileSync('prlimit', ['--pid', String(server.child.pid), '--nofile=1024:1024']);
  });
  afterAll(async () => {
    for (const s of flood) s.destroy();
    server.child.kill('SIGTERM');
    await server.exited;
    await database.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  /** Opens `n` connections from `localAddress` that send nothing; those the server closes at once are gone. */
  async function floodFrom(localAddress: string, n: number): Promise<void> {
    for (let i = 0; i < n; i += 100) {
      await Promise.all(
        Array.from(
          { length: Math.min(100, n - i) },
          () =>
            new Promise<void>((resolve) => {
              const s = connect({ port: server.port, host: '127.0.0.1', localAddress });
              s.on('error', () => resolve());
              s.on('close', () => resolve());
              s.on('connect', () => {
                flood.push(s);
                resolve();
              });
            }),
        ),
      );
    }
  }

  /** One request on a connection of its own from `localAddress`: the status and codes, or 0 when closed unanswered. */
  async function requestFrom(localAddress: string, path: string): Promise<ReturnType<typeof answer>> {
    const c = await open(server.port, localAddress);
    c.socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    await c.closed;
    return c.received() ? answer(c.received()) : { status: 0, codes: [], headers: '' };
  }

  it('keeps serving others, and its health checks, when one address opens more connections than it has files', async () => {
    const from = server.lines.length;
    await floodFrom('127.0.0.2', 1500);
    // The flooding address is refused: told to come back (503, Retry-After) or closed at accept.
    const refused = await requestFrom('127.0.0.2', '/v2/');
    expect([0, 503]).toContain(refused.status);

    // A well-behaved client elsewhere pushes and pulls; readiness answers.
    const blob = randomBytes(200_000);
    expect((await pushBlob(server.url, 'flood/ok', blob)).status).toBe(201);
    const pulled = await fetch(`${server.url}/v2/flood/ok/blobs/${sha256(blob)}`);
    expect(pulled.status).toBe(200);
    expect(sha256(Buffer.from(await pulled.arrayBuffer()))).toBe(sha256(blob));
    expect((await fetch(`${server.url}/readyz`)).status).toBe(200);

    // More addresses fill the limit over all: the next client is told 503 with Retry-After, in the envelope.
    await floodFrom('127.0.0.3', 100);
    await floodFrom('127.0.0.4', 100);
    const full = await requestFrom('127.0.0.5', '/v2/');
    expect(full).toMatchObject({ status: 503, codes: ['UNAVAILABLE'] });
    expect(full.headers).toMatch(/\r\nretry-after: 1\r\n/i);

    // Once the flood is gone, everyone is served again.
    for (const s of flood.splice(0)) s.destroy();
    await waitFor(
      'the server to serve again',
      async () => (await requestFrom('127.0.0.5', '/v2/')).status === 200,
    );
    expect((await fetch(`${server.url}/readyz`)).status).toBe(200);
    await waitFor('the refusals to be logged', () =>
      server.lines.some((l) => l.msg === 'refused connections beyond the connection limits'),
    );
    expect(problems(server, from, true)).toEqual([]);
  }, 180_000);
});
