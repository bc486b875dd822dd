import { createHash } from 'node:crypto';
import { sql } from 'kysely';
import { MEDIA_TYPE } from '@strata/oci';
import { errorCodes, pushBlob, randomBlob, sha256 } from '../support/http';
import { startTestApp, type TestApp } from '../support/test-app';

const LAYER_TYPE = 'application/vnd.oci.image.layer.v1.tar+gzip';

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
}

interface Pushed {
  readonly res: Response;
  readonly digest: string;
  readonly body: Buffer;
  readonly descriptor: Descriptor;
}

describe('manifest protocol', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(async () => {
    expect(t.serverErrors()).toEqual([]);
    await t.close();
  });

  const url = (path: string): string => `${t.url}${path}`;

  async function blob(repo: string, size = 64): Promise<Descriptor> {
    const { data, digest } = randomBlob(size);
    const res = await pushBlob(t.url, repo, data);
    expect(res.status).toBe(201);
    return { mediaType: LAYER_TYPE, digest, size };
  }

  async function putManifest(
    repo: string,
    reference: string,
    json: unknown,
    contentType: string | null = MEDIA_TYPE.OCI_MANIFEST,
  ): Promise<Pushed> {
    const body = Buffer.from(JSON.stringify(json));
    const res = await fetch(url(`/v2/${repo}/manifests/${reference}`), {
      method: 'PUT',
      body,
      headers: contentType === null ? {} : { 'content-type': contentType },
    });
    const digest = sha256(body);
    const mediaType = (json as { mediaType?: string }).mediaType ?? contentType ?? '';
    return { res, digest, body, descriptor: { mediaType, digest, size: body.length } };
  }

  /** Pushes a config and `layers` random layers, then an image manifest of them. */
  async function pushImage(
    repo: string,
    reference: string,
    extra: Record<string, unknown> = {},
    layers = 1,
    mediaType: string = MEDIA_TYPE.OCI_MANIFEST,
  ): Promise<Pushed> {
    const config = { ...(await blob(repo, 32)), mediaType: MEDIA_TYPE.OCI_CONFIG };
    const layerDescriptors: Descriptor[] = [];
    for (let i = 0; i < layers; i++) layerDescriptors.push(await blob(repo));
    const pushed = await putManifest(
      repo,
      reference,
      { schemaVersion: 2, mediaType, config, layers: layerDescriptors, ...extra },
      mediaType,
    );
    expect(pushed.res.status).toBe(201);
    return pushed;
  }

  async function events(repo: string): Promise<{ type: string; subject: string | null; payload: unknown }[]> {
    return t.database.db
      .selectFrom('events')
      .select(['type', 'subject', 'payload'])
      .where('repository', '=', repo)
      .where((eb) => eb.or([eb('type', 'like', 'manifest.%'), eb('type', 'like', 'tag.%')]))
      .orderBy('seq')
      .execute();
  }

  describe('push and pull', () => {
    it('pushes an OCI image manifest by tag and serves its exact bytes by tag and by digest', async () => {
      const pushed = await pushImage('pull/oci', 'v1', { annotations: { 'org.example': 'yes' } }, 2);
      expect(pushed.res.headers.get('location')).toBe(`/v2/pull/oci/manifests/${pushed.digest}`);
      expect(pushed.res.headers.get('docker-content-digest')).toBe(pushed.digest);
      expect(pushed.res.headers.get('oci-subject')).toBeNull();
      for (const reference of ['v1', pushed.digest]) {
        const get = await fetch(url(`/v2/pull/oci/manifests/${reference}`));
        expect(get.status).toBe(200);
        expect(get.headers.get('content-type')).toBe(MEDIA_TYPE.OCI_MANIFEST);
        expect(get.headers.get('docker-content-digest')).toBe(pushed.digest);
        expect(get.headers.get('content-length')).toBe(String(pushed.body.length));
        expect(Buffer.from(await get.arrayBuffer())).toEqual(pushed.body);
      }
    });

    it('answers HEAD with the headers and no body', async () => {
      const pushed = await pushImage('pull/head', 'v1');
      const head = await fetch(url('/v2/pull/head/manifests/v1'), { method: 'HEAD' });
      expect(head.status).toBe(200);
      expect(head.headers.get('content-type')).toBe(MEDIA_TYPE.OCI_MANIFEST);
      expect(head.headers.get('content-length')).toBe(String(pushed.body.length));
      expect(head.headers.get('docker-content-digest')).toBe(pushed.digest);
      expect(await head.text()).toBe('');
      const missing = await fetch(url('/v2/pull/head/manifests/nope'), { method: 'HEAD' });
      expect(missing.status).toBe(404);
      expect(await missing.text()).toBe('');
    });

    it('serves the stored media type whatever a narrow Accept header asks for', async () => {
      await pushImage('pull/accept', 'v1');
      const get = await fetch(url('/v2/pull/accept/manifests/v1'), {
        headers: { accept: MEDIA_TYPE.DOCKER_MANIFEST_LIST },
      });
      expect(get.status).toBe(200);
      expect(get.headers.get('content-type')).toBe(MEDIA_TYPE.OCI_MANIFEST);
    });

    it('pushes a Docker schema 2 manifest, a Docker manifest list and an OCI index', async () => {
      const docker = await pushImage('pull/types', 'docker', {}, 1, MEDIA_TYPE.DOCKER_MANIFEST);
      const oci = await pushImage('pull/types', 'oci');
      const children = [
        { ...docker.descriptor, platform: { os: 'linux', architecture: 'amd64' } },
        { ...oci.descriptor, platform: { os: 'linux', architecture: 'arm64' } },
      ];
      const list = await putManifest(
        'pull/types',
        'list',
        { schemaVersion: 2, mediaType: MEDIA_TYPE.DOCKER_MANIFEST_LIST, manifests: children },
        MEDIA_TYPE.DOCKER_MANIFEST_LIST,
      );
      expect(list.res.status).toBe(201);
      const index = await putManifest(
        'pull/types',
        'index',
        { schemaVersion: 2, mediaType: MEDIA_TYPE.OCI_INDEX, manifests: children },
        MEDIA_TYPE.OCI_INDEX,
      );
      expect(index.res.status).toBe(201);
      for (const [tag, pushed, type] of [
        ['docker', docker, MEDIA_TYPE.DOCKER_MANIFEST],
        ['list', list, MEDIA_TYPE.DOCKER_MANIFEST_LIST],
        ['index', index, MEDIA_TYPE.OCI_INDEX],
      ] as const) {
        const get = await fetch(url(`/v2/pull/types/manifests/${tag}`));
        expect(get.headers.get('content-type')).toBe(type);
        expect(Buffer.from(await get.arrayBuffer())).toEqual(pushed.body);
      }
      const refs = await t.database.db
        .selectFrom('manifest_references')
        .select(['child_digest', 'kind', 'position'])
        .where('parent_digest', '=', index.digest)
        .orderBy('position')
        .execute();
      expect(refs).toEqual([
        { child_digest: docker.digest, kind: 'manifest', position: 0 },
        { child_digest: oci.digest, kind: 'manifest', position: 1 },
      ]);
    });

    it('takes the media type from the body when the request has a generic or no Content-Type', async () => {
      const config = { ...(await blob('pull/generic')), mediaType: MEDIA_TYPE.OCI_CONFIG };
      const json = { schemaVersion: 2, mediaType: MEDIA_TYPE.OCI_MANIFEST, config, layers: [] };
      const none = await putManifest('pull/generic', 'none', json, null);
      expect(none.res.status).toBe(201);
      const generic = await putManifest('pull/generic', 'json', json, 'application/json');
      expect(generic.res.status).toBe(201);
      const get = await fetch(url('/v2/pull/generic/manifests/json'));
      expect(get.headers.get('content-type')).toBe(MEDIA_TYPE.OCI_MANIFEST);
      const bare = await putManifest('pull/generic', 'bare', { schemaVersion: 2, config, layers: [] }, null);
      expect(bare.res.status).toBe(400);
      expect(await errorCodes(bare.res)).toEqual(['MANIFEST_INVALID']);
    });

    it('pushes by digest, sha512 included, and refuses a digest that does not match the bytes', async () => {
      const config = { ...(await blob('pull/bydigest')), mediaType: MEDIA_TYPE.OCI_CONFIG };
      const json = { schemaVersion: 2, mediaType: MEDIA_TYPE.OCI_MANIFEST, config, layers: [] };
      const body = Buffer.from(JSON.stringify(json));
      const ok = await putManifest('pull/bydigest', sha256(body), json);
      expect(ok.res.status).toBe(201);
      expect(ok.res.headers.get('docker-content-digest')).toBe(sha256(body));

      const json512 = { ...json, annotations: { n: '512' } };
      const body512 = Buffer.from(JSON.stringify(json512));
      const digest512 = `sha512:${createHash('sha512').update(body512).digest('hex')}`;
      const ok512 = await putManifest('pull/bydigest', digest512, json512);
      expect(ok512.res.status).toBe(201);
      expect(ok512.res.headers.get('docker-content-digest')).toBe(digest512);
      expect((await fetch(url(`/v2/pull/bydigest/manifests/${digest512}`))).status).toBe(200);

      const wrong = await putManifest('pull/bydigest', sha256('other bytes'), json);
      expect(wrong.res.status).toBe(400);
      expect(await errorCodes(wrong.res)).toEqual(['DIGEST_INVALID']);
      expect((await fetch(url(`/v2/pull/bydigest/manifests/${sha256('other bytes')}`))).status).toBe(404);
    });

    it('stores a manifest listing tens of thousands of layers', async () => {
      const config = { ...(await blob('pull/wide')), mediaType: MEDIA_TYPE.OCI_CONFIG };
      const layer = await blob('pull/wide');
      const json = {
        schemaVersion: 2,
        mediaType: MEDIA_TYPE.OCI_MANIFEST,
        config,
        layers: Array.from({ length: 20_000 }, () => layer),
      };
      const pushed = await putManifest('pull/wide', 'v1', json);
      expect(pushed.body.length).toBeGreaterThan(2 * 1024 * 1024);
      expect(pushed.res.status).toBe(201);
      const count = await t.database.db
        .selectFrom('manifest_references')
        .select((eb) => eb.fn.countAll<string>().as('n'))
        .where('parent_digest', '=', pushed.digest)
        .executeTakeFirstOrThrow();
      expect(Number(count.n)).toBe(20_001);
    });

    it('is idempotent: the same bytes pushed again record nothing new', async () => {
      const first = await pushImage('pull/again', 'v1');
      const again = await putManifest('pull/again', 'v1', JSON.parse(first.body.toString()));
      expect(again.res.status).toBe(201);
      expect(again.digest).toBe(first.digest);
      const byDigest = await putManifest('pull/again', first.digest, JSON.parse(first.body.toString()));
      expect(byDigest.res.status).toBe(201);
      expect((await events('pull/again')).map((e) => e.type)).toEqual(['manifest.pushed', 'tag.moved']);
      const second = await putManifest('pull/again', 'v2', JSON.parse(first.body.toString()));
      expect(second.res.status).toBe(201);
      expect((await events('pull/again')).map((e) => e.type)).toEqual([
        'manifest.pushed',
        'tag.moved',
        'tag.moved',
      ]);
    });
  });

  describe('refusals', () => {
    it('refuses Docker schema 1 by content type and by schemaVersion', async () => {
      const config = { ...(await blob('refuse/s1')), mediaType: MEDIA_TYPE.OCI_CONFIG };
      for (const type of [MEDIA_TYPE.DOCKER_SCHEMA1, MEDIA_TYPE.DOCKER_SCHEMA1_SIGNED]) {
        const r = await putManifest('refuse/s1', 'v1', { schemaVersion: 2, config, layers: [] }, type);
        expect(r.res.status).toBe(400);
        const body = (await r.res.json()) as { errors: { code: string; detail: { reason: string } }[] };
        expect(body.errors[0]!.code).toBe('MANIFEST_INVALID');
        expect(body.errors[0]!.detail.reason).toMatch(/schema 1/);
      }
      const v1 = await putManifest(
        'refuse/s1',
        'v1',
        { schemaVersion: 1, name: 'refuse/s1', tag: 'v1', fsLayers: [], history: [] },
        'application/json',
      );
      expect(v1.res.status).toBe(400);
      expect(await errorCodes(v1.res)).toEqual(['MANIFEST_INVALID']);
    });

    it('refuses a body mediaType that contradicts the Content-Type', async () => {
      const config = { ...(await blob('refuse/mismatch')), mediaType: MEDIA_TYPE.OCI_CONFIG };
      const r = await putManifest(
        'refuse/mismatch',
        'v1',
        { schemaVersion: 2, mediaType: MEDIA_TYPE.OCI_MANIFEST, config, layers: [] },
        MEDIA_TYPE.DOCKER_MANIFEST,
      );
      expect(r.res.status).toBe(400);
      expect(await errorCodes(r.res)).toEqual(['MANIFEST_INVALID']);
    });

    it('refuses invalid JSON, a missing config and an empty body', async () => {
      const notJson = await fetch(url('/v2/refuse/json/manifests/v1'), {
        method: 'PUT',
        body: '{nope',
        headers: { 'content-type': MEDIA_TYPE.OCI_MANIFEST },
      });
      expect(await errorCodes(notJson)).toEqual(['MANIFEST_INVALID']);
      const noConfig = await putManifest('refuse/json', 'v1', { schemaVersion: 2, layers: [] });
      expect(await errorCodes(noConfig.res)).toEqual(['MANIFEST_INVALID']);
      const empty = await fetch(url('/v2/refuse/json/manifests/v1'), {
        method: 'PUT',
        headers: { 'content-type': MEDIA_TYPE.OCI_MANIFEST },
      });
      expect(empty.status).toBe(400);
      expect(await errorCodes(empty)).toEqual(['MANIFEST_INVALID']);
    });

    it('refuses strings holding U+0000, which the database cannot store', async () => {
      const config = { ...(await blob('refuse/nul')), mediaType: MEDIA_TYPE.OCI_CONFIG };
      const r = await putManifest('refuse/nul', 'v1', {
        schemaVersion: 2,
        mediaType: MEDIA_TYPE.OCI_MANIFEST,
        config,
        layers: [],
        artifactType: 'application/x\u0000',
      });
      expect(r.res.status).toBe(400);
      expect(await errorCodes(r.res)).toEqual(['MANIFEST_INVALID']);
    });

    it('refuses a manifest over 4 MiB with 413, declared or streamed', async () => {
      const config = { ...(await blob('refuse/large')), mediaType: MEDIA_TYPE.OCI_CONFIG };
      const json = {
        schemaVersion: 2,
        mediaType: MEDIA_TYPE.OCI_MANIFEST,
        config,
        layers: [],
        annotations: { big: 'x'.repeat(4 * 1024 * 1024) },
      };
      const declared = await putManifest('refuse/large', 'v1', json);
      expect(declared.res.status).toBe(413);
      expect(await errorCodes(declared.res)).toEqual(['SIZE_INVALID']);

      const body = Buffer.from(JSON.stringify(json));
      const streamed = await fetch(url('/v2/refuse/large/manifests/v1'), {
        method: 'PUT',
        headers: { 'content-type': MEDIA_TYPE.OCI_MANIFEST },
        duplex: 'half',
        body: new ReadableStream({
          start(controller) {
            for (let at = 0; at < body.length; at += 64 * 1024)
              controller.enqueue(body.subarray(at, at + 64 * 1024));
            controller.close();
          },
        }),
      } as RequestInit);
      expect(streamed.status).toBe(413);
      expect(await errorCodes(streamed)).toEqual(['SIZE_INVALID']);
      expect((await fetch(url('/v2/refuse/large/manifests/v1'))).status).toBe(404);
    });

    it('refuses a manifest whose blob is not linked in the repository, naming it', async () => {
      const config = { ...(await blob('refuse/blob')), mediaType: MEDIA_TYPE.OCI_CONFIG };
      const elsewhere = await blob('refuse/other');
      const r = await putManifest('refuse/blob', 'v1', {
        schemaVersion: 2,
        mediaType: MEDIA_TYPE.OCI_MANIFEST,
        config,
        layers: [elsewhere],
      });
      expect(r.res.status).toBe(400);
      const body = (await r.res.json()) as { errors: { code: string; detail: { digest: string } }[] };
      expect(body.errors[0]).toMatchObject({
        code: 'MANIFEST_BLOB_UNKNOWN',
        detail: { digest: elsewhere.digest },
      });
      const fresh = await putManifest('refuse/never-pushed', 'v1', {
        schemaVersion: 2,
        mediaType: MEDIA_TYPE.OCI_MANIFEST,
        config,
        layers: [],
      });
      expect(await errorCodes(fresh.res)).toEqual(['MANIFEST_BLOB_UNKNOWN']);
    });

    it('refuses a descriptor whose size differs from the stored blob', async () => {
      const config = { ...(await blob('refuse/size')), mediaType: MEDIA_TYPE.OCI_CONFIG };
      const r = await putManifest('refuse/size', 'v1', {
        schemaVersion: 2,
        mediaType: MEDIA_TYPE.OCI_MANIFEST,
        config: { ...config, size: config.size + 1 },
        layers: [],
      });
      expect(await errorCodes(r.res)).toEqual(['MANIFEST_INVALID']);
    });

    it('refuses an index whose child is not a manifest of the repository', async () => {
      const child = await pushImage('refuse/index-other', 'v1');
      const r = await putManifest(
        'refuse/index',
        'v1',
        { schemaVersion: 2, mediaType: MEDIA_TYPE.OCI_INDEX, manifests: [child.descriptor] },
        MEDIA_TYPE.OCI_INDEX,
      );
      expect(r.res.status).toBe(404);
      const body = (await r.res.json()) as { errors: { code: string; detail: { digest: string } }[] };
      expect(body.errors[0]).toMatchObject({ code: 'MANIFEST_UNKNOWN', detail: { digest: child.digest } });
    });

    it('refuses an invalid tag on push, and answers unknown references with 404', async () => {
      const bad = await putManifest('refuse/ref', '-bad', { schemaVersion: 2 });
      expect(bad.res.status).toBe(400);
      expect(await errorCodes(bad.res)).toEqual(['TAG_INVALID']);
      await pushImage('refuse/ref', 'v1');
      for (const reference of ['nope', '-bad', sha256('nothing')]) {
        const res = await fetch(url(`/v2/refuse/ref/manifests/${reference}`));
        expect(res.status).toBe(404);
        expect(await errorCodes(res)).toEqual(['MANIFEST_UNKNOWN']);
      }
      const unknownRepo = await fetch(url('/v2/refuse/no-such-repo/manifests/latest'));
      expect(unknownRepo.status).toBe(404);
      const malformed = await fetch(url('/v2/refuse/ref/manifests/sha256:abc'));
      expect(malformed.status).toBe(400);
      expect(await errorCodes(malformed)).toEqual(['DIGEST_INVALID']);
      const badName = await fetch(url('/v2/Refuse/manifests/v1'));
      expect(await errorCodes(badName)).toEqual(['NAME_INVALID']);
    });
  });

  describe('tags', () => {
    it('records tag moves in tag_lifetimes and tag.moved events', async () => {
      const a = await pushImage('tags/moves', 'latest');
      const b = await pushImage('tags/moves', 'latest');
      const c = await pushImage('tags/moves', 'latest');
      const lifetimes = await t.database.db
        .selectFrom('tag_lifetimes')
        .select(['digest', 'started_at', 'started_seq', 'ended_at', 'ended_seq'])
        .where('tag', '=', 'latest')
        .where(
          'repository_id',
          '=',
          (
            await t.database.db
              .selectFrom('repositories')
              .select('id')
              .where('name', '=', 'tags/moves')
              .executeTakeFirstOrThrow()
          ).id,
        )
        .orderBy('id')
        .execute();
      expect(lifetimes.map((l) => l.digest)).toEqual([a.digest, b.digest, c.digest]);
      expect(lifetimes[0]!.ended_seq).toBe(lifetimes[1]!.started_seq);
      expect(lifetimes[0]!.ended_at).toEqual(lifetimes[1]!.started_at);
      expect(lifetimes[1]!.ended_seq).toBe(lifetimes[2]!.started_seq);
      expect(lifetimes[2]!.ended_at).toBeNull();
      const moves = (await events('tags/moves')).filter((e) => e.type === 'tag.moved').map((e) => e.payload);
      expect(moves).toEqual([
        { tag: 'latest', digest: a.digest, previous: null },
        { tag: 'latest', digest: b.digest, previous: a.digest },
        { tag: 'latest', digest: c.digest, previous: b.digest },
      ]);
      const get = await fetch(url('/v2/tags/moves/manifests/latest'));
      expect(get.headers.get('docker-content-digest')).toBe(c.digest);
    });

    it('serializes concurrent pushes of different manifests to one tag: all succeed, one open lifetime', async () => {
      const repo = 'tags/race';
      const config = { ...(await blob(repo)), mediaType: MEDIA_TYPE.OCI_CONFIG };
      const bodies = Array.from({ length: 12 }, (_, i) => ({
        schemaVersion: 2,
        mediaType: MEDIA_TYPE.OCI_MANIFEST,
        config,
        layers: [],
        annotations: { n: String(i) },
      }));
      const results = await Promise.all(bodies.map((json) => putManifest(repo, 'hot', json)));
      expect(results.map((r) => r.res.status)).toEqual(results.map(() => 201));
      const rows = await t.database.db
        .selectFrom('tag_lifetimes as tl')
        .innerJoin('repositories as r', 'r.id', 'tl.repository_id')
        .select(['tl.digest', 'tl.started_seq', 'tl.ended_seq', 'tl.started_at', 'tl.ended_at'])
        .where('r.name', '=', repo)
        .orderBy('tl.started_seq')
        .execute();
      expect(rows).toHaveLength(12);
      const open = rows.filter((r) => r.ended_at === null);
      expect(open).toHaveLength(1);
      expect(open[0]).toBe(rows[rows.length - 1]);
      for (let i = 1; i < rows.length; i++) {
        expect(rows[i - 1]!.ended_seq).toBe(rows[i]!.started_seq);
        expect(rows[i - 1]!.ended_at!.getTime()).toBeLessThanOrEqual(rows[i]!.started_at.getTime());
      }
      const tag = await fetch(url(`/v2/${repo}/manifests/hot`), { method: 'HEAD' });
      expect(tag.headers.get('docker-content-digest')).toBe(open[0]!.digest);
      const moves = (await events(repo)).filter((e) => e.type === 'tag.moved');
      expect(moves).toHaveLength(12);
      expect((moves[0]!.payload as { previous: string | null }).previous).toBeNull();
    });

    it('keeps tags and lifetimes consistent under racing pushes, tag deletes and manifest deletes', async () => {
      const repo = 'tags/churn';
      const config = { ...(await blob(repo)), mediaType: MEDIA_TYPE.OCI_CONFIG };
      const bodies = [0, 1, 2].map((i) => ({
        schemaVersion: 2,
        mediaType: MEDIA_TYPE.OCI_MANIFEST,
        config,
        layers: [],
        annotations: { n: String(i) },
      }));
      const digests = bodies.map((b) => sha256(Buffer.from(JSON.stringify(b))));
      const ops: Promise<number>[] = [];
      for (let round = 0; round < 8; round++) {
        for (const [i, json] of bodies.entries()) {
          ops.push(putManifest(repo, i === 2 ? 'b' : 'a', json).then((r) => r.res.status));
          ops.push(putManifest(repo, 'b', json).then((r) => r.res.status));
        }
        ops.push(fetch(url(`/v2/${repo}/manifests/a`), { method: 'DELETE' }).then((r) => r.status));
        ops.push(
          fetch(url(`/v2/${repo}/manifests/${digests[round % 3]!}`), { method: 'DELETE' }).then(
            (r) => r.status,
          ),
        );
      }
      const statuses = await Promise.all(ops);
      expect(statuses.every((s) => s === 201 || s === 202 || s === 404)).toBe(true);
      const check = await sql<{
        tag: string;
        tag_digest: string | null;
        open_digest: string | null;
        open: number;
      }>`
        SELECT coalesce(t.name, l.tag) AS tag, t.digest AS tag_digest, l.digest AS open_digest, l.open
        FROM (SELECT tag, min(digest) AS digest, count(*)::int AS open FROM tag_lifetimes
              WHERE ended_at IS NULL AND repository_id = (SELECT id FROM repositories WHERE name = ${repo})
              GROUP BY tag) l
        FULL JOIN (SELECT name, digest FROM tags
                   WHERE repository_id = (SELECT id FROM repositories WHERE name = ${repo})) t ON t.name = l.tag
      `.execute(t.database.db);
      for (const row of check.rows) {
        expect(row.open).toBe(1);
        expect(row.open_digest).toBe(row.tag_digest);
      }
    });

    it('lists tags in lexical order with Link pagination', async () => {
      const repo = 'tags/list';
      const first = await pushImage(repo, 'B');
      const json = JSON.parse(first.body.toString()) as unknown;
      const names = ['a', 'B', 'c-1', 'c.0', 'c_2', 'z'];
      for (const name of names.filter((n) => n !== 'B'))
        expect((await putManifest(repo, name, json)).res.status).toBe(201);
      const sorted = [...names].sort((x, y) => (Buffer.from(x) < Buffer.from(y) ? -1 : 1));
      const all = await fetch(url(`/v2/${repo}/tags/list`));
      expect(all.status).toBe(200);
      expect(all.headers.get('link')).toBeNull();
      expect(await all.json()).toEqual({ name: repo, tags: sorted });

      const seen: string[] = [];
      let next: string | null = `/v2/${repo}/tags/list?n=4`;
      let pages = 0;
      while (next !== null) {
        const res: Response = await fetch(url(next));
        const body = (await res.json()) as { name: string; tags: string[] };
        seen.push(...body.tags);
        pages++;
        const link = res.headers.get('link');
        next = link === null ? null : /^<([^>]+)>; rel="next"$/.exec(link)![1]!;
        if (pages === 1) expect(link).toBe(`</v2/${repo}/tags/list?n=4&last=c.0>; rel="next"`);
      }
      expect(pages).toBe(2);
      expect(seen).toEqual(sorted);

      const exact = await fetch(url(`/v2/${repo}/tags/list?n=6`));
      expect(exact.headers.get('link')).toBeNull();
      const after = await fetch(url(`/v2/${repo}/tags/list?last=c_2`));
      expect(((await after.json()) as { tags: string[] }).tags).toEqual(['z']);
      // No tag holds a NUL: a marker with one pages as if cut there (PostgreSQL text could not carry it).
      const nul = await fetch(url(`/v2/${repo}/tags/list?last=c_2%00x`));
      expect(((await nul.json()) as { tags: string[] }).tags).toEqual(['z']);
      const nulOnly = await fetch(url(`/v2/${repo}/tags/list?last=%00`));
      expect(((await nulOnly.json()) as { tags: string[] }).tags).toEqual(sorted);
      const zero = await fetch(url(`/v2/${repo}/tags/list?n=0`));
      expect(await zero.json()).toEqual({ name: repo, tags: [] });
      expect(zero.headers.get('link')).toBeNull();
      for (const n of ['-1', 'x', '1.5']) {
        const bad = await fetch(url(`/v2/${repo}/tags/list?n=${n}`));
        expect(bad.status).toBe(400);
        expect(await errorCodes(bad)).toEqual(['PAGINATION_NUMBER_INVALID']);
      }
    });

    it('answers NAME_UNKNOWN for an unknown repository and [] for one without tags', async () => {
      const unknown = await fetch(url('/v2/tags/unknown/tags/list'));
      expect(unknown.status).toBe(404);
      expect(await errorCodes(unknown)).toEqual(['NAME_UNKNOWN']);
      await blob('tags/blobs-only');
      const empty = await fetch(url('/v2/tags/blobs-only/tags/list'));
      expect(empty.status).toBe(200);
      expect(await empty.json()).toEqual({ name: 'tags/blobs-only', tags: [] });
    });
  });

  describe('deletes', () => {
    it('deletes a tag only: 202, the manifest stays, the lifetime closes', async () => {
      const repo = 'delete/tag';
      const pushed = await pushImage(repo, 'v1');
      expect((await putManifest(repo, 'v2', JSON.parse(pushed.body.toString()))).res.status).toBe(201);
      const del = await fetch(url(`/v2/${repo}/manifests/v1`), { method: 'DELETE' });
      expect(del.status).toBe(202);
      expect((await fetch(url(`/v2/${repo}/manifests/v1`))).status).toBe(404);
      expect((await fetch(url(`/v2/${repo}/manifests/v2`))).status).toBe(200);
      expect((await fetch(url(`/v2/${repo}/manifests/${pushed.digest}`))).status).toBe(200);
      const again = await fetch(url(`/v2/${repo}/manifests/v1`), { method: 'DELETE' });
      expect(again.status).toBe(404);
      expect(await errorCodes(again)).toEqual(['MANIFEST_UNKNOWN']);
      const history = await sql<{ tag: string; end_reason: string | null }>`
        SELECT tag, end_reason FROM tag_history WHERE repository = ${repo} ORDER BY tag`.execute(
        t.database.db,
      );
      expect(history.rows).toEqual([
        { tag: 'v1', end_reason: 'deleted' },
        { tag: 'v2', end_reason: null },
      ]);
      expect((await events(repo)).map((e) => e.type)).toEqual([
        'manifest.pushed',
        'tag.moved',
        'tag.moved',
        'tag.deleted',
      ]);
    });

    it('deletes a manifest by digest with every tag on it, even one an index lists', async () => {
      const repo = 'delete/digest';
      const child = await pushImage(repo, 'child');
      expect((await putManifest(repo, 'alias', JSON.parse(child.body.toString()))).res.status).toBe(201);
      const index = await putManifest(
        repo,
        'index',
        { schemaVersion: 2, mediaType: MEDIA_TYPE.OCI_INDEX, manifests: [child.descriptor] },
        MEDIA_TYPE.OCI_INDEX,
      );
      expect(index.res.status).toBe(201);
      const del = await fetch(url(`/v2/${repo}/manifests/${child.digest}`), { method: 'DELETE' });
      expect(del.status).toBe(202);
      for (const reference of ['child', 'alias', child.digest]) {
        expect((await fetch(url(`/v2/${repo}/manifests/${reference}`))).status).toBe(404);
      }
      expect((await fetch(url(`/v2/${repo}/manifests/index`))).status).toBe(200);
      const tags = await fetch(url(`/v2/${repo}/tags/list`));
      expect(((await tags.json()) as { tags: string[] }).tags).toEqual(['index']);
      const refs = await t.database.db
        .selectFrom('manifest_references')
        .select('child_digest')
        .where('parent_digest', '=', child.digest)
        .execute();
      expect(refs).toEqual([]);
      const log = await events(repo);
      expect(log.slice(-3).map((e) => [e.type, e.payload])).toEqual([
        ['tag.deleted', { tag: 'alias', digest: child.digest }],
        ['tag.deleted', { tag: 'child', digest: child.digest }],
        ['manifest.deleted', { digest: child.digest, tags: ['alias', 'child'] }],
      ]);
      const open = await t.database.db
        .selectFrom('tag_lifetimes')
        .select('tag')
        .where('digest', '=', child.digest)
        .where('ended_at', 'is', null)
        .execute();
      expect(open).toEqual([]);
      const again = await fetch(url(`/v2/${repo}/manifests/${child.digest}`), { method: 'DELETE' });
      expect(again.status).toBe(404);
      expect(await errorCodes(again)).toEqual(['MANIFEST_UNKNOWN']);
      // Pushing it again after the delete works and tags it anew.
      expect((await putManifest(repo, 'child', JSON.parse(child.body.toString()))).res.status).toBe(201);
    });

    it('refuses to delete a blob that a manifest of the repository uses, naming it, and the image still pulls', async () => {
      const repo = 'delete/used-blob';
      const pushed = await pushImage(repo, 'v1', {}, 2);
      const image = JSON.parse(pushed.body.toString()) as { config: Descriptor; layers: Descriptor[] };
      const used = [image.config, ...image.layers];
      for (const blob of used) {
        const del = await fetch(url(`/v2/${repo}/blobs/${blob.digest}`), { method: 'DELETE' });
        expect(del.status).toBe(409);
        const body = (await del.json()) as { errors: { code: string; detail: unknown }[] };
        expect(body.errors).toEqual([
          expect.objectContaining({
            code: 'DENIED',
            detail: { digest: blob.digest, manifest: pushed.digest },
          }),
        ]);
      }
      // Every piece of the image is still served.
      expect((await fetch(url(`/v2/${repo}/manifests/v1`))).status).toBe(200);
      for (const blob of used) {
        const get = await fetch(url(`/v2/${repo}/blobs/${blob.digest}`));
        expect(get.status).toBe(200);
        expect(sha256(Buffer.from(await get.arrayBuffer()))).toBe(blob.digest);
      }
      // A blob no manifest uses is still removed; so are the image's once its manifest is gone.
      const loose = await blob(repo);
      expect((await fetch(url(`/v2/${repo}/blobs/${loose.digest}`), { method: 'DELETE' })).status).toBe(202);
      expect((await fetch(url(`/v2/${repo}/manifests/${pushed.digest}`), { method: 'DELETE' })).status).toBe(
        202,
      );
      for (const blob of used) {
        expect((await fetch(url(`/v2/${repo}/blobs/${blob.digest}`), { method: 'DELETE' })).status).toBe(202);
      }
      const refused = await t.database.db
        .selectFrom('events')
        .select('payload')
        .where('repository', '=', repo)
        .where('type', '=', 'blob.unlink_refused')
        .orderBy('seq')
        .execute();
      expect(refused.map((e) => e.payload)).toEqual(
        used.map((b) => ({ digest: b.digest, manifest: pushed.digest })),
      );
    });

    it('never leaves a pushed manifest without its blobs when a blob DELETE races the push', async () => {
      const repo = 'delete/race';
      for (let round = 0; round < 20; round++) {
        const layer = await blob(repo);
        const config = { ...(await blob(repo, 32)), mediaType: MEDIA_TYPE.OCI_CONFIG };
        const [put, del] = await Promise.all([
          putManifest(repo, `r${round}`, {
            schemaVersion: 2,
            mediaType: MEDIA_TYPE.OCI_MANIFEST,
            config,
            layers: [layer],
          }),
          fetch(url(`/v2/${repo}/blobs/${layer.digest}`), { method: 'DELETE' }),
        ]);
        // Either the push won (the delete is refused) or the delete did (the push names an unknown blob).
        if (put.res.status === 201) {
          expect(del.status).toBe(409);
          expect((await fetch(url(`/v2/${repo}/blobs/${layer.digest}`), { method: 'HEAD' })).status).toBe(
            200,
          );
        } else {
          expect(put.res.status).toBe(400);
          expect(await errorCodes(put.res)).toEqual(['MANIFEST_BLOB_UNKNOWN']);
          expect(del.status).toBe(202);
        }
      }
    });

    it('answers 404 for deletes in unknown repositories and 400 for malformed digests', async () => {
      const unknown = await fetch(url(`/v2/delete/none/manifests/${sha256('x')}`), { method: 'DELETE' });
      expect(unknown.status).toBe(404);
      const malformed = await fetch(url('/v2/delete/none/manifests/sha256:zz'), { method: 'DELETE' });
      expect(await errorCodes(malformed)).toEqual(['DIGEST_INVALID']);
    });
  });

  describe('referrers', () => {
    it('lists manifests whose subject is the digest, filtered by artifactType on request', async () => {
      const repo = 'refs/app';
      const subject = await pushImage(repo, 'v1');
      const emptyConfig = await blob(repo, 2);
      const sbom = await pushImage(repo, 'sbom', {
        artifactType: 'application/spdx+json',
        subject: subject.descriptor,
        annotations: { 'org.opencontainers.image.created': '2024-01-01T00:00:00Z' },
      });
      expect(sbom.res.headers.get('oci-subject')).toBe(subject.digest);
      const sig = await putManifest(repo, 'sig', {
        schemaVersion: 2,
        mediaType: MEDIA_TYPE.OCI_MANIFEST,
        config: { ...emptyConfig, mediaType: 'application/vnd.example.signature' },
        layers: [],
        subject: subject.descriptor,
      });
      expect(sig.res.status).toBe(201);
      // A referrer may arrive before its subject (OCI 1.1): the subject need not exist.
      const early = await pushImage(repo, 'early', {
        subject: { ...subject.descriptor, digest: sha256('later') },
      });
      expect(early.res.headers.get('oci-subject')).toBe(sha256('later'));

      const all = await fetch(url(`/v2/${repo}/referrers/${subject.digest}`));
      expect(all.status).toBe(200);
      expect(all.headers.get('content-type')).toBe(MEDIA_TYPE.OCI_INDEX);
      expect(all.headers.get('oci-filters-applied')).toBeNull();
      const index = (await all.json()) as {
        schemaVersion: number;
        mediaType: string;
        manifests: Descriptor[];
      };
      expect(index.schemaVersion).toBe(2);
      expect(index.mediaType).toBe(MEDIA_TYPE.OCI_INDEX);
      expect(index.manifests.sort((x, y) => x.digest.localeCompare(y.digest))).toEqual(
        [
          {
            mediaType: MEDIA_TYPE.OCI_MANIFEST,
            digest: sbom.digest,
            size: sbom.body.length,
            artifactType: 'application/spdx+json',
            annotations: { 'org.opencontainers.image.created': '2024-01-01T00:00:00Z' },
          },
          {
            mediaType: MEDIA_TYPE.OCI_MANIFEST,
            digest: sig.digest,
            size: sig.body.length,
            artifactType: 'application/vnd.example.signature',
          },
        ].sort((x, y) => x.digest.localeCompare(y.digest)),
      );

      const filtered = await fetch(
        url(`/v2/${repo}/referrers/${subject.digest}?artifactType=application/spdx%2Bjson`),
      );
      expect(filtered.headers.get('oci-filters-applied')).toBe('artifactType');
      const f = (await filtered.json()) as { manifests: Descriptor[] };
      expect(f.manifests.map((m) => m.digest)).toEqual([sbom.digest]);
      // No artifact type holds a NUL: such a filter matches nothing, alone or beside another.
      const nul = await fetch(url(`/v2/${repo}/referrers/${subject.digest}?artifactType=a%00b`));
      expect(nul.status).toBe(200);
      expect(((await nul.json()) as { manifests: Descriptor[] }).manifests).toEqual([]);
      const mixed = await fetch(
        url(
          `/v2/${repo}/referrers/${subject.digest}?artifactType=a%00b&artifactType=application/spdx%2Bjson`,
        ),
      );
      expect(((await mixed.json()) as { manifests: Descriptor[] }).manifests.map((m) => m.digest)).toEqual([
        sbom.digest,
      ]);

      const later = await fetch(url(`/v2/${repo}/referrers/${sha256('later')}`));
      expect(((await later.json()) as { manifests: Descriptor[] }).manifests.map((m) => m.digest)).toEqual([
        early.digest,
      ]);
    });

    it('answers an unknown digest with an empty index and a malformed one with DIGEST_INVALID', async () => {
      const none = await fetch(url(`/v2/refs/none/referrers/${sha256('nothing')}`));
      expect(none.status).toBe(200);
      expect(await none.json()).toEqual({ schemaVersion: 2, mediaType: MEDIA_TYPE.OCI_INDEX, manifests: [] });
      const bad = await fetch(url('/v2/refs/none/referrers/sha256:nothex'));
      expect(bad.status).toBe(400);
      expect(await errorCodes(bad)).toEqual(['DIGEST_INVALID']);
    });
  });
});

describe('catalog', () => {
  let t: TestApp;
  beforeAll(async () => {
    t = await startTestApp();
  });
  afterAll(async () => {
    expect(t.serverErrors()).toEqual([]);
    await t.close();
  });

  it('lists repositories holding a manifest or a blob, bytewise, with Link pagination', async () => {
    const repos = ['b/x', 'a', 'a-b', 'a/b', 'a.b', 'c'];
    for (const repo of repos) expect((await pushBlob(t.url, repo, randomBlob(8).data)).status).toBe(201);
    // A repository with only an abandoned upload holds nothing.
    expect((await fetch(`${t.url}/v2/empty/blobs/uploads/`, { method: 'POST' })).status).toBe(202);
    const sorted = [...repos].sort((x, y) => (Buffer.from(x) < Buffer.from(y) ? -1 : 1));
    expect(sorted).toEqual(['a', 'a-b', 'a.b', 'a/b', 'b/x', 'c']);

    const all = await fetch(`${t.url}/v2/_catalog`);
    expect(all.status).toBe(200);
    expect(await all.json()).toEqual({ repositories: sorted });

    const seen: string[] = [];
    let next: string | null = '/v2/_catalog?n=4';
    const links: string[] = [];
    while (next !== null) {
      const res: Response = await fetch(`${t.url}${next}`);
      seen.push(...((await res.json()) as { repositories: string[] }).repositories);
      const link = res.headers.get('link');
      if (link !== null) links.push(link);
      next = link === null ? null : /^<([^>]+)>; rel="next"$/.exec(link)![1]!;
    }
    expect(seen).toEqual(sorted);
    expect(links).toEqual([`</v2/_catalog?n=4&last=${encodeURIComponent('a/b')}>; rel="next"`]);

    const afterNul = await fetch(`${t.url}/v2/_catalog?last=${encodeURIComponent('a/b\0z')}`);
    expect(((await afterNul.json()) as { repositories: string[] }).repositories).toEqual(
      sorted.filter((r) => r > 'a/b'),
    );
    const zero = await fetch(`${t.url}/v2/_catalog?n=0`);
    expect(await zero.json()).toEqual({ repositories: [] });
    const bad = await fetch(`${t.url}/v2/_catalog?n=abc`);
    expect(bad.status).toBe(400);
    expect(await errorCodes(bad)).toEqual(['PAGINATION_NUMBER_INVALID']);
  });
});
