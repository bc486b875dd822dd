import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/**
 * A private world for skopeo, podman and buildah: their own storage, engine, registries, signature policy, auth
 * file and TLS trust, all under one temp directory, so a test neither reads nor changes the machine's images or
 * settings. The tree:
 *
 *   <root>/
 *     storage.conf            CONTAINERS_STORAGE_CONF: vfs, graphroot and runroot below
 *     containers.conf         CONTAINERS_CONF: cgroupfs, file events and locks, every engine directory below
 *     registries.conf         CONTAINERS_REGISTRIES_CONF: no search registries, no mirrors
 *     auth.json               REGISTRY_AUTH_FILE
 *     var-lib-containers/     seen by the tools as /var/lib/containers (see `run`)
 *     storage/ run/           images and their per-boot state
 *     libpod/ tmp/ networks/  podman's database, per-boot files, network configs
 *     home/                   HOME, read by containers/image as root too:
 *       .config/containers/
 *         policy.json         accept anything (the system's file is not read)
 *         registries.d/       no signature lookaside
 *         certs.d/<host:port>/ca.crt   the CAs a test trusts (see `trust`)
 *
 * The name is lowercase hex: podman names an image it imports after its path, and image names are lowercase.
 */
export interface ContainersEnv {
  readonly root: string;
  /** The whole environment the tools run with (PATH and the variables above, nothing else of this process). */
  readonly env: Record<string, string>;
  /** Whether the tools run with `<root>/var-lib-containers` in place of /var/lib/containers (see `run`). */
  readonly isolated: boolean;
  /** Trusts `caPem` for a registry at `hostPort`, as `/etc/containers/certs.d/<host:port>/ca.crt` would. */
  trust(hostPort: string, caPem: string | Buffer): Promise<void>;
  /**
   * Runs skopeo, podman or buildah asynchronously (never blocking: a registry under test may share this process),
   * in a mount namespace where /var/lib/containers is `<root>/var-lib-containers` when unshare works here.
   */
  run(tool: 'skopeo' | 'podman' | 'buildah', ...args: string[]): Promise<string>;
  close(): Promise<void>;
}

export async function createContainersEnv(): Promise<ContainersEnv> {
  const root = join(tmpdir(), `strata-containers-${randomBytes(6).toString('hex')}`);
  const home = join(root, 'home');
  const userConfig = join(home, '.config', 'containers');
  for (const dir of ['storage', 'run', 'libpod', 'tmp', 'networks'].map((d) => join(root, d)))
    await mkdir(dir, { recursive: true });
  await mkdir(join(userConfig, 'registries.d'), { recursive: true });
  const p = (name: string): string => JSON.stringify(join(root, name));
  await writeFile(
    join(root, 'storage.conf'),
    `[storage]\ndriver = "vfs"\ngraphroot = ${p('storage')}\nrunroot = ${p('run')}\n`,
  );
  await writeFile(
    join(root, 'containers.conf'),
    [
      '[containers]',
      'log_driver = "k8s-file"',
      '[engine]',
      'cgroup_manager = "cgroupfs"',
      'events_logger = "file"',
      `events_logfile_path = ${p('events.log')}`,
      // File locks under tmp_dir instead of the machine-wide shared-memory segment the system's podman uses.
      'lock_type = "file"',
      `tmp_dir = ${p('tmp')}`,
      `static_dir = ${p('libpod')}`,
      `volume_path = ${p('volumes')}`,
      `image_copy_tmp_dir = ${p('tmp')}`,
      '[network]',
      `network_config_dir = ${p('networks')}`,
      '',
    ].join('\n'),
  );
  await writeFile(join(root, 'registries.conf'), 'unqualified-search-registries = []\n');
  await writeFile(join(root, 'auth.json'), '{"auths":{}}\n');
  await writeFile(
    join(userConfig, 'policy.json'),
    JSON.stringify({ default: [{ type: 'insecureAcceptAnything' }] }),
  );
  const env = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: home,
    XDG_CONFIG_HOME: join(home, '.config'),
    TMPDIR: join(root, 'tmp'),
    CONTAINERS_STORAGE_CONF: join(root, 'storage.conf'),
    CONTAINERS_CONF: join(root, 'containers.conf'),
    CONTAINERS_REGISTRIES_CONF: join(root, 'registries.conf'),
    REGISTRY_AUTH_FILE: join(root, 'auth.json'),
  };
  // What containers/image keeps at a fixed path for root whatever the configuration (its blob-info cache under
  // /var/lib/containers/cache, written by skopeo) is hidden behind an empty directory of ours, in a mount
  // namespace of the tool's own, when the machine lets us make one.
  const varLib = join(root, 'var-lib-containers');
  await mkdir(varLib);
  const isolated = await execFileAsync('unshare', [
    '--mount',
    '--propagation',
    'private',
    ...bind(varLib, 'true'),
  ])
    .then(() => true)
    .catch(() => false);
  return {
    root,
    env,
    isolated,
    trust: async (hostPort, caPem) => {
      const dir = join(userConfig, 'certs.d', hostPort);
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, 'ca.crt'), caPem);
    },
    run: async (tool, ...args) => {
      try {
        const [file, argv] = isolated
          ? ['unshare', ['--mount', '--propagation', 'private', ...bind(varLib, tool, ...args)]]
          : [tool, args];
        const { stdout } = await execFileAsync(file, argv, {
          env,
          encoding: 'utf8',
          timeout: 120_000,
          maxBuffer: 64 << 20,
        });
        return stdout;
      } catch (e) {
        throw new Error(
          `${tool} ${args.join(' ')} failed: ${(e as { stderr?: string }).stderr ?? String(e)}`,
        );
      }
    },
    close: () => rm(root, { recursive: true, force: true }),
  };
}

const SYSTEM_STATE = '/var/lib/containers';

/** `sh -c` arguments that bind `dir` over the system's containers state, then run the command in its place. */
function bind(dir: string, ...command: string[]): string[] {
  return [
    'sh',
    '-c',
    `[ ! -d ${SYSTEM_STATE} ] || mount --bind "$0" ${SYSTEM_STATE}; exec "$@"`,
    dir,
    ...command,
  ];
}

export interface Layout {
  readonly dir: string;
  readonly manifestDigest: string;
  /** The config's digest first, then each layer's. */
  readonly blobDigests: string[];
}

export const sha256Hex = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** An OCI image layout on disk, tagged `v1`: real tar layers of random files, a config, a manifest, index.json. */
export async function buildLayout(root: string, layers: number): Promise<Layout> {
  const dir = join(root, 'layout');
  const blobs = join(dir, 'blobs', 'sha256');
  await mkdir(blobs, { recursive: true });
  const put = async (b: Buffer): Promise<string> => {
    const h = sha256Hex(b);
    await writeFile(join(blobs, h), b);
    return `sha256:${h}`;
  };
  const layerDescs = [];
  for (let i = 0; i < layers; i++) {
    const src = join(root, `layer${i}`);
    await mkdir(src, { recursive: true });
    await writeFile(join(src, `file${i}.bin`), randomBytes(512 * 1024 * (i + 1)));
    await writeFile(join(src, `note${i}.txt`), `layer ${i}\n`);
    const { stdout: tar } = await execFileAsync('tar', ['-C', src, '-cf', '-', '.'], {
      encoding: 'buffer',
      maxBuffer: 64 << 20,
    });
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

/**
 * The digests of an OCI layout a client pulled into `dir` (its one manifest, then every blob that manifest and
 * `layout` list), each the sha256 of the bytes on disk: equal to `layout`'s when the pull was faithful.
 */
export async function pulledDigests(
  dir: string,
  layout: Layout,
): Promise<{ index: string[]; blobs: string[] }> {
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as {
    manifests: { digest: string }[];
  };
  const blobs: string[] = [];
  for (const digest of [layout.manifestDigest, ...layout.blobDigests]) {
    const bytes = await readFile(join(dir, 'blobs', 'sha256', digest.slice('sha256:'.length)));
    blobs.push(`sha256:${sha256Hex(bytes)}`);
  }
  return { index: index.manifests.map((m) => m.digest), blobs };
}
