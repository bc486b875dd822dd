import { spawn } from 'node:child_process';
import { systemMeta } from '@strata/events';
import { PreparedStatements } from '@strata/db';
import { TagStore } from '@strata/registry';
import { errorCodes, imageManifest, pushBlob, sha256 } from '../support/http';
import { MAIN } from '../support/server-process';
import { startTestApp, type TestApp } from '../support/test-app';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

describe('immutable tags', () => {
  let t: TestApp;
  let tags: TagStore;

  /** A manifest of its own config (`n` tells them apart) in `repo`, PUT under `reference`. */
  const put = async (
    repo: string,
    reference: string,
    n: string,
  ): Promise<{ res: Response; digest: string }> => {
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', n }));
    expect((await pushBlob(t.url, repo, config)).status).toBe(201);
    const body = imageManifest(config);
    const res = await fetch(`${t.url}/v2/${repo}/manifests/${reference}`, {
      method: 'PUT',
      headers: { 'content-type': OCI_MANIFEST },
      body,
    });
    return { res, digest: sha256(body) };
  };
  const head = async (repo: string, reference: string): Promise<string | null> =>
    (await fetch(`${t.url}/v2/${repo}/manifests/${reference}`, { method: 'HEAD' })).headers.get(
      'docker-content-digest',
    );
  const refusals = async (): Promise<Record<string, unknown>[]> =>
    (
      await t.runtime.pool.query<{ payload: Record<string, unknown>; repository: string }>(
        `SELECT repository, payload FROM events WHERE type = 'tag.change_refused' ORDER BY seq`,
      )
    ).rows.map((r) => ({ repository: r.repository, ...r.payload }));

  beforeAll(async () => {
    t = await startTestApp();
    tags = new TagStore(new PreparedStatements(t.runtime.pool));
  });
  afterAll(async () => {
    expect(t.serverErrors()).toEqual([]);
    await t.close();
  });

  it('refuses to move or delete a tag a rule protects, names the rule, and records the refusal', async () => {
    const rule = await tags.addRule('prod/**', 'v*', systemMeta('test'));
    const first = await put('prod/app', 'v1', 'one');
    expect(first.res.status).toBe(201);
    expect((await put('prod/app', 'latest', 'one')).res.status).toBe(201);

    const moved = await put('prod/app', 'v1', 'two');
    expect(moved.res.status).toBe(403);
    const body = (await moved.res.json()) as { errors: { code: string; detail: Record<string, unknown> }[] };
    expect(body.errors[0]).toMatchObject({
      code: 'DENIED',
      detail: {
        repository: 'prod/app',
        tag: 'v1',
        change: 'move',
        rule: { id: rule, repository: 'prod/**', tag: 'v*' },
      },
    });
    expect(await head('prod/app', 'v1')).toBe(first.digest);
    // The refused push stored nothing: its manifest is not there by digest either.
    expect(await head('prod/app', moved.digest)).toBeNull();

    // The same digest again is no move; a tag outside the rule moves; a new tag under it is pushed.
    expect((await put('prod/app', 'v1', 'one')).res.status).toBe(201);
    expect((await put('prod/app', 'latest', 'two')).res.status).toBe(201);
    expect((await put('prod/app', 'v2', 'three')).res.status).toBe(201);
    expect((await put('dev/app', 'v1', 'one')).res.status).toBe(201);
    expect((await put('dev/app', 'v1', 'two')).res.status).toBe(201);

    const delTag = await fetch(`${t.url}/v2/prod/app/manifests/v1`, { method: 'DELETE' });
    expect([delTag.status, await errorCodes(delTag)]).toEqual([403, ['DENIED']]);
    const delManifest = await fetch(`${t.url}/v2/prod/app/manifests/${first.digest}`, { method: 'DELETE' });
    expect([delManifest.status, await errorCodes(delManifest)]).toEqual([403, ['DENIED']]);
    expect(await head('prod/app', 'v1')).toBe(first.digest);

    expect(await refusals()).toEqual([
      expect.objectContaining({
        repository: 'prod/app',
        tag: 'v1',
        change: 'move',
        digest: moved.digest,
        rule,
      }),
      expect.objectContaining({ repository: 'prod/app', tag: 'v1', change: 'delete', digest: null, rule }),
      expect.objectContaining({
        repository: 'prod/app',
        tag: 'v1',
        change: 'delete',
        digest: first.digest,
        rule,
      }),
    ]);

    // Without the rule, the tag moves again.
    expect(await tags.removeRule(rule, systemMeta('test'))).toBe(true);
    expect((await put('prod/app', 'v1', 'two')).res.status).toBe(201);
    const changes = await t.runtime.pool.query<{ type: string }>(
      `SELECT type FROM events WHERE type LIKE 'immutability.%' ORDER BY seq`,
    );
    expect(changes.rows.map((r) => r.type)).toEqual(['immutability.rule_added', 'immutability.rule_removed']);
  });

  it('protects the children of an index an immutable tag points at', async () => {
    const rule = await tags.addRule('multi/*', 'stable', systemMeta('test'));
    const child = await put('multi/app', 'amd64', 'child');
    const childBody = await (await fetch(`${t.url}/v2/multi/app/manifests/amd64`)).text();
    const index = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{ mediaType: OCI_MANIFEST, digest: child.digest, size: Buffer.byteLength(childBody) }],
    });
    const pushed = await fetch(`${t.url}/v2/multi/app/manifests/stable`, {
      method: 'PUT',
      headers: { 'content-type': 'application/vnd.oci.image.index.v1+json' },
      body: index,
    });
    expect(pushed.status).toBe(201);
    const del = await fetch(`${t.url}/v2/multi/app/manifests/${child.digest}`, { method: 'DELETE' });
    expect([del.status, await errorCodes(del)]).toEqual([403, ['DENIED']]);
    expect(await head('multi/app', child.digest)).toBe(child.digest);
    expect(await tags.removeRule(rule, systemMeta('test'))).toBe(true);
  });

  it('is managed with strata immutable-tags, with clear errors', async () => {
    const strata = (args: string[]): Promise<{ status: number; stdout: string; stderr: string }> =>
      new Promise((resolve, reject) => {
        const child = spawn(MAIN, args, {
          env: { PATH: process.env.PATH ?? '', DATABASE_URL: t.database.url, STRATA_DATA_DIR: t.dataDir },
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
        child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
        child.on('error', reject);
        child.on('exit', (code) => resolve({ status: code ?? -1, stdout, stderr }));
      });
    const added = await strata(['immutable-tags', 'add', 'release/*', 'stable']);
    expect(added.status).toBe(0);
    expect(added.stdout).toMatch(/^rule \d+: tags stable of release\/\* are immutable\n$/);
    const id = /^rule (\d+)/.exec(added.stdout)![1]!;
    expect((await strata(['immutable-tags', 'add', 'release/*', 'stable'])).stdout).toBe(added.stdout);
    const list = await strata(['immutable-tags', 'list']);
    expect(list.stdout).toMatch(new RegExp(`^${id}\trelease/\\*\tstable\t\\S+\tcli:\\S+\n$`));
    expect((await put('release/x', 'stable', 'a')).res.status).toBe(201);
    expect((await put('release/x', 'stable', 'b')).res.status).toBe(403);
    expect(await strata(['immutable-tags', 'add', 'Bad//Pattern', 'x'])).toMatchObject({ status: 2 });
    expect(await strata(['immutable-tags', 'add', 'ok', 'bad tag'])).toMatchObject({ status: 2 });
    // No tag starts with '.': a pattern that would never match is refused, not taken.
    expect(await strata(['immutable-tags', 'add', 'ok', '.*'])).toMatchObject({ status: 2 });
    const missing = await strata(['immutable-tags', 'remove', '999999']);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain('no rule 999999');
    expect(await strata(['immutable-tags', 'remove', id])).toMatchObject({ status: 0 });
    expect((await strata(['immutable-tags', 'list'])).stdout).toBe('');
  });
});
