import { createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { SignJWT } from 'jose';
import { systemMeta } from '@strata/events';
import type { Identity } from '@strata/identity';
import { buildLayout, createContainersEnv, type ContainersEnv } from '../support/containers';
import { ensureDebianPackage, reportSkip } from '../support/debian';
import { errorCodes, imageManifest, randomBlob, sha256 } from '../support/http';
import { startTestApp, type TestApp } from '../support/test-app';

const skipSkopeo = ensureDebianPackage('skopeo');
reportSkip('the skopeo login tests', skipSkopeo);
const skipPodman = ensureDebianPackage('podman');
reportSkip('the podman login test', skipPodman);

const basic = (user: string, password: string): string =>
  `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

/** What docker does: the challenge of a refused request, then a token for its scope, with Basic credentials. */
async function tokenFor(base: string, auth: string | null, ...scopes: string[]): Promise<string> {
  const url = new URL('/auth/token', base);
  url.searchParams.set('service', 'strata');
  for (const s of scopes) url.searchParams.append('scope', s);
  const res = await fetch(url, { headers: auth ? { authorization: auth } : {} });
  if (res.status !== 200) throw new Error(`token: ${res.status} ${await res.text()}`);
  return ((await res.json()) as { token: string }).token;
}

const bearer = (token: string): Record<string, string> => ({ authorization: `Bearer ${token}` });

async function push(
  base: string,
  headers: Record<string, string>,
  repo: string,
  tag: string,
): Promise<number> {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', tag }));
  const layer = randomBlob(300);
  for (const b of [config, layer.data]) {
    const res = await fetch(`${base}/v2/${repo}/blobs/uploads/?digest=${sha256(b)}`, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/octet-stream' },
      body: b,
    });
    if (res.status !== 201) return res.status;
  }
  const res = await fetch(`${base}/v2/${repo}/manifests/${tag}`, {
    method: 'PUT',
    headers: { ...headers, 'content-type': 'application/vnd.oci.image.manifest.v1+json' },
    body: imageManifest(config, [{ digest: layer.digest, size: layer.data.length }]),
  });
  return res.status;
}

/** Waits out the replicas' identity poll (1 s) for a change made elsewhere. */
const pollBound = (): Promise<void> => new Promise((r) => setTimeout(r, 2500));

describe('identity and access (STRATA_AUTH=token)', () => {
  let t: TestApp;
  let identity: Identity;
  const admin = basic('admin', 'admin-secret');
  /** The first layer of `<repository>:v1`, read as the administrator. */
  const firstLayer = async (repository: string): Promise<string> => {
    const res = await fetch(`${t.url}/v2/${repository}/manifests/v1`, { headers: { authorization: admin } });
    return ((await res.json()) as { layers: { digest: string }[] }).layers[0]!.digest;
  };

  beforeAll(async () => {
    t = await startTestApp({
      env: {
        STRATA_AUTH: 'token',
        STRATA_ADMIN_PASSWORD: 'admin-secret',
        STRATA_ANONYMOUS_PULL: 'public/**',
      },
    });
    identity = t.runtime.identity!;
    const meta = systemMeta('test');
    await identity.accounts.addAccount('alice', 'user', 'alice-pw', meta);
    await identity.accounts.setGrant({ kind: 'user', name: 'alice' }, 'team/*', ['pull', 'push'], meta);
    await identity.accounts.addAccount('bob', 'user', 'bob-pw', meta);
    await identity.accounts.groupMember('readers', 'bob', true, meta);
    await identity.accounts.setGrant({ kind: 'group', name: 'readers' }, 'team/**', ['pull'], meta);
    await identity.accounts.addAccount('ci-bot', 'robot', null, meta);
    await identity.accounts.setGrant(
      { kind: 'user', name: 'ci-bot' },
      '**',
      ['pull', 'push', 'delete'],
      meta,
    );
    await identity.directory.reload();
    // Content to read: team/app:v1 and public/base:v1, pushed by the administrator.
    expect(await push(t.url, { authorization: admin }, 'team/app', 'v1')).toBe(201);
    expect(await push(t.url, { authorization: admin }, 'public/base', 'v1')).toBe(201);
    expect(await push(t.url, { authorization: admin }, 'secret/vault', 'v1')).toBe(201);
  });

  afterAll(async () => {
    expect(t.serverErrors()).toEqual([]);
    await t.close();
  });

  it('answers 401 with a Bearer challenge naming the refused scope', async () => {
    const base = await fetch(`${t.url}/v2/`);
    expect(base.status).toBe(401);
    expect(await errorCodes(base)).toEqual(['UNAUTHORIZED']);
    expect(base.headers.get('www-authenticate')).toBe(`Bearer realm="${t.url}/auth/token",service="strata"`);
    const put = await fetch(`${t.url}/v2/team/app/manifests/v2`, { method: 'PUT', body: '{}' });
    expect(put.status).toBe(401);
    expect(put.headers.get('www-authenticate')).toBe(
      `Bearer realm="${t.url}/auth/token",service="strata",scope="repository:team/app:pull,push"`,
    );
  });

  it('issues tokens with only the access granted, and takes them', async () => {
    const token = await tokenFor(
      t.url,
      basic('alice', 'alice-pw'),
      'repository:team/app:pull,push,delete',
      'repository:secret/vault:pull',
    );
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as {
      access: unknown[];
      sub: string;
      aud: string;
    };
    expect(claims.sub).toBe('alice');
    expect(claims.aud).toBe('strata');
    expect(claims.access).toEqual([{ type: 'repository', name: 'team/app', actions: ['pull', 'push'] }]);
    expect((await fetch(`${t.url}/v2/`, { headers: bearer(token) })).status).toBe(200);
    expect((await fetch(`${t.url}/v2/team/app/manifests/v1`, { headers: bearer(token) })).status).toBe(200);
    expect(await push(t.url, bearer(token), 'team/app', 'v2')).toBe(201);
    // The header carries the key id, and the key is published.
    const header = JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString()) as {
      kid: string;
      alg: string;
    };
    expect(header.alg).toBe('ES256');
    const jwks = (await (await fetch(`${t.url}/auth/jwks`)).json()) as { keys: { kid: string }[] };
    expect(jwks.keys.map((k) => k.kid)).toEqual([header.kid]);
  });

  it('speaks the OAuth2 form (password and refresh_token grants)', async () => {
    const form = (fields: Record<string, string>): Promise<Response> =>
      fetch(`${t.url}/auth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams(fields).toString(),
      });
    const first = await form({
      grant_type: 'password',
      username: 'alice',
      password: 'alice-pw',
      service: 'strata',
      client_id: 'docker',
      access_type: 'offline',
      scope: 'repository:team/app:pull',
    });
    expect(first.status).toBe(200);
    const body = (await first.json()) as { access_token: string; refresh_token: string };
    expect(
      (await fetch(`${t.url}/v2/team/app/tags/list`, { headers: bearer(body.access_token) })).status,
    ).toBe(200);
    // A refresh token is no access token.
    expect(
      (await fetch(`${t.url}/v2/team/app/tags/list`, { headers: bearer(body.refresh_token) })).status,
    ).toBe(401);
    const again = await form({
      grant_type: 'refresh_token',
      refresh_token: body.refresh_token,
      service: 'strata',
      scope: 'repository:team/app:pull',
    });
    expect(again.status).toBe(200);
    const wrong = await form({
      grant_type: 'password',
      username: 'alice',
      password: 'nope',
      service: 'strata',
    });
    expect(wrong.status).toBe(401);
    expect(await errorCodes(wrong)).toEqual(['UNAUTHORIZED']);
    const bad = await form({ grant_type: 'client_credentials' });
    expect(bad.status).toBe(400);
  });

  it('takes Basic credentials on registry requests directly', async () => {
    const ok = await fetch(`${t.url}/v2/team/app/tags/list`, {
      headers: { authorization: basic('bob', 'bob-pw') },
    });
    expect(ok.status).toBe(200);
    // bob may pull team/** through his group, not push.
    const denied = await fetch(`${t.url}/v2/team/app/blobs/uploads/`, {
      method: 'POST',
      headers: { authorization: basic('bob', 'bob-pw') },
    });
    expect(denied.status).toBe(403);
    expect(await errorCodes(denied)).toEqual(['DENIED']);
  });

  describe('escapes', () => {
    it('refuses a push without push, and a delete without delete', async () => {
      const token = await tokenFor(t.url, basic('bob', 'bob-pw'), 'repository:team/app:pull,push,delete');
      expect(await push(t.url, bearer(token), 'team/app', 'bob')).toBe(401);
      const del = await fetch(`${t.url}/v2/team/app/manifests/v1`, {
        method: 'DELETE',
        headers: bearer(token),
      });
      expect(del.status).toBe(401);
      const alice = await tokenFor(t.url, basic('alice', 'alice-pw'), 'repository:team/app:delete');
      const del2 = await fetch(`${t.url}/v2/team/app/manifests/v1`, {
        method: 'DELETE',
        headers: bearer(alice),
      });
      expect(del2.status).toBe(401);
      expect(
        (
          await fetch(`${t.url}/v2/team/app/manifests/v1`, {
            method: 'HEAD',
            headers: { authorization: admin },
          })
        ).status,
      ).toBe(200);
    });

    it('turns a mount from a repository the caller cannot pull into an ordinary upload', async () => {
      const digest = await firstLayer('secret/vault');
      const token = await tokenFor(
        t.url,
        basic('alice', 'alice-pw'),
        'repository:team/mine:pull,push',
        'repository:secret/vault:pull',
      );
      const mount = await fetch(`${t.url}/v2/team/mine/blobs/uploads/?mount=${digest}&from=secret/vault`, {
        method: 'POST',
        headers: bearer(token),
      });
      expect(mount.status).toBe(202);
      // ... and the blob is not readable through team/mine.
      const read = await fetch(`${t.url}/v2/team/mine/blobs/${digest}`, { headers: bearer(token) });
      expect(read.status).toBe(404);
      // From a repository she may pull, the mount happens.
      const ownDigest = await firstLayer('team/app');
      const token2 = await tokenFor(
        t.url,
        basic('alice', 'alice-pw'),
        'repository:team/mine:pull,push',
        'repository:team/app:pull',
      );
      const mounted = await fetch(`${t.url}/v2/team/mine/blobs/uploads/?mount=${ownDigest}&from=team/app`, {
        method: 'POST',
        headers: bearer(token2),
      });
      expect(mounted.status).toBe(201);
    });

    it('never reads a blob through a repository that does not link it', async () => {
      const digest = await firstLayer('secret/vault');
      const token = await tokenFor(t.url, basic('alice', 'alice-pw'), 'repository:team/app:pull');
      expect((await fetch(`${t.url}/v2/team/app/blobs/${digest}`, { headers: bearer(token) })).status).toBe(
        404,
      );
    });

    it('refuses a token for one repository on another', async () => {
      const token = await tokenFor(t.url, basic('alice', 'alice-pw'), 'repository:team/app:pull');
      const res = await fetch(`${t.url}/v2/team/other/tags/list`, { headers: bearer(token) });
      expect(res.status).toBe(401);
      expect(res.headers.get('www-authenticate')).toContain('error="insufficient_scope"');
    });

    it('refuses forged tokens: widened payload, alg none, another key, HS256 with the public key, expired', async () => {
      const token = await tokenFor(t.url, basic('alice', 'alice-pw'), 'repository:team/app:pull');
      const [h, p, s] = token.split('.') as [string, string, string];
      const payload = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
      const widened = Buffer.from(
        JSON.stringify({
          ...payload,
          access: [{ type: 'repository', name: 'secret/vault', actions: ['pull'] }],
        }),
      ).toString('base64url');
      const none = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
      const vaultPayload = {
        ...payload,
        access: [{ type: 'repository', name: 'secret/vault', actions: ['pull'] }],
      };
      const other = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
      const now = Math.floor(Date.now() / 1000);
      const signedByOther = await new SignJWT(vaultPayload)
        .setProtectedHeader({
          alg: 'ES256',
          kid: (JSON.parse(Buffer.from(h, 'base64url').toString()) as { kid: string }).kid,
        })
        .sign(other);
      const publicPem = (await (await fetch(`${t.url}/auth/jwks`)).json()) as {
        keys: Record<string, unknown>[];
      };
      const hs = await new SignJWT(vaultPayload)
        .setProtectedHeader({ alg: 'HS256' })
        .sign(new TextEncoder().encode(JSON.stringify(publicPem.keys[0])));
      const ourKey = createPrivateKey(readFileSync(join(t.dataDir, 'auth', 'token-key.pem')));
      // Bound to the admin account as the registry binds its own tokens, so that only what each forgery changes is
      // wrong with it.
      const adminAccount = identity.directory.account('admin')!;
      const bound = { uid: adminAccount.id, ver: adminAccount.version };
      // The classic confusion: HS256 keyed with the verifier's public key as PEM text.
      const publicText = createPublicKey(ourKey).export({ type: 'spki', format: 'pem' }) as string;
      const hsPem = await new SignJWT({ ...vaultPayload })
        .setProtectedHeader({ alg: 'HS256' })
        .sign(new TextEncoder().encode(publicText));
      const expired = await new SignJWT({ access: vaultPayload.access, ...bound })
        .setProtectedHeader({ alg: 'ES256' })
        .setIssuer('strata')
        .setAudience('strata')
        .setSubject('admin')
        .setIssuedAt(now - 3600)
        .setExpirationTime(now - 600)
        .sign(ourKey);
      const forged = [
        `${h}.${widened}.${s}`,
        `${none}.${Buffer.from(JSON.stringify(vaultPayload)).toString('base64url')}.`,
        signedByOther,
        hs,
        hsPem,
        expired,
      ];
      for (const f of forged) {
        const res = await fetch(`${t.url}/v2/secret/vault/tags/list`, { headers: bearer(f) });
        expect(res.status).toBe(401);
        expect(await errorCodes(res)).toEqual(['UNAUTHORIZED']);
      }
      // The same key, right claims: accepted (the forgeries failed for what they changed).
      const genuine = await new SignJWT({
        access: vaultPayload.access,
        uid: adminAccount.id,
        ver: adminAccount.version,
      })
        .setProtectedHeader({ alg: 'ES256' })
        .setIssuer('strata')
        .setAudience('strata')
        .setSubject('admin')
        .setIssuedAt(now)
        .setExpirationTime(now + 60)
        .sign(ourKey);
      expect((await fetch(`${t.url}/v2/secret/vault/tags/list`, { headers: bearer(genuine) })).status).toBe(
        200,
      );
    });

    it('stops a revoked robot token and a disabled user within the poll bound', async () => {
      const meta = systemMeta('test');
      const created = (await identity.accounts.createToken(
        'ci-bot',
        ['repository:team/*:pull,push'],
        null,
        'ci',
        meta,
      ))!;
      await identity.directory.reload();
      const robot = basic('ci-bot', created.secret);
      expect(
        (await fetch(`${t.url}/v2/team/app/tags/list`, { headers: { authorization: robot } })).status,
      ).toBe(200);
      // The token's scope narrows the robot's grants: not secret/vault, although ci-bot may pull everything.
      expect(
        (await fetch(`${t.url}/v2/secret/vault/tags/list`, { headers: { authorization: robot } })).status,
      ).toBe(403);
      const robotJwt = await tokenFor(t.url, robot, 'repository:team/app:pull');
      await identity.accounts.revokeToken(created.id, meta);
      await pollBound();
      expect(
        (await fetch(`${t.url}/v2/team/app/tags/list`, { headers: { authorization: robot } })).status,
      ).toBe(401);
      expect((await fetch(`${t.url}/v2/team/app/tags/list`, { headers: bearer(robotJwt) })).status).toBe(401);

      const bobJwt = await tokenFor(t.url, basic('bob', 'bob-pw'), 'repository:team/app:pull');
      expect((await fetch(`${t.url}/v2/team/app/tags/list`, { headers: bearer(bobJwt) })).status).toBe(200);
      await identity.accounts.changeAccount('bob', 'disabled', meta);
      await pollBound();
      expect((await fetch(`${t.url}/v2/team/app/tags/list`, { headers: bearer(bobJwt) })).status).toBe(401);
      await identity.accounts.changeAccount('bob', 'enabled', meta);
      await pollBound();
    });

    it('stops a revoked token on another replica too, which takes the tokens the first one issued', async () => {
      // A second replica: same database, same signing key (the data directory's).
      const b = await startTestApp({
        database: t.database,
        dataDir: t.dataDir,
        env: { STRATA_AUTH: 'token', STRATA_ANONYMOUS_PULL: 'public/**' },
      });
      try {
        const meta = systemMeta('test');
        const created = (await identity.accounts.createToken(
          'ci-bot',
          ['repository:team/*:pull'],
          null,
          null,
          meta,
        ))!;
        const robot = basic('ci-bot', created.secret);
        // B learns of the token by its own poll, as it would of one created on any replica.
        await pollBound();
        expect(
          (await fetch(`${b.url}/v2/team/app/tags/list`, { headers: { authorization: robot } })).status,
        ).toBe(200);
        const fromA = await tokenFor(t.url, robot, 'repository:team/app:pull');
        expect((await fetch(`${b.url}/v2/team/app/tags/list`, { headers: bearer(fromA) })).status).toBe(200);
        await identity.accounts.revokeToken(created.id, meta);
        await pollBound();
        expect(
          (await fetch(`${b.url}/v2/team/app/tags/list`, { headers: { authorization: robot } })).status,
        ).toBe(401);
        expect((await fetch(`${b.url}/v2/team/app/tags/list`, { headers: bearer(fromA) })).status).toBe(401);
        expect(b.serverErrors()).toEqual([]);
      } finally {
        await b.close();
      }
    });

    it('lists in the catalog only what the caller may pull', async () => {
      const alice = await tokenFor(t.url, basic('alice', 'alice-pw'), 'registry:catalog:*');
      const list = (await (await fetch(`${t.url}/v2/_catalog`, { headers: bearer(alice) })).json()) as {
        repositories: string[];
      };
      expect(list.repositories).toContain('team/app');
      expect(list.repositories).toContain('public/base');
      expect(list.repositories).not.toContain('secret/vault');
      const tags = await fetch(`${t.url}/v2/secret/vault/tags/list`, { headers: bearer(alice) });
      expect(tags.status).toBe(401);
      const all = (await (
        await fetch(`${t.url}/v2/_catalog`, { headers: { authorization: admin } })
      ).json()) as {
        repositories: string[];
      };
      expect(all.repositories).toContain('secret/vault');
    });
  });

  it('lets anonymous clients pull what STRATA_ANONYMOUS_PULL allows, and nothing else', async () => {
    expect((await fetch(`${t.url}/v2/public/base/manifests/v1`)).status).toBe(200);
    const anon = await tokenFor(t.url, null, 'repository:public/base:pull,push', 'repository:team/app:pull');
    const claims = JSON.parse(Buffer.from(anon.split('.')[1]!, 'base64url').toString()) as {
      access: unknown[];
    };
    expect(claims.access).toEqual([{ type: 'repository', name: 'public/base', actions: ['pull'] }]);
    expect((await fetch(`${t.url}/v2/public/base/manifests/v1`, { headers: bearer(anon) })).status).toBe(200);
    expect(await push(t.url, bearer(anon), 'public/base', 'evil')).toBe(401);
    expect((await fetch(`${t.url}/v2/team/app/manifests/v1`)).status).toBe(401);
  });

  it('answers malformed credentials and scopes with the envelope, never a 500', async () => {
    const headers = [
      'Basic',
      'Basic !!!notbase64',
      `Basic ${Buffer.from('no-colon').toString('base64')}`,
      `Basic ${Buffer.from([0xff, 0xfe, 0x3a, 0x00]).toString('base64')}`,
      `Basic ${Buffer.from(`${'a'.repeat(5000)}:${'b'.repeat(2000)}`).toString('base64')}`,
      'Bearer',
      'Bearer not.a.jwt',
      `Bearer ${'x'.repeat(7000)}`,
      'Digest username="x"',
      'Negotiate abc',
    ];
    for (const h of headers) {
      const res = await fetch(`${t.url}/v2/team/app/tags/list`, { headers: { authorization: h } });
      expect([400, 401]).toContain(res.status);
      expect((await errorCodes(res)).length).toBe(1);
    }
    // Over the header limit a request never gets this far; a raw header with control bytes neither.
    for (const scope of [
      'nonsense',
      'repository::pull',
      'repository:UPPER/case:pull',
      'registry:foo:*',
      'x'.repeat(2000),
    ]) {
      const res = await fetch(`${t.url}/auth/token?service=strata&scope=${encodeURIComponent(scope)}`, {
        headers: { authorization: admin },
      });
      expect(res.status).toBe(400);
      expect(await errorCodes(res)).toEqual(['SCOPE_INVALID']);
    }
    const service = await fetch(`${t.url}/auth/token?service=elsewhere`, {
      headers: { authorization: admin },
    });
    expect(service.status).toBe(400);
    // A raw binary Authorization value, as a hostile client sends it.
    const status = await new Promise<number>((resolve, reject) => {
      const url = new URL(t.url);
      const req = httpRequest(
        {
          host: url.hostname,
          port: url.port,
          path: '/v2/team/app/tags/list',
          headers: { authorization: 'Basic \u00ff\u00fe' },
        },
        (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        },
      );
      req.on('error', reject);
      req.end();
    });
    expect([400, 401]).toContain(status);
  });

  it('slows down repeated failed logins from one address, concurrent ones too, and records them in bounded events', async () => {
    await identity.reportFailures(true);
    const count = async (): Promise<number> =>
      Number(
        (
          await t.database.pool.query<{ n: string }>(
            `SELECT count(*) AS n FROM events WHERE type = 'auth.failed'`,
          )
        ).rows[0]!.n,
      );
    const before = await count();
    const statuses: number[] = [];
    for (let i = 0; i < 14; i++) {
      const res = await fetch(`${t.url}/v2/`, { headers: { authorization: basic('mallory', `guess${i}`) } });
      statuses.push(res.status);
      if (res.status === 429) expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0);
    }
    expect(statuses.slice(0, 10).every((s) => s === 401)).toBe(true);
    expect(statuses.slice(10).every((s) => s === 429)).toBe(true);
    // Guesses sent all at once are counted as they start, not as they finish: at most the allowance is checked.
    const parallel = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        fetch(`${t.url}/auth/token?service=strata`, {
          headers: { authorization: basic('par1', `g${i}`) },
        }).then((r) => r.status),
      ),
    );
    expect(parallel.filter((s) => s === 401).length).toBeLessThanOrEqual(10);
    expect(parallel.filter((s) => s === 429).length).toBeGreaterThanOrEqual(30);
    // Someone else guessing from this address does not lock out a user who knows her password.
    expect(
      (await fetch(`${t.url}/v2/`, { headers: { authorization: basic('alice', 'alice-pw') } })).status,
    ).toBe(200);
    await identity.reportFailures(true);
    const events = await t.database.pool.query<{
      payload: { failures: number; refused: number; accounts: string[] };
    }>(`SELECT payload FROM events WHERE type = 'auth.failed' ORDER BY seq DESC LIMIT $1`, [
      (await count()) - before,
    ]);
    // One event for the address (two when the 5-second reporter ran in between), with the counts and some names.
    expect(events.rows.length).toBeGreaterThanOrEqual(1);
    expect(events.rows.length).toBeLessThanOrEqual(2);
    const sum = (k: 'failures' | 'refused'): number => events.rows.reduce((t, r) => t + r.payload[k], 0);
    expect(sum('failures')).toBe(20);
    expect(sum('refused')).toBeGreaterThanOrEqual(34);
    expect(events.rows.flatMap((r) => r.payload.accounts)).toEqual(
      expect.arrayContaining(['mallory', 'par1']),
    );
  });

  it('voids tokens when the password changes, and does not carry them to a new account of the same name', async () => {
    const meta = systemMeta('test');
    await identity.accounts.addAccount('carol', 'user', 'carol-pw', meta);
    await identity.accounts.setGrant({ kind: 'user', name: 'carol' }, 'team/*', ['pull'], meta);
    await identity.directory.reload();
    const form = (fields: Record<string, string>): Promise<Response> =>
      fetch(`${t.url}/auth/token`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ service: 'strata', ...fields }).toString(),
      });
    const first = (await (
      await form({
        grant_type: 'password',
        username: 'carol',
        password: 'carol-pw',
        access_type: 'offline',
        scope: 'repository:team/app:pull',
      })
    ).json()) as { access_token: string; refresh_token: string; scope: string };
    expect(first.scope).toBe('repository:team/app:pull');
    expect(
      (await fetch(`${t.url}/v2/team/app/tags/list`, { headers: bearer(first.access_token) })).status,
    ).toBe(200);
    await identity.accounts.setPassword('carol', 'carol-pw-2', meta);
    await identity.directory.reload();
    expect(
      (await fetch(`${t.url}/v2/team/app/tags/list`, { headers: bearer(first.access_token) })).status,
    ).toBe(401);
    expect((await form({ grant_type: 'refresh_token', refresh_token: first.refresh_token })).status).toBe(
      401,
    );
    // Removed and created again: another person, whom the old tokens do not reach.
    const second = (await (
      await form({
        grant_type: 'password',
        username: 'carol',
        password: 'carol-pw-2',
        access_type: 'offline',
      })
    ).json()) as { refresh_token: string };
    await identity.accounts.changeAccount('carol', 'removed', meta);
    await identity.accounts.addAccount('carol', 'user', 'carol-pw-2', meta);
    await identity.directory.reload();
    expect((await form({ grant_type: 'refresh_token', refresh_token: second.refresh_token })).status).toBe(
      401,
    );
  });

  it('refuses an empty password as a failed login, never a 500', async () => {
    expect(
      (await fetch(`${t.url}/auth/token?service=strata`, { headers: { authorization: basic('alice', '') } }))
        .status,
    ).toBe(401);
    expect(
      (await fetch(`${t.url}/auth/token?service=strata`, { headers: { authorization: basic('', '') } }))
        .status,
    ).toBe(401);
    const form = await fetch(`${t.url}/auth/token`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: 'grant_type=password',
    });
    expect(form.status).toBe(401);
  });

  it('keeps anonymous pull for a scoped robot token, needs registry:catalog:* in a token for the catalog, refuses bad names first', async () => {
    const meta = systemMeta('test');
    const created = (await identity.accounts.createToken(
      'ci-bot',
      ['repository:team/*:pull'],
      null,
      null,
      meta,
    ))!;
    await identity.directory.reload();
    const robot = basic('ci-bot', created.secret);
    expect(
      (await fetch(`${t.url}/v2/public/base/manifests/v1`, { headers: { authorization: robot } })).status,
    ).toBe(200);
    const alice = await tokenFor(t.url, basic('alice', 'alice-pw'), 'repository:team/app:pull');
    const catalog = await fetch(`${t.url}/v2/_catalog`, { headers: bearer(alice) });
    expect(catalog.status).toBe(401);
    expect(catalog.headers.get('www-authenticate')).toContain(
      'scope="registry:catalog:*",error="insufficient_scope"',
    );
    const bad = await fetch(`${t.url}/v2/${'-'.repeat(900)}/manifests/x`);
    expect(bad.status).toBe(400);
    expect(await errorCodes(bad)).toEqual(['NAME_INVALID']);
  });

  (skipSkopeo ? describe.skip : describe)('with real clients', () => {
    let containers: ContainersEnv;
    beforeAll(async () => {
      containers = await createContainersEnv();
    });
    afterAll(async () => {
      await containers.close();
    });

    it('skopeo pushes and pulls through the token flow with --dest-creds / --src-creds (a robot token)', async () => {
      const meta = systemMeta('test');
      const created = (await identity.accounts.createToken(
        'ci-bot',
        ['repository:ci/**:pull,push'],
        null,
        'skopeo',
        meta,
      ))!;
      await identity.directory.reload();
      const layout = await buildLayout(containers.root, 2);
      const host = t.url.replace('http://', '');
      await containers.run(
        'skopeo',
        'copy',
        '--quiet',
        '--dest-tls-verify=false',
        `--dest-creds=ci-bot:${created.secret}`,
        `oci:${layout.dir}:v1`,
        `docker://${host}/ci/app:v1`,
      );
      await containers.run(
        'skopeo',
        'copy',
        '--quiet',
        '--src-tls-verify=false',
        `--src-creds=ci-bot:${created.secret}`,
        `docker://${host}/ci/app:v1`,
        `oci:${join(containers.root, 'pulled')}:v1`,
      );
      await expect(
        containers.run('skopeo', 'inspect', '--raw', '--tls-verify=false', `docker://${host}/ci/app:v1`),
      ).rejects.toThrow();
      const actors = await t.database.pool.query<{ actor: string }>(
        `SELECT DISTINCT actor FROM events WHERE repository = 'ci/app'`,
      );
      expect(actors.rows.map((r) => r.actor)).toEqual(['ci-bot']);
    });

    (skipPodman ? it.skip : it)('podman logs in, pushes and pulls', async () => {
      const host = t.url.replace('http://', '');
      const layout = await buildLayout(join(containers.root, 'p'), 1);
      const authfile = join(containers.root, 'auth.json');
      await containers.run(
        'podman',
        'login',
        '--tls-verify=false',
        '--authfile',
        authfile,
        '-u',
        'alice',
        '-p',
        'alice-pw',
        host,
      );
      // podman's login writes the credentials; skopeo pushes with them (podman push needs local storage of the
      // image), and podman pulls with them.
      await containers.run(
        'skopeo',
        'copy',
        '--quiet',
        '--dest-tls-verify=false',
        '--authfile',
        authfile,
        `oci:${layout.dir}:v1`,
        `docker://${host}/team/podman:v1`,
      );
      await containers.run(
        'podman',
        'pull',
        '--quiet',
        '--tls-verify=false',
        '--authfile',
        authfile,
        `${host}/team/podman:v1`,
      );
      const actors = await t.database.pool.query<{ actor: string }>(
        `SELECT DISTINCT actor FROM events WHERE repository = 'team/podman'`,
      );
      expect(actors.rows.map((r) => r.actor)).toEqual(['alice']);
    });
  });

  it('names the authenticated actor on every event', async () => {
    const rows = await t.database.pool.query<{ actor: string; type: string }>(
      `SELECT actor, type FROM events`,
    );
    const actors = new Set(rows.rows.map((r) => r.actor));
    for (const a of actors)
      expect(['system:bootstrap', 'system:test', 'admin', 'alice', 'bob', 'ci-bot', 'anonymous']).toContain(
        a,
      );
    // Anonymous appears only on refused logins (nobody anonymous may write).
    expect(rows.rows.filter((r) => r.actor === 'anonymous').every((r) => r.type === 'auth.failed')).toBe(
      true,
    );
    expect(rows.rows.some((r) => r.actor === 'alice' && r.type === 'manifest.pushed')).toBe(true);
  });
});
