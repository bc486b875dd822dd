import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import pino from 'pino';
import { PreparedStatements } from '@strata/db';
import type { RequestMeta } from '@strata/events';
import { MEDIA_TYPE, RegistryError } from '@strata/oci';
import { createRegistry, type Registry } from '@strata/registry';
import { FilesystemDriver } from '@strata/storage';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

const sha256 = (data: Buffer): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
const meta: RequestMeta = { actor: 'test', requestId: null, clientAddr: null, userAgent: null };

/** What a request ended with: ok, or the OCI code it was refused with. Anything else fails the test. */
async function outcome(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (e instanceof RegistryError) return e.code;
    throw e;
  }
}

/**
 * Pushes that race for one tag, with deletes of the tag and of the manifests under them: each write is one
 * function taking its locks in one order (migration 0009), so PostgreSQL never has to break a deadlock, and the
 * tag's history stays one period after another.
 */
describe('concurrent writes to one tag', () => {
  let t: TestDatabase;
  let dataDir: string;
  let registry: Registry;

  beforeAll(async () => {
    t = await createTestDatabase();
    dataDir = await mkdtemp(join(tmpdir(), 'strata-contention-'));
    const storage = new FilesystemDriver(dataDir);
    await storage.init();
    registry = createRegistry({
      statements: new PreparedStatements(t.pool),
      storage,
      logger: pino({ level: 'silent' }),
      uploads: { inlineMax: 1024 },
    });
  });
  afterAll(async () => {
    await registry.close();
    await t.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  async function deadlocks(): Promise<number> {
    // Statistics reach the shared view when a backend next reports them (at most once a second).
    await new Promise((r) => setTimeout(r, 1500));
    const r = await t.pool.query<{ deadlocks: string }>(
      'SELECT pg_stat_clear_snapshot(), deadlocks FROM pg_stat_database WHERE datname = current_database()',
    );
    return Number(r.rows[0]!.deadlocks);
  }

  it('never deadlocks, answers every request, and keeps one lifetime after another', async () => {
    const repo = 'contention/app';
    const blob = async (size: number): Promise<{ digest: string; size: number }> => {
      const data = randomBytes(size);
      return registry.uploads.upload(repo, sha256(data), Readable.from([data]), meta);
    };
    const config = await blob(200);
    const layers = await Promise.all([blob(300), blob(5000), blob(70_000)]);
    // Eight images sharing the blobs (every push share-locks the same links), each its own manifest.
    const images = Array.from({ length: 8 }, (_, i) =>
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MEDIA_TYPE.OCI_MANIFEST,
          config: { mediaType: MEDIA_TYPE.OCI_CONFIG, ...config },
          layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...l })),
          annotations: { n: String(i) },
        }),
      ),
    );
    const digests = images.map(sha256);
    const before = await deadlocks();

    const outcomes = new Map<string, number>();
    const count = (what: string): void => void outcomes.set(what, (outcomes.get(what) ?? 0) + 1);
    const worker = async (w: number): Promise<void> => {
      for (let round = 0; round < 40; round++) {
        const k = (w * 7 + round) % images.length;
        const tag = round % 3 === 0 ? 'other' : 'latest';
        count(
          `put ${await outcome(registry.manifests.put(repo, tag, MEDIA_TYPE.OCI_MANIFEST, images[k]!, meta))}`,
        );
        if (round % 5 === 4)
          count(`delete tag ${await outcome(registry.manifests.delete(repo, 'latest', meta))}`);
        if (round % 11 === 10)
          count(`delete manifest ${await outcome(registry.manifests.delete(repo, digests[k]!, meta))}`);
      }
    };
    await Promise.all(Array.from({ length: 16 }, (_, w) => worker(w)));

    // Pushes all succeed (a deleted manifest is pushed again); deletes find their target or say it is gone.
    for (const key of outcomes.keys())
      expect([
        'put ok',
        'delete tag ok',
        'delete tag MANIFEST_UNKNOWN',
        'delete manifest ok',
        'delete manifest MANIFEST_UNKNOWN',
      ]).toContain(key);
    expect(outcomes.get('put ok')).toBe(16 * 40);
    expect(await deadlocks()).toBe(before);

    // The history of each tag is one period after another: at most one open, none overlapping, one per move.
    const overlaps = await t.pool.query(
      `SELECT a.tag FROM tag_lifetimes a JOIN tag_lifetimes b
         ON a.repository_id = b.repository_id AND a.tag = b.tag AND a.id < b.id
        AND tstzrange(a.started_at, a.ended_at) && tstzrange(b.started_at, b.ended_at)`,
    );
    expect(overlaps.rows).toEqual([]);
    const open = await t.pool.query<{ tag: string; n: string }>(
      `SELECT tag, count(*) AS n FROM tag_lifetimes WHERE ended_at IS NULL GROUP BY tag HAVING count(*) > 1`,
    );
    expect(open.rows).toEqual([]);
    const moves = await t.pool.query<{ moves: string; lifetimes: string }>(
      `SELECT (SELECT count(*) FROM events WHERE type = 'tag.moved') AS moves,
              (SELECT count(*) FROM tag_lifetimes) AS lifetimes`,
    );
    expect(moves.rows[0]!.moves).toBe(moves.rows[0]!.lifetimes);
    // What each tag points at now is what its open lifetime says.
    const current = await t.pool.query(
      `SELECT t.name FROM tags t LEFT JOIN tag_lifetimes l
         ON l.repository_id = t.repository_id AND l.tag = t.name AND l.ended_at IS NULL
        WHERE l.digest IS DISTINCT FROM t.digest`,
    );
    expect(current.rows).toEqual([]);
  }, 120_000);
});
