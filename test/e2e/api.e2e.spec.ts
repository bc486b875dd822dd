import { systemMeta } from '@strata/events';
import { errorCodes, imageManifest, pushBlob, randomBlob, sha256 } from '../support/http';
import { startTestApp, type TestApp } from '../support/test-app';
import type {
  AuditPage,
  Image,
  LayerDiff,
  Page,
  RepositorySummary,
  Session,
  TagSummary,
  Timeline,
} from '../../apps/ui/src/api-types';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';

/** Pushes an image of `layers` random layers (config first) as `repo:tag`; returns its digest and layer digests. */
async function pushImage(
  base: string,
  repo: string,
  tag: string,
  layers: { digest: string; data: Buffer }[],
  headers: Record<string, string> = {},
): Promise<{ digest: string; layers: string[] }> {
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      created: '2026-01-02T03:04:05Z',
      config: {
        Entrypoint: ['/app'],
        Env: ['A=1'],
        Labels: { team: 'core' },
        ExposedPorts: { '80/tcp': {} },
      },
      tag,
    }),
  );
  for (const b of [config, ...layers.map((l) => l.data)]) {
    const res = await fetch(`${base}/v2/${repo}/blobs/uploads/?digest=${sha256(b)}`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/octet-stream' },
      body: b,
    });
    expect(res.status).toBe(201);
  }
  const body = imageManifest(
    config,
    layers.map((l) => ({ digest: l.digest, size: l.data.length })),
  );
  const put = await fetch(`${base}/v2/${repo}/manifests/${tag}`, {
    method: 'PUT',
    headers: { ...headers, 'content-type': OCI_MANIFEST },
    body,
  });
  expect(put.status).toBe(201);
  return { digest: sha256(body), layers: layers.map((l) => l.digest) };
}

async function json<T>(res: Response): Promise<T> {
  if (res.status !== 200) throw new Error(`${res.url}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

const q = (params: Record<string, string>): string => new URLSearchParams(params).toString();

describe('the web UI API (/api/v1), authentication off', () => {
  let t: TestApp;
  let get: <T>(path: string) => Promise<T>;
  const base = randomBlob(3000);
  const old = randomBlob(2000);
  const fresh = randomBlob(2500);
  let first: { digest: string; layers: string[] };
  let second: { digest: string; layers: string[] };

  beforeAll(async () => {
    t = await startTestApp();
    get = async <T>(path: string) => json<T>(await fetch(`${t.url}${path}`));
    first = await pushImage(t.url, 'team/app', 'prod', [base, old]);
    second = await pushImage(t.url, 'team/app', 'prod', [base, fresh]);
    await pushImage(t.url, 'team/app', 'v1', [base, old]);
    for (const name of ['listing/a', 'listing/b', 'listing/c']) await pushImage(t.url, name, 'x', [base]);
  });
  afterAll(async () => {
    expect(t.serverErrors()).toEqual([]);
    await t.close();
  });

  it('says authentication is off and gives the host to pull from', async () => {
    const s = await get<Session>('/api/v1/session');
    expect(s).toEqual({
      auth: false,
      user: null,
      anonymous: true,
      admin: true,
      registry: new URL(t.url).host,
    });
  });

  it('lists repositories with tag counts, size and last push, searched and paged', async () => {
    const all = await get<Page<RepositorySummary>>(`/api/v1/repositories?${q({ q: 'team/' })}`);
    expect(all.items.map((r) => r.name)).toEqual(['team/app']);
    const app = all.items[0]!;
    expect(app.tags).toBe(2);
    // Three configs (each names its tag), three layers, three manifests.
    expect(app.size).toBeGreaterThan(base.data.length + old.data.length + fresh.data.length);
    expect(Date.parse(app.lastPush!)).toBeGreaterThan(Date.now() - 60_000);

    const p1 = await get<Page<RepositorySummary>>(`/api/v1/repositories?${q({ q: 'listing/', limit: '2' })}`);
    expect(p1.items.map((r) => r.name)).toEqual(['listing/a', 'listing/b']);
    expect(p1.next).toBe('listing/b');
    const p2 = await get<Page<RepositorySummary>>(
      `/api/v1/repositories?${q({ q: 'listing/', limit: '2', after: p1.next! })}`,
    );
    expect(p2).toEqual({ items: [expect.objectContaining({ name: 'listing/c', tags: 1 })], next: null });
  });

  it("lists a repository's tags with digest, size and who pushed them", async () => {
    const tags = await get<Page<TagSummary>>(`/api/v1/tags?${q({ repository: 'team/app' })}`);
    expect(tags.next).toBeNull();
    expect(tags.items.map((x) => [x.name, x.digest])).toEqual([
      ['prod', second.digest],
      ['v1', expect.stringMatching(/^sha256:/)],
    ]);
    const prod = tags.items[0]!;
    expect(prod).toMatchObject({ mediaType: OCI_MANIFEST, platforms: null, pushedBy: 'anonymous' });
    expect(prod.size).toBeGreaterThan(base.data.length + fresh.data.length);
  });

  it('shows an image: layers, config, tags, referrers, by tag and by digest', async () => {
    // A signature-like artifact referring to the first image.
    const sig = Buffer.from('signature');
    expect((await pushBlob(t.url, 'team/app', sig)).status).toBe(201);
    const empty = Buffer.from('{}');
    expect((await pushBlob(t.url, 'team/app', empty)).status).toBe(201);
    const artifact = JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: 'application/vnd.example.signature',
      config: { mediaType: 'application/vnd.oci.empty.v1+json', digest: sha256(empty), size: 2 },
      layers: [{ mediaType: 'application/octet-stream', digest: sha256(sig), size: sig.length }],
      subject: { mediaType: OCI_MANIFEST, digest: second.digest, size: 1 },
      annotations: { 'org.example.signer': 'ci' },
    });
    const put = await fetch(`${t.url}/v2/team/app/manifests/${sha256(artifact)}`, {
      method: 'PUT',
      headers: { 'content-type': OCI_MANIFEST },
      body: artifact,
    });
    expect(put.status).toBe(201);

    const image = await get<Image>(`/api/v1/image?${q({ repository: 'team/app', reference: 'prod' })}`);
    expect(image).toMatchObject({
      repository: 'team/app',
      digest: second.digest,
      mediaType: OCI_MANIFEST,
      tags: ['prod'],
      pushedBy: 'anonymous',
      layers: [
        { digest: base.digest, size: base.data.length },
        { digest: fresh.digest, size: fresh.data.length },
      ],
      referrers: [
        {
          digest: sha256(artifact),
          artifactType: 'application/vnd.example.signature',
          annotations: { 'org.example.signer': 'ci' },
        },
      ],
    });
    expect(image.config?.summary).toMatchObject({
      os: 'linux',
      architecture: 'amd64',
      created: '2026-01-02T03:04:05Z',
      entrypoint: ['/app'],
      env: ['A=1'],
      labels: { team: 'core' },
      exposedPorts: ['80/tcp'],
    });
    const byDigest = await get<Image>(
      `/api/v1/image?${q({ repository: 'team/app', reference: second.digest })}`,
    );
    expect(byDigest.digest).toBe(second.digest);
    const sigView = await get<Image>(
      `/api/v1/image?${q({ repository: 'team/app', reference: sha256(artifact) })}`,
    );
    expect(sigView).toMatchObject({
      subject: second.digest,
      artifactType: 'application/vnd.example.signature',
    });
    expect(sigView.config?.summary).toEqual(
      expect.objectContaining({ env: [], entrypoint: null, labels: {} }),
    );
  });

  it('shows an index with the platforms of its children', async () => {
    const child = await pushImage(t.url, 'team/multi', 'amd64', [base]);
    const index = JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [
        {
          mediaType: OCI_MANIFEST,
          digest: child.digest,
          size: 1,
          platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
        },
      ],
    });
    // The descriptor's size must be the child's; read it back.
    const childBody = await (await fetch(`${t.url}/v2/team/multi/manifests/amd64`)).text();
    const fixed = index.replace('"size":1', `"size":${Buffer.byteLength(childBody)}`);
    const put = await fetch(`${t.url}/v2/team/multi/manifests/latest`, {
      method: 'PUT',
      headers: { 'content-type': OCI_INDEX },
      body: fixed,
    });
    expect(put.status).toBe(201);
    const tags = await get<Page<TagSummary>>(`/api/v1/tags?${q({ repository: 'team/multi', q: 'lat' })}`);
    expect(tags.items).toEqual([
      expect.objectContaining({
        name: 'latest',
        mediaType: OCI_INDEX,
        platforms: [{ os: 'linux', architecture: 'arm64', variant: 'v8' }],
      }),
    ]);
    expect(tags.items[0]!.size).toBeGreaterThan(base.data.length);
    const image = await get<Image>(`/api/v1/image?${q({ repository: 'team/multi', reference: 'latest' })}`);
    expect(image.manifests).toEqual([
      expect.objectContaining({
        digest: child.digest,
        platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
      }),
    ]);
    expect(image.layers).toEqual([]);
    expect(image.config).toBeNull();
  });

  it("shows a tag's timeline and the layers two points differ by", async () => {
    const timeline = await get<Timeline>(`/api/v1/timeline?${q({ repository: 'team/app', tag: 'prod' })}`);
    expect(timeline.items).toEqual([
      expect.objectContaining({
        digest: second.digest,
        endedAt: null,
        endReason: null,
        startedBy: 'anonymous',
      }),
      expect.objectContaining({ digest: first.digest, endReason: 'moved', endedBy: 'anonymous' }),
    ]);
    expect(timeline.items[0]!.startedSeq).toBeGreaterThan(timeline.items[1]!.startedSeq);
    const diff = await get<LayerDiff>(
      `/api/v1/diff?${q({ repository: 'team/app', from: first.digest, to: second.digest })}`,
    );
    expect(diff.added.map((l) => l.digest)).toEqual([fresh.digest]);
    expect(diff.removed.map((l) => l.digest)).toEqual([old.digest]);
    expect(diff.kept.map((l) => l.digest)).toEqual([base.digest]);
  });

  it('pages the audit log newest first, filtered by repository, action (or prefix) and time', async () => {
    const tagEvents = await get<AuditPage>(`/api/v1/audit?${q({ repository: 'team/app', action: 'tag.' })}`);
    expect(tagEvents.items.map((e) => [e.action, e.tag])).toEqual([
      ['tag.moved', 'v1'],
      ['tag.moved', 'prod'],
      ['tag.moved', 'prod'],
    ]);
    expect(tagEvents.items[1]).toMatchObject({ digest: second.digest, previousDigest: first.digest });
    const one = await get<AuditPage>(
      `/api/v1/audit?${q({ repository: 'team/app', action: 'tag.', limit: '1' })}`,
    );
    expect(one.items).toHaveLength(1);
    const older = await get<AuditPage>(
      `/api/v1/audit?${q({ repository: 'team/app', action: 'tag.', limit: '5', before: one.next! })}`,
    );
    expect(older.items.map((e) => e.seq)).toEqual(tagEvents.items.slice(1).map((e) => e.seq));
    const future = await get<AuditPage>(
      `/api/v1/audit?${q({ since: new Date(Date.now() + 60_000).toISOString() })}`,
    );
    expect(future).toEqual({ items: [], next: null });
    const byActor = await get<AuditPage>(`/api/v1/audit?${q({ actor: 'nobody', limit: '100' })}`);
    expect(byActor.items).toEqual([]);
  });

  it('answers bad input with the OCI envelope and the right status', async () => {
    const cases: [string, number, string][] = [
      ['/api/v1/tags?repository=Bad//Name', 400, 'NAME_INVALID'],
      ['/api/v1/tags', 400, 'BAD_REQUEST'],
      ['/api/v1/tags?repository=no/such', 404, 'NAME_UNKNOWN'],
      ['/api/v1/image?repository=team/app&reference=nope', 404, 'MANIFEST_UNKNOWN'],
      ['/api/v1/image?repository=team/app&reference=sha256:zz', 400, 'DIGEST_INVALID'],
      ['/api/v1/timeline?repository=team/app&tag=never', 404, 'MANIFEST_UNKNOWN'],
      [`/api/v1/diff?repository=team/app&from=${sha256('x')}&to=${sha256('y')}`, 404, 'MANIFEST_UNKNOWN'],
      ['/api/v1/repositories?limit=0', 400, 'PAGINATION_NUMBER_INVALID'],
      ['/api/v1/repositories?limit=-1', 400, 'PAGINATION_NUMBER_INVALID'],
      [`/api/v1/repositories?q=${'a'.repeat(300)}`, 400, 'BAD_REQUEST'],
      ['/api/v1/repositories?q=%00', 400, 'BAD_REQUEST'],
      ['/api/v1/audit?since=yesterday', 400, 'BAD_REQUEST'],
      ['/api/v1/audit?since=2024-02-30T00:00:00Z', 400, 'BAD_REQUEST'],
      ['/api/v1/audit?since=2024-02-01T00:00:00', 400, 'BAD_REQUEST'],
      ['/api/v1/audit?since=2024-02-01', 400, 'BAD_REQUEST'],
      ['/api/v1/audit?before=0', 400, 'BAD_REQUEST'],
      ['/api/v1/audit?action=DROP%20TABLE', 400, 'BAD_REQUEST'],
      ['/api/v1/nothing', 404, 'UNSUPPORTED'],
    ];
    for (const [path, status, code] of cases) {
      const res = await fetch(`${t.url}${path}`);
      expect([path, res.status, await errorCodes(res)]).toEqual([path, status, [code]]);
    }
    const post = await fetch(`${t.url}/api/v1/repositories`, { method: 'POST' });
    expect(post.status).toBeGreaterThanOrEqual(400);
    expect(post.status).toBeLessThan(500);
    expect((await errorCodes(post)).length).toBe(1);
  });
});

describe('the web UI API with STRATA_AUTH=token', () => {
  let t: TestApp;
  const basic = (user: string, password: string): string =>
    `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
  const admin = { authorization: basic('admin', 'admin-secret') };

  beforeAll(async () => {
    t = await startTestApp({
      env: {
        STRATA_AUTH: 'token',
        STRATA_ADMIN_PASSWORD: 'admin-secret',
        STRATA_ANONYMOUS_PULL: 'public/**',
      },
    });
    const meta = systemMeta('test');
    const accounts = t.runtime.identity!.accounts;
    await accounts.addAccount('carol', 'user', 'carol-pw', meta);
    await accounts.setGrant({ kind: 'user', name: 'carol' }, 'team/**', ['pull'], meta);
    await t.runtime.identity!.directory.reload();
    const layer = randomBlob(100);
    for (const repo of ['team/web', 'secret/vault', 'public/base'])
      await pushImage(t.url, repo, 'v1', [layer], admin);
  });
  afterAll(async () => {
    expect(t.serverErrors()).toEqual([]);
    await t.close();
  });

  /** What the UI does: a token for registry:catalog:* with the OAuth2 password grant, then Bearer. */
  async function uiToken(username: string, password: string): Promise<Record<string, string>> {
    const res = await fetch(`${t.url}/auth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: q({
        grant_type: 'password',
        username,
        password,
        scope: 'registry:catalog:*',
        client_id: 'strata-ui',
      }),
    });
    const body = await json<{ access_token: string }>(res);
    return { authorization: `Bearer ${body.access_token}` };
  }

  const names = async (headers: Record<string, string>): Promise<string[]> =>
    (await json<Page<RepositorySummary>>(await fetch(`${t.url}/api/v1/repositories`, { headers }))).items.map(
      (r) => r.name,
    );

  it('shows each caller only what it may pull; the audit log in full only to an administrator', async () => {
    const carol = await uiToken('carol', 'carol-pw');
    expect(await names(await uiToken('admin', 'admin-secret'))).toEqual([
      'public/base',
      'secret/vault',
      'team/web',
    ]);
    // What anonymous callers may pull, everyone may.
    expect(await names(carol)).toEqual(['public/base', 'team/web']);
    expect(await names({})).toEqual(['public/base']);
    const session = await json<Session>(await fetch(`${t.url}/api/v1/session`, { headers: carol }));
    expect(session).toMatchObject({ auth: true, user: 'carol', admin: false });
    expect(await json<Session>(await fetch(`${t.url}/api/v1/session`))).toMatchObject({
      user: null,
      admin: false,
    });

    // A repository it may not pull is unknown to it, as one that does not exist.
    const hidden = await fetch(`${t.url}/api/v1/tags?${q({ repository: 'secret/vault' })}`, {
      headers: carol,
    });
    expect([hidden.status, await errorCodes(hidden)]).toEqual([404, ['NAME_UNKNOWN']]);
    const audit = await json<AuditPage>(await fetch(`${t.url}/api/v1/audit?limit=100`, { headers: carol }));
    expect(new Set(audit.items.map((e) => e.repository))).toEqual(new Set(['public/base', 'team/web']));
    // Who sent a request (address, user agent, request id) is for administrators.
    expect(
      audit.items.every((e) => e.clientAddr === null && e.userAgent === null && e.requestId === null),
    ).toBe(true);
    // A hidden repository's events are as absent as an unknown one's: no items, no cursor.
    for (const repository of ['secret/vault', 'no/such'])
      expect(
        await json<AuditPage>(
          await fetch(`${t.url}/api/v1/audit?${q({ repository, limit: '1' })}`, { headers: carol }),
        ),
      ).toEqual({ items: [], next: null });
    // Anonymous visitors browse what they may pull, but not the audit log.
    const anonymous = await fetch(`${t.url}/api/v1/audit`);
    expect([anonymous.status, await errorCodes(anonymous)]).toEqual([401, ['UNAUTHORIZED']]);
    const all = await json<AuditPage>(
      await fetch(`${t.url}/api/v1/audit?limit=100`, { headers: await uiToken('admin', 'admin-secret') }),
    );
    expect(all.items.some((e) => e.repository === 'secret/vault')).toBe(true);
    expect(all.items.some((e) => e.repository === null)).toBe(true);
    expect(all.items.some((e) => e.clientAddr === '127.0.0.1')).toBe(true);
  });

  it('fills pages from what the caller may see, with cursors that name only what it sees', async () => {
    const layer = randomBlob(50);
    for (let i = 0; i < 5; i++) await pushImage(t.url, `secret/many-${i}`, 'v1', [layer], admin);
    await pushImage(t.url, 'team/zz', 'v1', [layer], admin);
    const carol = await uiToken('carol', 'carol-pw');
    const seen: string[] = [];
    let after = '';
    for (;;) {
      const page = await json<Page<RepositorySummary>>(
        await fetch(`${t.url}/api/v1/repositories?${q({ limit: '1', after })}`, { headers: carol }),
      );
      expect(page.items).toHaveLength(1);
      seen.push(page.items[0]!.name);
      if (page.next === null) break;
      expect(page.next).toBe(page.items[0]!.name);
      after = page.next;
    }
    expect(seen).toEqual(['public/base', 'team/web', 'team/zz']);
    // Through a personal access token, only what its scopes allow as well.
    const made = await t.runtime.identity!.accounts.createToken(
      'carol',
      ['repository:team/zz:pull'],
      null,
      'ui-test',
      systemMeta('test'),
    );
    await t.runtime.identity!.directory.reload();
    expect(await names(await uiToken('carol', made!.secret))).toEqual(['public/base', 'team/zz']);
  });

  it('refuses a bad token, and a registry token that does not name the catalog', async () => {
    const bad = await fetch(`${t.url}/api/v1/repositories`, {
      headers: { authorization: 'Bearer not.a.token' },
    });
    expect([bad.status, await errorCodes(bad)]).toEqual([401, ['UNAUTHORIZED']]);
    const badSession = await fetch(`${t.url}/api/v1/session`, { headers: { authorization: 'Bearer x.y.z' } });
    expect(badSession.status).toBe(401);
    const pullOnly = await fetch(
      `${t.url}/auth/token?${q({ service: 'strata', scope: 'repository:team/web:pull' })}`,
      {
        headers: { authorization: basic('carol', 'carol-pw') },
      },
    );
    const { token } = await json<{ token: string }>(pullOnly);
    const narrow = await fetch(`${t.url}/api/v1/repositories`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(narrow.status).toBe(401);
    expect(narrow.headers.get('www-authenticate')).toContain('scope="registry:catalog:*"');
    const wrong = await fetch(`${t.url}/api/v1/repositories`, {
      headers: { authorization: basic('carol', 'nope') },
    });
    expect([wrong.status, await errorCodes(wrong)]).toEqual([401, ['UNAUTHORIZED']]);
  });
});
