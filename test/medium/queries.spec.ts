import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import pino from 'pino';
import { PreparedStatements } from '@strata/db';
import type { RequestMeta } from '@strata/events';
import { MEDIA_TYPE } from '@strata/oci';
import { createRegistry, type ManifestService, TagStore, type UploadService } from '@strata/registry';
import { FilesystemDriver } from '@strata/storage';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

const QUERIES_FILE = join(__dirname, '../../docs/queries.md');

interface DocQuery {
  /** The SQL with psql's `:'name'` variables turned into `$1`, `$2`, … */
  readonly text: string;
  readonly variables: readonly string[];
}

/** Every ```sql block of docs/queries.md, by the name on its `-- query: <name>` first line. */
function parseQueries(markdown: string): Map<string, DocQuery> {
  const queries = new Map<string, DocQuery>();
  for (const [, block] of markdown.matchAll(/```sql\n([\s\S]*?)```/g)) {
    const name = /^-- query: ([a-z-]+)\n/.exec(block!)?.[1];
    if (!name) throw new Error(`a sql block of docs/queries.md has no "-- query: <name>" line:\n${block}`);
    const variables: string[] = [];
    const text = block!.replace(/:'([a-z_]+)'/g, (_, v: string) => {
      if (!variables.includes(v)) variables.push(v);
      return `$${variables.indexOf(v) + 1}`;
    });
    queries.set(name, { text, variables });
  }
  return queries;
}

const sha256 = (data: Buffer): string => `sha256:${createHash('sha256').update(data).digest('hex')}`;
const actor = (name: string): RequestMeta => ({
  actor: name,
  requestId: null,
  clientAddr: null,
  userAgent: null,
});

const once = (data: Buffer): AsyncIterable<Buffer> => Readable.from([data]);

interface Blob {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
}

describe('the worked queries of docs/queries.md', () => {
  let t: TestDatabase;
  let dataDir: string;
  let queries: Map<string, DocQuery>;
  let uploads: UploadService;
  let manifests: ManifestService;

  beforeAll(async () => {
    queries = parseQueries(await readFile(QUERIES_FILE, 'utf8'));
    t = await createTestDatabase();
    dataDir = await mkdtemp(join(tmpdir(), 'strata-queries-'));
    const storage = new FilesystemDriver(dataDir);
    await storage.init();
    ({ uploads, manifests } = createRegistry({
      statements: new PreparedStatements(t.pool),
      storage,
      logger: pino({ level: 'silent' }),
    }));
  });
  afterAll(async () => {
    await uploads.close();
    t.pool.on('error', () => undefined);
    await t.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  async function run<R>(name: string, values: Record<string, string>): Promise<R[]> {
    const query = queries.get(name);
    if (!query) throw new Error(`docs/queries.md has no query named ${name}`);
    const params = query.variables.map((v) => {
      if (!(v in values)) throw new Error(`query ${name} needs :'${v}'`);
      return values[v];
    });
    return (await t.pool.query(query.text, params)).rows as R[];
  }

  /** The database's clock, as text so no microsecond is lost on the way back in. */
  async function now(): Promise<string> {
    return (await t.pool.query<{ at: string }>('SELECT clock_timestamp()::text AS at')).rows[0]!.at;
  }

  const bytes = new Map<string, Buffer>();

  async function blob(repository: string, size: number, mediaType: string, who: RequestMeta): Promise<Blob> {
    const data = randomBytes(size);
    const { digest } = await uploads.upload(repository, sha256(data), once(data), who);
    bytes.set(digest, data);
    return { mediaType, digest, size };
  }

  async function image(repository: string, tag: string, config: Blob, layers: Blob[], who: RequestMeta) {
    const body = Buffer.from(
      JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE.OCI_MANIFEST, config, layers }),
    );
    const { digest } = await manifests.put(repository, tag, MEDIA_TYPE.OCI_MANIFEST, body, who);
    return digest;
  }

  const alice = actor('alice');
  const bob = actor('bob');
  const LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';

  it('has the queries the tests run, and no others', () => {
    expect([...queries.keys()].sort()).toEqual([
      'digest-tags',
      'layer-repositories',
      'pushed-by-actor',
      'refused-changes',
      'repository-size-at-time',
      'tag-at-time',
      'tag-changes',
    ]);
  });

  it('answers each question about a history pushed through the services', async () => {
    const app = 'team/app';
    const other = 'team/other';
    const t0 = await now();

    // alice pushes image A to app:latest
    const configA = await blob(app, 100, MEDIA_TYPE.OCI_CONFIG, alice);
    const shared = await blob(app, 1000, LAYER, alice);
    const onlyA = await blob(app, 2000, LAYER, alice);
    const a = await image(app, 'latest', configA, [shared, onlyA], alice);
    const t1 = await now();

    // bob pushes image B, sharing the base layer, to app:latest
    const configB = await blob(app, 150, MEDIA_TYPE.OCI_CONFIG, bob);
    const onlyB = await blob(app, 3000, LAYER, bob);
    const b = await image(app, 'latest', configB, [shared, onlyB], bob);
    const t2 = await now();

    // alice pushes the shared layer in another repository, then bob deletes image A
    const sharedThere = await uploads.upload(other, shared.digest, once(bytes.get(shared.digest)!), alice);
    expect(sharedThere.digest).toBe(shared.digest);
    const configC = await blob(other, 50, MEDIA_TYPE.OCI_CONFIG, alice);
    const c = await image(other, 'v1', configC, [shared], alice);
    await manifests.delete(app, a, bob);
    const t3 = await now();

    // What did app:latest point to?
    expect(await run('tag-at-time', { repository: app, tag: 'latest', at: t0 })).toEqual([]);
    expect(await run('tag-at-time', { repository: app, tag: 'latest', at: t1 })).toEqual([{ digest: a }]);
    expect(await run('tag-at-time', { repository: app, tag: 'latest', at: t2 })).toEqual([{ digest: b }]);
    expect(await run('tag-at-time', { repository: app, tag: 'latest', at: t3 })).toEqual([{ digest: b }]);

    // Who moved it?
    const changes = await run<{
      at: Date;
      actor: string;
      action: string;
      previous_digest: string | null;
      digest: string;
    }>('tag-changes', { repository: app, tag: 'latest' });
    expect(
      changes.map(({ actor: who, action, previous_digest, digest }) => [
        who,
        action,
        previous_digest,
        digest,
      ]),
    ).toEqual([
      ['alice', 'tag.moved', null, a],
      ['bob', 'tag.moved', a, b],
    ]);
    expect(changes[0]!.at.getTime()).toBeLessThan(changes[1]!.at.getTime());

    // Which repositories hold the layers now?
    expect(await run('layer-repositories', { layer: shared.digest })).toEqual([
      { repository: app, manifests: 1 },
      { repository: other, manifests: 1 },
    ]);
    expect(await run('layer-repositories', { layer: onlyA.digest })).toEqual([]);
    expect(await run('layer-repositories', { layer: onlyB.digest })).toEqual([
      { repository: app, manifests: 1 },
    ]);

    // What did each of them push?
    const byAlice = await run<{ repository: string; digest: string; deleted_by: string | null }>(
      'pushed-by-actor',
      {
        actor: 'alice',
        from: t0,
        to: t3,
      },
    );
    expect(byAlice.map((r) => [r.repository, r.digest, r.deleted_by])).toEqual([
      [app, a, 'bob'],
      [other, c, null],
    ]);
    const byBobEarly = await run<{ digest: string }>('pushed-by-actor', { actor: 'bob', from: t0, to: t1 });
    expect(byBobEarly).toEqual([]);
    const byBob = await run<{ digest: string; media_type: string }>('pushed-by-actor', {
      actor: 'bob',
      from: t1,
      to: t3,
    });
    expect(byBob.map((r) => [r.digest, r.media_type])).toEqual([[b, MEDIA_TYPE.OCI_MANIFEST]]);

    // Where was A ever tagged?
    const tagsOfA = await run<{
      repository: string;
      tag: string;
      started_by: string;
      ended_by: string;
      end_reason: string;
    }>('digest-tags', { digest: a });
    expect(tagsOfA.map((r) => [r.repository, r.tag, r.started_by, r.ended_by, r.end_reason])).toEqual([
      [app, 'latest', 'alice', 'bob', 'moved'],
    ]);

    // How much did app store? Shared blobs count once; deleted manifests stop counting when deleted.
    const size = async (at: string): Promise<number> =>
      Number(
        (await run<{ stored_bytes: number }>('repository-size-at-time', { repository: app, at }))[0]!
          .stored_bytes,
      );
    expect(await size(t0)).toBe(0);
    expect(await size(t1)).toBe(100 + 1000 + 2000);
    expect(await size(t2)).toBe(100 + 1000 + 2000 + 150 + 3000);
    expect(await size(t3)).toBe(150 + 1000 + 3000);
  });

  it('lists the changes an immutable-tag rule refused', async () => {
    const repository = 'locked/app';
    const rule = await new TagStore(new PreparedStatements(t.pool)).addRule('locked/*', 'v*', actor('admin'));
    const config = Buffer.from('{"architecture":"amd64","os":"linux","n":1}');
    await uploads.upload(repository, sha256(config), once(config), actor('alice'));
    const image = (n: number): Buffer =>
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MEDIA_TYPE.OCI_MANIFEST,
          config: { mediaType: MEDIA_TYPE.OCI_CONFIG, digest: sha256(config), size: config.length },
          layers: [],
          annotations: { n: String(n) },
        }),
      );
    await manifests.put(repository, 'v1', MEDIA_TYPE.OCI_MANIFEST, image(1), actor('alice'));
    await expect(
      manifests.put(repository, 'v1', MEDIA_TYPE.OCI_MANIFEST, image(2), actor('mallory')),
    ).rejects.toThrow('the tag is immutable');
    await expect(manifests.delete(repository, 'v1', actor('mallory'))).rejects.toThrow(
      'the tag is immutable',
    );
    const refused = await run<{
      actor: string;
      tag: string;
      change: string;
      rule: number;
      tag_pattern: string;
    }>('refused-changes', { repository });
    expect(refused.map((r) => [r.actor, r.tag, r.change, Number(r.rule), r.tag_pattern])).toEqual([
      ['mallory', 'v1', 'move', rule, 'v*'],
      ['mallory', 'v1', 'delete', rule, 'v*'],
    ]);
  });
});
