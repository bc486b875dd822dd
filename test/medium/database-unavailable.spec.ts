import { createServer, request } from 'node:http';
import { type AddressInfo, connect, createServer as createNetServer, type Socket } from 'node:net';
import pg from 'pg';
import { createPool } from '@strata/db';
import { toRegistryError } from '../../apps/registry/src/http/oci-exception.filter';
import { errorHeaders } from '../../apps/registry/src/http/error-headers';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

/** The error `run` fails with. */
async function failure(run: () => Promise<unknown>): Promise<unknown> {
  try {
    await run();
  } catch (e) {
    return e;
  }
  throw new Error('expected a failure');
}

describe('database failures are answered 503 UNAVAILABLE, to be retried, not 500', () => {
  let t: TestDatabase;
  let client: pg.Client;

  beforeAll(async () => {
    t = await createTestDatabase();
  });
  beforeEach(async () => {
    client = new pg.Client({ connectionString: t.url });
    client.on('error', () => undefined);
    await client.connect();
  });
  afterEach(async () => {
    await client.end().catch(() => undefined);
  });
  afterAll(async () => {
    t.pool.on('error', () => undefined);
    await t.drop();
  });

  const expectUnavailable = (e: unknown): void => {
    const r = toRegistryError(e);
    expect({ status: r.status, code: r.code, retry: errorHeaders(r)['Retry-After'] }).toEqual({
      status: 503,
      code: 'UNAVAILABLE',
      retry: '1',
    });
  };

  it('a statement that ran out of time (57014)', async () => {
    await client.query('SET statement_timeout = 20');
    const e = await failure(() => client.query('SELECT pg_sleep(2)'));
    expect((e as { code?: string }).code).toBe('57014');
    expectUnavailable(e);
  });

  it('a connection the server ended under a statement (57P01, as in a restart or failover)', async () => {
    const { rows } = await client.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    const killer = new pg.Client({ connectionString: t.url });
    await killer.connect();
    try {
      const sleeping = failure(() => client.query('SELECT pg_sleep(5)'));
      await new Promise((r) => setTimeout(r, 100));
      await killer.query('SELECT pg_terminate_backend($1)', [rows[0]!.pid]);
      const e = await sleeping;
      expect((e as { code?: string }).code).toBe('57P01');
      expectUnavailable(e);
      // The connection is gone now: what the next statement on it gets is a lost connection too.
      expectUnavailable(await failure(() => client.query('SELECT 1')));
    } finally {
      await killer.end();
    }
  });

  it('a connection reset under a statement (read ECONNRESET, as a restarting server or a proxy gives)', async () => {
    // A TCP proxy in front of the database that resets both sides once the statement is under way.
    const target = new URL(t.url);
    const sockets: Socket[] = [];
    const proxy = createNetServer((inbound) => {
      const outbound = connect(Number(target.port || 5432), target.hostname);
      sockets.push(inbound);
      inbound.pipe(outbound).pipe(inbound);
      outbound.on('error', () => inbound.destroy());
      inbound.on('error', () => outbound.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const via = new URL(t.url);
    via.port = String((proxy.address() as AddressInfo).port);
    via.hostname = '127.0.0.1';
    const proxied = new pg.Client({ connectionString: via.toString() });
    proxied.on('error', () => undefined);
    try {
      await proxied.connect();
      const sleeping = failure(() => proxied.query('SELECT pg_sleep(5)'));
      for (const s of sockets) s.resetAndDestroy();
      const e = await sleeping;
      expect(e).toMatchObject({ code: 'ECONNRESET', syscall: 'read' });
      expectUnavailable(e);
    } finally {
      await proxied.end().catch(() => undefined);
      await new Promise((r) => proxy.close(r));
    }
  });

  it('a database that cannot be reached', async () => {
    const nowhere = new pg.Client({ host: '127.0.0.1', port: 1, user: 'postgres', database: 'postgres' });
    expectUnavailable(await failure(() => nowhere.connect()));
  });

  it('but a client hanging up mid-body is not the database', async () => {
    // A real request body cut off by its client: Node fails it with ECONNRESET ("aborted").
    const bodyError = new Promise<unknown>((resolve) => {
      const server = createServer((req) => {
        req.on('error', (e) => {
          resolve(e);
          server.close();
        });
        req.resume();
      });
      server.listen(0, '127.0.0.1', () => {
        const { port } = server.address() as AddressInfo;
        const client = request({
          host: '127.0.0.1',
          port,
          method: 'PUT',
          headers: { 'content-length': '1000000' },
        });
        client.on('error', () => undefined);
        client.write(Buffer.alloc(1000), () => setTimeout(() => client.destroy(), 50));
      });
    });
    const e = await bodyError;
    expect((e as { code?: string }).code).toBe('ECONNRESET');
    expect(toRegistryError(e).status).not.toBe(503);
  });

  it('but a statement that is wrong is still a 500 of ours', async () => {
    for (const e of [
      await failure(() => client.query('SELEC 1')),
      await failure(() => client.query('SELECT 1/0')),
    ]) {
      expect(toRegistryError(e).status).toBe(500);
    }
  });
});

describe('a pool connection the server ends while a caller holds it', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase();
  });
  afterAll(async () => {
    await t.drop();
  });

  it('is reported, not thrown at the process, and the pool goes on with a new one', async () => {
    const lost: Error[] = [];
    const pool = createPool({ connectionString: t.url, max: 2, onConnectionLost: (e) => lost.push(e) });
    const killer = new pg.Client({ connectionString: t.url });
    await killer.connect();
    try {
      // Held between two statements, as a transaction or a job's lock holds it: no statement is running.
      const held = await pool.connect();
      const { rows } = await held.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      await killer.query('SELECT pg_terminate_backend($1)', [rows[0]!.pid]);
      // Without a listener of ours this error event has none: in the server process that is an uncaught
      // exception (the e2e failover test sees the process die).
      for (let i = 0; i < 100 && lost.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(lost.map((e) => (e as { code?: string }).code)).toEqual(['57P01']);
      const next = await failure(() => held.query('SELECT 1'));
      expect(toRegistryError(next).status).toBe(503);
      held.release();
      const again = await pool.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
      expect(again.rows[0]!.pid).not.toBe(rows[0]!.pid);

      // An idle connection ended the same way is reported once, through the same callback.
      const idle = await pool.connect();
      const idlePid = (await idle.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')).rows[0]!.pid;
      idle.release();
      await killer.query('SELECT pg_terminate_backend($1)', [idlePid]);
      for (let i = 0; i < 100 && lost.length === 1; i++) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 100));
      expect(lost).toHaveLength(2);
    } finally {
      await killer.end();
      await pool.end();
    }
  });
});

describe('a session that idles inside a transaction', () => {
  let t: TestDatabase;
  beforeAll(async () => {
    t = await createTestDatabase();
  });
  afterAll(async () => {
    await t.drop();
  });

  it('is ended by the server, so the locks of a stopped process do not stall the others', async () => {
    const lost: Error[] = [];
    const stuck = createPool({
      connectionString: t.url,
      max: 1,
      idleInTransactionTimeoutMs: 300,
      onConnectionLost: (e) => lost.push(e),
    });
    const other = createPool({ connectionString: t.url, max: 1 });
    // The commit of a digest takes this lock in its transaction; a process stopped right after holds it.
    const held = await stuck.connect();
    try {
      await held.query('BEGIN');
      await held.query('SELECT pg_advisory_xact_lock(42)');
      const taken = Date.now();
      await other.query('SELECT pg_advisory_xact_lock(42)');
      const waited = Date.now() - taken;
      expect(waited).toBeGreaterThanOrEqual(250);
      expect(waited).toBeLessThan(5000);
      // The stuck connection's FATAL arrives on its own socket, not necessarily before the other's answer.
      for (let i = 0; i < 100 && lost.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(lost.map((e) => (e as { code?: string }).code)).toEqual(['25P03']);
      expect(toRegistryError(await failure(() => held.query('COMMIT'))).status).toBe(503);
    } finally {
      held.release();
    }
    try {
      // A transaction that keeps running statements is not cut, however long it lasts.
      const busy = await stuck.connect();
      try {
        await busy.query('BEGIN');
        for (let i = 0; i < 4; i++) await busy.query('SELECT pg_sleep(0.2)');
        await busy.query('COMMIT');
      } finally {
        busy.release();
      }
      expect(lost).toHaveLength(1);
    } finally {
      await stuck.end();
      await other.end();
    }
  });
});
