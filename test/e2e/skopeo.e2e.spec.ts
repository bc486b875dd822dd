import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureDebianPackage, reportSkip } from '../support/debian';
import { startTestApp, type TestApp } from '../support/test-app';

const execFileAsync = promisify(execFile);
const hex = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

interface Layout {
  readonly dir: string;
  readonly manifestDigest: string;
  readonly blobDigests: string[];
}

/** An OCI image layout on disk: real tar layers of random files, a config, a manifest and index.json. */
async function buildLayout(root: string, layers: number): Promise<Layout> {
  const dir = join(root, 'layout');
  const blobs = join(dir, 'blobs', 'sha256');
  await mkdir(blobs, { recursive: true });
  const put = async (b: Buffer): Promise<string> => {
    const h = hex(b);
    await writeFile(join(blobs, h), b);
    return `sha256:${h}`;
  };
  const layerDescs = [];
  for (let i = 0; i < layers; i++) {
    const src = join(root, `layer${i}`);
    await mkdir(src, { recursive: true });
    await writeFile(join(src, `file${i}.bin`), randomBytes(512 * 1024 * (i + 1)));
    await writeFile(join(src, `note${i}.txt`), `layer ${i}\n`);
    const tar = execFileSync('tar', ['-C', src, '-cf', '-', '.'], { maxBuffer: 64 << 20 });
    layerDescs.push({
      mediaType: 'application/vnd.oci.image.layer.v1.tar',
      digest: await put(tar),
      size: tar.length,
    });
  }
  const config = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      config: { Cmd: ['/bin/true'] },
      rootfs: { type: 'layers', diff_ids: layerDescs.map((l) => l.digest) },
    }),
  );
  const configDesc = {
    mediaType: 'application/vnd.oci.image.config.v1+json',
    digest: await put(config),
    size: config.length,
  };
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: configDesc,
      layers: layerDescs,
    }),
  );
  const manifestDigest = await put(manifest);
  await writeFile(join(dir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(
    join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: manifestDigest,
          size: manifest.length,
          annotations: { 'org.opencontainers.image.ref.name': 'v1' },
        },
      ],
    }),
  );
  return { dir, manifestDigest, blobDigests: [configDesc.digest, ...layerDescs.map((l) => l.digest)] };
}

const skip = ensureDebianPackage('skopeo');
reportSkip('the skopeo end-to-end test', skip);
const skipPodman = ensureDebianPackage('podman');
reportSkip('the podman end-to-end test', skipPodman);

/** Runs a client asynchronously: the registry under test serves from this same process. */
async function run(tool: string, ...args: string[]): Promise<string> {
  try {
    const { stdout } = await execFileAsync(tool, args, { encoding: 'utf8', timeout: 120_000 });
    return stdout;
  } catch (e) {
    throw new Error(`${tool} ${args.join(' ')} failed: ${(e as { stderr?: string }).stderr ?? String(e)}`);
  }
}

(skip ? describe.skip : describe)('skopeo against Strata', () => {
  let t: TestApp;
  let root: string;

  beforeAll(async () => {
    t = await startTestApp();
    root = await mkdtemp(join(tmpdir(), 'strata-skopeo-'));
  });
  afterAll(async () => {
    expect(t.serverErrors()).toEqual([]);
    await t.close();
    await rm(root, { recursive: true, force: true });
  });

  // Asynchronous: the registry under test serves from this same process, so a blocking spawn would hang both.
  async function skopeo(...args: string[]): Promise<string> {
    try {
      const { stdout } = await execFileAsync('skopeo', args, { encoding: 'utf8', timeout: 120_000 });
      return stdout;
    } catch (e) {
      throw new Error(`skopeo ${args.join(' ')} failed: ${(e as { stderr?: string }).stderr ?? String(e)}`);
    }
  }

  it('pushes an OCI image layout and pulls it back with every digest the same', async () => {
    const layout = await buildLayout(root, 3);
    const host = t.url.replace('http://', '');
    await skopeo(
      'copy',
      '--quiet',
      '--preserve-digests',
      '--dest-tls-verify=false',
      `oci:${layout.dir}:v1`,
      `docker://${host}/e2e/app:v1`,
    );

    const head = await fetch(`${t.url}/v2/e2e/app/manifests/v1`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('docker-content-digest')).toBe(layout.manifestDigest);

    const raw = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${host}/e2e/app:v1`);
    expect(`sha256:${hex(Buffer.from(raw))}`).toBe(layout.manifestDigest);

    const pulled = join(root, 'pulled');
    await skopeo(
      'copy',
      '--quiet',
      '--preserve-digests',
      '--src-tls-verify=false',
      `docker://${host}/e2e/app:v1`,
      `oci:${pulled}:v1`,
    );
    const index = JSON.parse(await readFile(join(pulled, 'index.json'), 'utf8')) as {
      manifests: { digest: string }[];
    };
    expect(index.manifests.map((m) => m.digest)).toEqual([layout.manifestDigest]);
    for (const digest of [layout.manifestDigest, ...layout.blobDigests]) {
      const bytes = await readFile(join(pulled, 'blobs', 'sha256', digest.slice('sha256:'.length)));
      expect(`sha256:${hex(bytes)}`).toBe(digest);
    }

    const tags = (await (await fetch(`${t.url}/v2/e2e/app/tags/list`)).json()) as { tags: string[] };
    expect(tags.tags).toEqual(['v1']);
  });

  it('copies between two repositories of the registry, mounting blobs instead of re-sending them', async () => {
    const host = t.url.replace('http://', '');
    await skopeo(
      'copy',
      '--quiet',
      '--src-tls-verify=false',
      '--dest-tls-verify=false',
      `docker://${host}/e2e/app:v1`,
      `docker://${host}/e2e/copy:v1`,
    );
    const a = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${host}/e2e/app:v1`);
    const b = await skopeo('inspect', '--raw', '--tls-verify=false', `docker://${host}/e2e/copy:v1`);
    expect(b).toBe(a);
  });
});

(skipPodman ? describe.skip : describe)('podman against Strata', () => {
  let t: TestApp;
  let root: string;

  beforeAll(async () => {
    t = await startTestApp();
    // podman names the image it imports after the layout's path, and image names must be lowercase.
    root = join(tmpdir(), `strata-podman-${randomBytes(6).toString('hex')}`);
    await mkdir(root);
  });
  afterAll(async () => {
    expect(t.serverErrors()).toEqual([]);
    await t.close();
    await rm(root, { recursive: true, force: true });
  });

  it('pushes an image with podman and pulls it back with the same image id and layers', async () => {
    const layout = await buildLayout(root, 2);
    const host = t.url.replace('http://', '');
    const local = `localhost/strata-e2e/podman-${Date.now()}:v1`;
    const remote = `${host}/e2e/podman:v1`;
    const configHex = layout.blobDigests[0]!.slice('sha256:'.length);
    await run('podman', 'pull', '--quiet', `oci:${layout.dir}:v1`);
    await run('podman', 'tag', configHex, local);
    try {
      await run('podman', 'push', '--quiet', '--tls-verify=false', local, `docker://${remote}`);
      const tags = (await (await fetch(`${t.url}/v2/e2e/podman/tags/list`)).json()) as { tags: string[] };
      expect(tags.tags).toEqual(['v1']);
      await run('podman', 'rmi', '--force', local, configHex);
      await run('podman', 'pull', '--quiet', '--tls-verify=false', remote);
      const id = (await run('podman', 'image', 'inspect', '--format', '{{.Id}}', remote)).trim();
      expect(id).toBe(configHex);
      const head = await fetch(`${t.url}/v2/e2e/podman/manifests/v1`, { method: 'HEAD' });
      expect(head.status).toBe(200);
      const digests = (await run('podman', 'image', 'inspect', '--format', '{{.Digest}}', remote)).trim();
      expect(digests).toBe(head.headers.get('docker-content-digest'));
    } finally {
      await run('podman', 'rmi', '--force', remote).catch(() => undefined);
      await run('podman', 'rmi', '--force', configHex).catch(() => undefined);
    }
  });
});
