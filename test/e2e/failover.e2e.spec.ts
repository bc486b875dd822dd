import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { imageManifest, pushBlob, randomBlob, sha256 } from '../support/http';
import { startServer, type ServerProcess } from '../support/server-process';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

/**
 * What a PostgreSQL failover or restart does to a replica: every backend is terminated, including those a
 * request holds between two statements of a transaction, or a job holds for its lock. The process must live on,
 * answer what it can and 503 the rest, and serve normally once the database answers again.
 */
describe('the strata process while its database connections are terminated', () => {
  let database: TestDatabase;
  let dataDir: string;
  let admin: pg.Client;
  let server: ServerProcess;

  beforeAll(async () => {
    database = await createTestDatabase();
    dataDir = await mkdtemp(join(tmpdir(), 'strata-failover-'));
    admin = new pg.Client({ connectionString: database.url });
    await admin.connect();
    server = await startServer({
      DATABASE_URL: database.url,
      STRATA_DATA_DIR: dataDir,
      STRATA_LOG_LEVEL: 'warn',
    });
  });
  afterAll(async () => {
    if (server && server.child.exitCode === null) {
      server.child.kill('SIGTERM');
      await server.exited;
    }
    await admin.end();
    await database.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  /** Terminates every connection of the server's database but the caller's; returns how many. */
  async function terminateAll(): Promise<number> {
    const { rows } = await admin.query<{ n: string }>(
      `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) AS n FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()`,
    );
    return Number(rows[0]!.n);
  }

  it('lives on, answers 503 rather than 500, and serves normally once the database is back', async () => {
    const statuses: number[] = [];
    const committed: { repo: string; data: Buffer; digest: string }[] = [];
    let stop = false;
    /** POST, two PATCHes, PUT: the commit that reads chunk rows and publishes in a transaction. */
    const pushChunked = async (repo: string, data: Buffer, digest: string): Promise<number> => {
      const post = await fetch(`${server.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
      await post.arrayBuffer();
      statuses.push(post.status);
      if (post.status !== 202) return post.status;
      const location = new URL(post.headers.get('location')!, server.url);
      const half = data.length >> 1;
      for (const part of [data.subarray(0, half), data.subarray(half)]) {
        const patch = await fetch(location, {
          method: 'PATCH',
          headers: { 'content-type': 'application/octet-stream' },
          body: part,
        });
        await patch.arrayBuffer();
        statuses.push(patch.status);
        if (patch.status !== 202) return patch.status;
      }
      location.searchParams.set('digest', digest);
      const put = await fetch(location, { method: 'PUT' });
      await put.arrayBuffer();
      return put.status;
    };
    // Clients pushing blobs (small ones in one statement, larger ones in chunks and a commit transaction) and
    // tagging manifests, without pause.
    const client = async (n: number): Promise<void> => {
      for (let i = 0; !stop; i++) {
        const repo = `failover/c${n}`;
        const blob = randomBlob(i % 2 ? 1024 + i : 200_000 + i);
        try {
          const res =
            blob.data.length > 65536
              ? {
                  status: await pushChunked(repo, blob.data, blob.digest),
                  arrayBuffer: () => Promise.resolve(undefined),
                }
              : await pushBlob(server.url, repo, blob.data);
          statuses.push(res.status);
          await res.arrayBuffer();
          if (res.status !== 201) continue;
          committed.push({ repo, ...blob });
          const config = Buffer.from(JSON.stringify({ n, i }));
          const cfg = await pushBlob(server.url, repo, config);
          statuses.push(cfg.status);
          await cfg.arrayBuffer();
          if (cfg.status !== 201) continue;
          const manifest = imageManifest(config, [{ digest: blob.digest, size: blob.data.length }]);
          const put = await fetch(`${server.url}/v2/${repo}/manifests/t${i % 3}`, {
            method: 'PUT',
            headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' },
            body: manifest,
          });
          statuses.push(put.status);
          await put.arrayBuffer();
        } catch (e) {
          // POST refused with 503: counted, and the client goes on as a retrying client would.
          const m = /POST gave (\d+)/.exec((e as Error).message);
          if (!m) throw e;
          statuses.push(Number(m[1]));
        }
      }
    };
    const clients = Array.from({ length: 8 }, (_, n) => client(n));
    let terminated = 0;
    for (let round = 0; round < 40; round++) {
      await new Promise((r) => setTimeout(r, 25 + (round % 4) * 10));
      terminated += await terminateAll();
    }
    stop = true;
    await Promise.all(clients);

    expect(server.child.exitCode).toBeNull();
    expect(terminated).toBeGreaterThan(40);
    const unexpected = statuses.filter((s) => ![201, 202, 503].includes(s));
    expect(unexpected).toEqual([]);
    expect(statuses.filter((s) => s === 201).length).toBeGreaterThan(0);
    expect(statuses.filter((s) => s === 503).length).toBeGreaterThan(0);

    // The database is back: every blob that got 201 reads back whole, and new pushes work.
    for (const b of committed) {
      const res = await fetch(`${server.url}/v2/${b.repo}/blobs/${b.digest}`);
      expect(res.status).toBe(200);
      expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(b.digest);
    }
    // And so does every blob the database names, including those whose 201 was lost with a connection.
    const { rows } = await admin.query<{ name: string; digest: string }>(
      `SELECT r.name, rb.digest FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id`,
    );
    expect(rows.length).toBeGreaterThanOrEqual(committed.length);
    for (const row of rows) {
      const res = await fetch(`${server.url}/v2/${row.name}/blobs/${row.digest}`);
      expect(res.status).toBe(200);
      expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(row.digest);
    }
    const after = randomBlob(4096);
    expect((await pushBlob(server.url, 'failover/after', after.data)).status).toBe(201);
    expect(server.lines.filter((l) => l.status === 500)).toEqual([]);
    expect(server.lines.filter((l) => l.level === 'fatal')).toEqual([]);
  });

  it('answers 503 while the database refuses its connections (FATAL 55000), and serves once it accepts them', async () => {
    const blob = randomBlob(2048);
    expect((await pushBlob(server.url, 'failover/refused', blob.data)).status).toBe(201);
    const name = (await admin.query<{ db: string }>('SELECT current_database() AS db')).rows[0]!.db;
    // A database cannot refuse connections from a session of its own: this is done from the server's admin one.
    const outside = new pg.Client({ connectionString: process.env.STRATA_TEST_ADMIN_URL });
    await outside.connect();
    try {
      await outside.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS false`);
      await terminateAll();
      for (const path of [`/v2/failover/refused/blobs/${blob.digest}`, '/v2/failover/refused/tags/list']) {
        const res = await fetch(`${server.url}${path}`);
        expect(res.status).toBe(503);
        expect(res.headers.get('retry-after')).toBe('1');
      }
    } finally {
      await outside.query(`ALTER DATABASE ${name} ALLOW_CONNECTIONS true`);
      await outside.end();
    }
    const res = await fetch(`${server.url}/v2/failover/refused/blobs/${blob.digest}`);
    expect(res.status).toBe(200);
    expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(blob.digest);
    expect(server.lines.filter((l) => l.status === 500)).toEqual([]);
  });
});
