import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { reportSkip } from '../support/debian';
import { type DockerEngine, dockerEngineUnavailable, startDockerEngine } from '../support/docker-engine';
import { sha256 } from '../support/http';
import { startTestApp, type TestApp } from '../support/test-app';

const execFileAsync = promisify(execFile);
const skip = dockerEngineUnavailable();
reportSkip('the docker and containerd end-to-end tests', skip);
/** An address of this machine outside 127.0.0.0/8, where docker does not trust plain HTTP by itself. */
const outside = Object.values(networkInterfaces())
  .flat()
  .find((a) => a?.family === 'IPv4' && !a.internal)?.address;
if (!skip)
  reportSkip(
    'the docker daemon.json insecure-registries test',
    outside ? null : 'no address outside loopback',
  );

/** Forwards TCP connections to `address`:0 on to 127.0.0.1:`port`. */
async function forward(address: string, port: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = createConnection(port, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, address, resolve));
  const bound = server.address();
  if (!bound || typeof bound === 'string') throw new Error('no address');
  return {
    port: bound.port,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
const ACCEPT = [
  DOCKER_MANIFEST,
  DOCKER_LIST,
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
].join(', ');

interface Manifest {
  mediaType: string;
  config: { digest: string };
  layers: { digest: string }[];
}
interface ManifestList {
  mediaType: string;
  manifests: {
    digest: string;
    mediaType: string;
    platform: { os: string; architecture: string; variant?: string };
  }[];
}

/** The digest `docker push` reports for the tag it pushed. */
function pushedDigest(output: string): string {
  const m = /: digest: (sha256:[0-9a-f]{64}) size: \d+/.exec(output);
  if (!m) throw new Error(`no digest in docker push output: ${output}`);
  return m[1]!;
}

(skip ? describe.skip : describe)('docker and containerd against Strata', () => {
  let t: TestApp;
  let engine: DockerEngine;
  let host: string;

  beforeAll(async () => {
    t = await startTestApp();
    host = t.url.replace('http://', '');
    engine = await startDockerEngine(host);
  }, 60_000);
  afterAll(async () => {
    try {
      await engine?.stop();
    } finally {
      expect(t.serverErrors()).toEqual([]);
      await t.close();
    }
  }, 60_000);

  const manifest = async <T>(
    repo: string,
    ref: string,
  ): Promise<{ digest: string | null; body: T; raw: Buffer }> => {
    const res = await fetch(`${t.url}/v2/${repo}/manifests/${ref}`, { headers: { accept: ACCEPT } });
    expect(res.status).toBe(200);
    const raw = Buffer.from(await res.arrayBuffer());
    return {
      digest: res.headers.get('docker-content-digest'),
      body: JSON.parse(raw.toString('utf8')) as T,
      raw,
    };
  };
  const headDigest = async (repo: string, ref: string): Promise<string | null> => {
    const res = await fetch(`${t.url}/v2/${repo}/manifests/${ref}`, {
      method: 'HEAD',
      headers: { accept: ACCEPT },
    });
    expect(res.status).toBe(200);
    return res.headers.get('docker-content-digest');
  };
  const events = (repository: string) =>
    t.database.db
      .selectFrom('events')
      .select(['type', 'subject', 'payload'])
      .where('repository', '=', repository)
      .orderBy('seq')
      .execute();

  /** A `docker build` context: a Dockerfile and files of random bytes it COPYs in, one layer each. */
  async function buildContext(name: string, from: string, files: Record<string, number>): Promise<string> {
    const dir = join(engine.root, 'contexts', name);
    await mkdir(dir, { recursive: true });
    const lines = [`FROM ${from}`];
    for (const [file, size] of Object.entries(files)) {
      await writeFile(join(dir, file), randomBytes(size));
      lines.push(`COPY ${file} /${file}`);
    }
    await writeFile(join(dir, 'Dockerfile'), `${lines.join('\n')}\n`);
    return dir;
  }
  const build = async (tag: string, context: string): Promise<string> =>
    (await engine.docker('build', '--quiet', '--tag', tag, context)).trim();
  const imageId = async (ref: string): Promise<string> =>
    (await engine.docker('image', 'inspect', '--format', '{{.Id}}', ref)).trim();

  it('pushes an image made by docker import, and pulls it back after removing it with the same id and digest', async () => {
    const src = join(engine.root, 'rootfs');
    await mkdir(join(src, 'etc'), { recursive: true });
    await writeFile(join(src, 'app.bin'), randomBytes(1 << 20));
    await writeFile(join(src, 'etc', 'motd'), 'strata e2e\n');
    const tar = join(engine.root, 'rootfs.tar');
    await execFileAsync('tar', ['-C', src, '-cf', tar, '.']);
    const ref = `${host}/e2e/docker/imported:v1`;
    const id = (await engine.docker('import', '--change', 'CMD ["/app.bin"]', tar, ref)).trim();
    expect(id).toMatch(/^sha256:[0-9a-f]{64}$/);

    const out = await engine.docker('push', ref);
    expect(out).toMatch(/: Pushed$/m);
    const digest = pushedDigest(out);
    expect(await headDigest('e2e/docker/imported', 'v1')).toBe(digest);
    const got = await manifest<Manifest>('e2e/docker/imported', 'v1');
    expect(sha256(got.raw)).toBe(digest);
    expect(got.body.mediaType).toBe(DOCKER_MANIFEST);
    // An image's id is the digest of its config.
    expect(got.body.config.digest).toBe(id);
    expect(got.body.layers).toHaveLength(1);

    await engine.docker('image', 'rm', ref);
    await expect(engine.docker('image', 'inspect', id)).rejects.toThrow(/No such image/);
    const pulled = await engine.docker('pull', ref);
    expect(pulled).toContain(`Digest: ${digest}`);
    expect(await imageId(ref)).toBe(id);
    const repoDigests = JSON.parse(
      await engine.docker('image', 'inspect', '--format', '{{json .RepoDigests}}', ref),
    ) as string[];
    expect(repoDigests).toEqual([`${host}/e2e/docker/imported@${digest}`]);
  });

  it('pushes an image built on one from another repository by mounting its layer, which the event log records', async () => {
    const base = await manifest<Manifest>('e2e/docker/imported', 'v1');
    const baseLayer = base.body.layers[0]!.digest;
    const ref = `${host}/e2e/docker/derived:v1`;
    const id = await build(
      ref,
      await buildContext('derived', `${host}/e2e/docker/imported:v1`, { 'extra.bin': 4096 }),
    );

    const out = await engine.docker('push', ref);
    // The base layer is mounted from the repository docker pulled it from; only the new one is sent.
    expect(out.match(/: Mounted from e2e\/docker\/imported$/gm)).toHaveLength(1);
    expect(out.match(/: Pushed$/gm)).toHaveLength(1);
    const digest = pushedDigest(out);
    expect(await headDigest('e2e/docker/derived', 'v1')).toBe(digest);
    const got = await manifest<Manifest>('e2e/docker/derived', 'v1');
    expect(got.body.config.digest).toBe(id);
    expect(got.body.layers.map((l) => l.digest)[0]).toBe(baseLayer);

    const log = await events('e2e/docker/derived');
    expect(log.filter((e) => e.type === 'blob.mounted')).toEqual([
      {
        type: 'blob.mounted',
        subject: baseLayer,
        payload: { digest: baseLayer, from: 'e2e/docker/imported', size: expect.any(Number) as number },
      },
    ]);
    const committed = log.filter((e) => e.type === 'upload.committed').map((e) => e.subject);
    expect(committed).not.toContain(baseLayer);
    expect(committed).toEqual(expect.arrayContaining([id, got.body.layers[1]!.digest]));
  });

  it('pushes a two-platform list with docker manifest, which Strata serves with both children', async () => {
    const amd = `${host}/e2e/docker/multi-amd64:v1`;
    const arm = `${host}/e2e/docker/multi-arm64:v1`;
    const amdId = await build(amd, await buildContext('amd64', 'scratch', { 'a.bin': 8192, 'b.txt': 10 }));
    await build(arm, await buildContext('arm64', 'scratch', { 'c.bin': 8192 }));
    const amdDigest = pushedDigest(await engine.docker('push', amd));
    const armDigest = pushedDigest(await engine.docker('push', arm));

    const list = `${host}/e2e/docker/multi:v1`;
    await engine.docker('manifest', 'create', '--insecure', list, amd, arm);
    await engine.docker('manifest', 'annotate', list, arm, '--arch', 'arm64', '--variant', 'v8');
    const out = await engine.docker('manifest', 'push', '--insecure', '--purge', list);
    const listDigest = /^(sha256:[0-9a-f]{64})$/m.exec(out)?.[1];
    expect(listDigest).toBeDefined();

    const got = await manifest<ManifestList>('e2e/docker/multi', 'v1');
    expect(got.digest).toBe(listDigest);
    expect(sha256(got.raw)).toBe(listDigest);
    expect(got.body.mediaType).toBe(DOCKER_LIST);
    expect(got.body.manifests).toEqual([
      {
        mediaType: DOCKER_MANIFEST,
        digest: amdDigest,
        size: expect.any(Number) as number,
        platform: { architecture: 'amd64', os: 'linux' },
      },
      {
        mediaType: DOCKER_MANIFEST,
        digest: armDigest,
        size: expect.any(Number) as number,
        platform: { architecture: 'arm64', os: 'linux', variant: 'v8' },
      },
    ]);
    // docker manifest push put each child, and its blobs, into the list's repository too.
    for (const child of [amdDigest, armDigest]) {
      const res = await manifest<Manifest>('e2e/docker/multi', child);
      expect(res.digest).toBe(child);
      for (const blob of [res.body.config, ...res.body.layers]) {
        const head = await fetch(`${t.url}/v2/e2e/docker/multi/blobs/${blob.digest}`, { method: 'HEAD' });
        expect(head.status).toBe(200);
      }
    }
    // docker resolves the list to this machine's platform.
    await engine.docker('pull', list);
    expect(await imageId(list)).toBe(amdId);
  });

  it('pulls with ctr --plain-http, and pushes an image ctr imported, uploading its blobs', async () => {
    const ns = `strata-e2e-${randomBytes(4).toString('hex')}`;
    const ref = `${host}/e2e/docker/imported:v1`;
    const digest = await headDigest('e2e/docker/imported', 'v1');
    const { body } = await manifest<Manifest>('e2e/docker/imported', 'v1');
    const before = t.logs.length;
    await engine.ctr(ns, 'images', 'pull', '--plain-http', ref);
    const images = await engine.ctr(ns, 'images', 'ls');
    expect(images).toMatch(new RegExp(`^${ref.replace(/[.]/g, '\\.')}\\s+\\S+\\s+${digest}\\s`, 'm'));
    // containerd's content store is its own: the layer came from Strata, not from docker's image store.
    const fetched = t.logs
      .slice(before)
      .filter((l) => l.method === 'GET' && l.status === 200)
      .map((l) => decodeURIComponent(String(l.url)));
    expect(fetched).toEqual(
      expect.arrayContaining([
        `/v2/e2e/docker/imported/blobs/${body.layers[0]!.digest}`,
        `/v2/e2e/docker/imported/blobs/${body.config.digest}`,
      ]),
    );

    // An image that containerd imported from a tar has no record of a registry it came from, so ctr uploads it.
    const tar = join(engine.root, 'imported-save.tar');
    await engine.docker('save', '--output', tar, ref);
    const pushNs = `${ns}-push`;
    await engine.ctr(pushNs, 'images', 'import', tar);
    const target = `${host}/e2e/docker/ctr:v1`;
    await engine.ctr(pushNs, 'images', 'tag', ref, target);
    const listed = await engine.ctr(pushNs, 'images', 'ls');
    const localDigest = new RegExp(
      `^${target.replace(/[.]/g, '\\.')}\\s+\\S+\\s+(sha256:[0-9a-f]{64})\\s`,
      'm',
    ).exec(listed)?.[1];
    expect(localDigest).toBeDefined();
    await engine.ctr(pushNs, 'images', 'push', '--plain-http', target);
    expect(await headDigest('e2e/docker/ctr', 'v1')).toBe(localDigest);
    const pushed = await manifest<Manifest>('e2e/docker/ctr', 'v1');
    const log = await events('e2e/docker/ctr');
    expect(log.filter((e) => e.type === 'blob.mounted')).toEqual([]);
    expect(log.filter((e) => e.type === 'upload.committed').map((e) => e.subject)).toEqual(
      expect.arrayContaining([pushed.body.config.digest, ...pushed.body.layers.map((l) => l.digest)]),
    );
    expect(log.filter((e) => e.type === 'manifest.pushed').map((e) => e.subject)).toEqual([localDigest]);
  });

  (outside ? it : it.skip)(
    'trusts plain HTTP by itself on 127.0.0.0/8, and at another address only when daemon.json lists it',
    async () => {
      const port = Number(new URL(t.url).port);
      const proxy = await forward(outside!, port);
      const elsewhere = `${outside}:${proxy.port}`;
      const second = await startDockerEngine(null, { 'insecure-registries': [elsewhere] });
      try {
        const src = `${host}/e2e/docker/imported:v1`;
        // This engine was told to trust only 127.0.0.1:<port>: at the other address it insists on TLS.
        await engine.docker('tag', src, `${elsewhere}/e2e/docker/elsewhere:v1`);
        await expect(engine.docker('push', `${elsewhere}/e2e/docker/elsewhere:v1`)).rejects.toThrow(
          /server gave HTTP response to HTTPS client/,
        );

        const tar = join(engine.root, 'for-second.tar');
        await engine.docker('save', '--output', tar, src);
        await second.docker('load', '--input', tar);
        // No flag and nothing in daemon.json about 127.0.0.1: loopback is trusted by itself.
        await second.docker('tag', src, `${host}/e2e/docker/loopback:v1`);
        const loopback = pushedDigest(await second.docker('push', `${host}/e2e/docker/loopback:v1`));
        expect(await headDigest('e2e/docker/loopback', 'v1')).toBe(loopback);
        // Listed in daemon.json's insecure-registries: plain HTTP.
        await second.docker('tag', src, `${elsewhere}/e2e/docker/elsewhere:v1`);
        const pushed = pushedDigest(await second.docker('push', `${elsewhere}/e2e/docker/elsewhere:v1`));
        expect(await headDigest('e2e/docker/elsewhere', 'v1')).toBe(pushed);
      } finally {
        await second.stop();
        await proxy.close();
      }
    },
  );
});
