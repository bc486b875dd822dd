import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EmbeddedPostgres } from '../../libs/db/src';
import { randomBlob, sha256 } from '../support/http';
import { startServer, type ServerProcess } from '../support/server-process';

const CLIENTS = 16;

describe('PostgreSQL restarted under load', () => {
  let root: string;
  let postgres: EmbeddedPostgres;
  let server: ServerProcess;

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'strata-db-restart-'));
    // A cluster of the test's own, so restarting it touches nothing else on the machine.
    postgres = new EmbeddedPostgres({ dir: join(root, 'postgres'), database: 'strata', fast: true });
    const url = await postgres.start();
    server = await startServer({ DATABASE_URL: url, STRATA_DATA_DIR: join(root, 'data') });
  });
  afterAll(async () => {
    server?.child.kill('SIGKILL');
    await server?.exited;
    await postgres?.stop();
    await rm(root, { recursive: true, force: true });
  });

  it('answers 503 with Retry-After while it is away, never 500, and loses nothing it acknowledged', async () => {
    const statuses = new Map<string, number>();
    const count = (key: string): void => void statuses.set(key, (statuses.get(key) ?? 0) + 1);
    const acknowledged: { repo: string; digest: string }[] = [];
    let missingRetryAfter = 0;
    let stop = false;

    const seen = (res: Response, step: string): void => {
      count(`${step} ${res.status}`);
      if (res.status === 503 && res.headers.get('retry-after') === null) missingRetryAfter++;
    };
    async function client(n: number): Promise<void> {
      const repo = `restart/c${n}`;
      for (let i = 0; !stop; i++) {
        const { data, digest } = randomBlob(i % 3 === 0 ? 300_000 : 4096);
        try {
          const post = await fetch(`${server.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
          seen(post, 'POST');
          await post.arrayBuffer();
          if (post.status !== 202) continue;
          const put = new URL(post.headers.get('location')!, server.url);
          put.searchParams.set('digest', digest);
          const res = await fetch(put, {
            method: 'PUT',
            body: data,
            headers: { 'content-type': 'application/octet-stream' },
          });
          seen(res, 'PUT');
          await res.arrayBuffer();
          if (res.status === 201) acknowledged.push({ repo, digest });
        } catch (e) {
          // An answer cut off by the connection closing after a refusal: counted, and the client goes on.
          count(`network ${(e as Error).message}`);
        }
      }
    }
    const committed = (): number => statuses.get('PUT 201') ?? 0;
    async function progress(beyond: number): Promise<void> {
      for (let i = 0; i < 600 && committed() < beyond; i++) await new Promise((r) => setTimeout(r, 50));
      expect(committed()).toBeGreaterThanOrEqual(beyond);
    }

    const clients = Array.from({ length: CLIENTS }, (_, n) => client(n));
    try {
      for (let restart = 0; restart < 3; restart++) {
        await progress(committed() + 50);
        await postgres.stop();
        await postgres.start();
      }
      // Service resumes on the restarted database.
      await progress(committed() + 50);
    } finally {
      stop = true;
      await Promise.all(clients);
    }

    const fivexx = [...statuses.entries()].filter(([k]) => /^\w+ 5\d\d$/.test(k) && !k.endsWith(' 503'));
    expect(fivexx).toEqual([]);
    expect(missingRetryAfter).toBe(0);
    expect(server.lines.filter((l) => l.level === 'error' || l.level === 'fatal')).toEqual([]);
    // Every blob a client was told had committed is there, whole.
    for (const { repo, digest } of acknowledged) {
      const res = await fetch(`${server.url}/v2/${repo}/blobs/${digest}`);
      expect(res.status).toBe(200);
      expect(sha256(Buffer.from(await res.arrayBuffer()))).toBe(digest);
    }
    process.stdout.write(`database restarts under load: ${JSON.stringify(Object.fromEntries(statuses))}\n`);
  }, 120_000);
});
