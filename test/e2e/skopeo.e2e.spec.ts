import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import {
  buildLayout,
  createContainersEnv,
  pulledDigests,
  sha256Hex as hex,
  type ContainersEnv,
} from '../support/containers';
import { ensureDebianPackage, reportSkip } from '../support/debian';
import { startTestApp, type TestApp } from '../support/test-app';

const skip = ensureDebianPackage('skopeo');
reportSkip('the skopeo end-to-end test', skip);
const skipPodman = ensureDebianPackage('podman');
reportSkip('the podman end-to-end test', skipPodman);

(skip ? describe.skip : describe)('skopeo against Strata', () => {
  let t: TestApp;
  let containers: ContainersEnv;
  let root: string;
  const skopeo = (...args: string[]): Promise<string> => containers.run('skopeo', ...args);

  beforeAll(async () => {
    t = await startTestApp();
    containers = await createContainersEnv();
    root = containers.root;
  });
  afterAll(async () => {
    expect(t.serverErrors()).toEqual([]);
    await t.close();
    await containers.close();
  });

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
    expect(await pulledDigests(pulled, layout)).toEqual({
      index: [layout.manifestDigest],
      blobs: [layout.manifestDigest, ...layout.blobDigests],
    });

    const tags = (await (await fetch(`${t.url}/v2/e2e/app/tags/list`)).json()) as { tags: string[] };
    expect(tags.tags).toEqual(['v1']);
    // What containers/image caches for root went to the test's own tree, not /var/lib/containers/cache.
    if (containers.isolated) expect(await readdir(join(root, 'var-lib-containers', 'cache'))).not.toEqual([]);
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
  let containers: ContainersEnv;
  let root: string;
  const podman = (...args: string[]): Promise<string> => containers.run('podman', ...args);

  beforeAll(async () => {
    t = await startTestApp();
    // Its own storage, so the image pulled back cannot be one the machine already had.
    containers = await createContainersEnv();
    root = containers.root;
  });
  afterAll(async () => {
    expect(t.serverErrors()).toEqual([]);
    await t.close();
    await containers.close();
  });

  it('pushes an image with podman and pulls it back with the same image id and layers', async () => {
    const layout = await buildLayout(root, 2);
    const host = t.url.replace('http://', '');
    const local = 'localhost/strata-e2e/podman:v1';
    const remote = `${host}/e2e/podman:v1`;
    const configHex = layout.blobDigests[0]!.slice('sha256:'.length);
    const store = await podman('info', '--format', '{{.Store.GraphDriverName}} {{.Store.GraphRoot}}');
    expect(store.trim()).toBe(`vfs ${join(root, 'storage')}`);
    await podman('pull', '--quiet', `oci:${layout.dir}:v1`);
    await podman('tag', configHex, local);
    await podman('push', '--quiet', '--tls-verify=false', local, `docker://${remote}`);
    const tags = (await (await fetch(`${t.url}/v2/e2e/podman/tags/list`)).json()) as { tags: string[] };
    expect(tags.tags).toEqual(['v1']);
    await podman('rmi', '--force', local, configHex);
    expect((await podman('images', '--quiet')).trim()).toBe('');
    await podman('pull', '--quiet', '--tls-verify=false', remote);
    const id = (await podman('image', 'inspect', '--format', '{{.Id}}', remote)).trim();
    expect(id).toBe(configHex);
    const head = await fetch(`${t.url}/v2/e2e/podman/manifests/v1`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    const digests = (await podman('image', 'inspect', '--format', '{{.Digest}}', remote)).trim();
    expect(digests).toBe(head.headers.get('docker-content-digest'));
  });
});
