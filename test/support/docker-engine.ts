import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { open, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ensureDebianPackage } from './debian';

const execFileAsync = promisify(execFile);

/** What a Docker engine of the test's own needs; null when it can run here, or why it cannot. */
export function dockerEngineUnavailable(): string | null {
  if (process.getuid?.() !== 0) return 'dockerd and containerd need root';
  return (
    ensureDebianPackage('containerd', 'containerd') ??
    ensureDebianPackage('ctr', 'containerd') ??
    ensureDebianPackage('dockerd', 'docker.io') ??
    ensureDebianPackage('docker', 'docker.io')
  );
}

export interface DockerEngine {
  /** The temporary root holding both daemons' state, sockets, logs and the CLI's configuration. */
  readonly root: string;
  /** Runs the docker CLI against this engine; resolves with stdout, rejects with stderr. */
  docker(...args: string[]): Promise<string>;
  /** Runs ctr against this engine's containerd, in `namespace`. */
  ctr(namespace: string, ...args: string[]): Promise<string>;
  /** Stops both daemons, unmounts whatever they left mounted under `root`, and removes it. */
  stop(): Promise<void>;
}

/** Runs a client asynchronously: the registry under test serves from this same process. */
async function run(command: string, args: string[], env?: NodeJS.ProcessEnv): Promise<string> {
  try {
    const { stdout } = await execFileAsync(command, args, {
      encoding: 'utf8',
      env,
      timeout: 120_000,
      maxBuffer: 16 << 20,
    });
    return stdout;
  } catch (e) {
    const { stderr, stdout } = e as { stderr?: string; stdout?: string };
    throw new Error(`${command} ${args.join(' ')} failed: ${stderr || stdout || String(e)}`);
  }
}

/** Resolves once `probe` succeeds; rejects with the daemon's log if it exits or `ms` pass first. */
async function waitUntilUp(
  name: string,
  child: ChildProcess,
  logFile: string,
  probe: () => Promise<unknown>,
  ms = 30_000,
): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) break;
    try {
      await probe();
      return;
    } catch {
      if (Date.now() > deadline) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  const log = await readFile(logFile, 'utf8').catch(() => '');
  throw new Error(`${name} did not start: ${log.trim().split('\n').slice(-15).join('\n')}`);
}

/** Sends SIGTERM, then SIGKILL if the process is still there after `ms`. */
async function terminate(child: ChildProcess, ms = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), ms);
  await exited;
  clearTimeout(timer);
}

/** Mount points at or below `root`, deepest first (the order to unmount them in). */
async function mountsUnder(root: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((point): point is string => !!point && (point === root || point.startsWith(`${root}/`)))
    .reverse();
}

/**
 * Starts containerd and dockerd on their own sockets and state under a new temporary directory, without touching
 * the host's networking (no bridge, no iptables). `insecureRegistry`, when given, is trusted over plain HTTP with
 * dockerd's flag; `daemonConfig` is the whole of its daemon.json (nothing from the host's /etc/docker).
 */
export async function startDockerEngine(
  insecureRegistry: string | null,
  daemonConfig: Record<string, unknown> = {},
): Promise<DockerEngine> {
  // Unix socket paths are limited to 107 bytes, so the root is short and in /tmp whatever TMPDIR says.
  const root = await mkdtemp('/tmp/strata-dk-');
  const children: ChildProcess[] = [];
  // A daemon must not outlive the test run, even when jest exits without running afterAll.
  const killAll = (): void => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  };
  process.once('exit', killAll);

  const containerdSock = join(root, 'containerd.sock');
  const dockerSock = join(root, 'docker.sock');
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    DOCKER_HOST: `unix://${dockerSock}`,
    // The CLI keeps `docker manifest` lists and credentials here: nothing from the host's ~/.docker.
    DOCKER_CONFIG: join(root, 'cli'),
    DOCKER_BUILDKIT: '0',
  };
  const ctrArgs = (namespace: string): string[] => ['--address', containerdSock, '--namespace', namespace];

  const daemon = async (name: string, command: string, args: string[]): Promise<ChildProcess> => {
    const logFile = join(root, `${name}.log`);
    const log = await open(logFile, 'w');
    const child = spawn(command, args, { stdio: ['ignore', log.fd, log.fd] });
    children.push(child);
    await log.close();
    return child;
  };

  const stop = async (): Promise<void> => {
    for (const c of [...children].reverse()) await terminate(c);
    process.off('exit', killAll);
    // dockerd unmounts its overlay2 layers on a clean exit; after a SIGKILL they stay mounted.
    for (const point of await mountsUnder(root)) {
      await run('umount', [point]).catch(() => run('umount', ['-l', point]));
    }
    await rm(root, { recursive: true, force: true });
  };

  try {
    await mkdir(join(root, 'cli'));
    const config = join(root, 'containerd.toml');
    await writeFile(
      config,
      [
        'version = 2',
        `root = "${join(root, 'containerd', 'root')}"`,
        `state = "${join(root, 'containerd', 'state')}"`,
        // Kubernetes' CRI plugin would want CNI and its own sockets; nothing here needs it.
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
        '[grpc]',
        `  address = "${containerdSock}"`,
        '[ttrpc]',
        `  address = "${containerdSock}.ttrpc"`,
        '[debug]',
        '  address = ""',
        '[metrics]',
        '  address = ""',
        '',
      ].join('\n'),
    );
    const containerd = await daemon('containerd', 'containerd', ['--config', config]);
    await waitUntilUp('containerd', containerd, join(root, 'containerd.log'), () =>
      run('ctr', [...ctrArgs('default'), 'version']),
    );

    const daemonJson = join(root, 'daemon.json');
    await writeFile(daemonJson, `${JSON.stringify(daemonConfig)}\n`);
    const dockerd = await daemon('dockerd', 'dockerd', [
      '--config-file',
      daemonJson,
      '--iptables=false',
      '--ip6tables=false',
      '--bridge=none',
      ...(insecureRegistry ? ['--insecure-registry', insecureRegistry] : []),
      '--containerd',
      containerdSock,
      '--data-root',
      join(root, 'docker'),
      '--exec-root',
      join(root, 'exec'),
      '--pidfile',
      join(root, 'dockerd.pid'),
      '-H',
      `unix://${dockerSock}`,
    ]);
    await waitUntilUp('dockerd', dockerd, join(root, 'dockerd.log'), () =>
      run('docker', ['version', '--format', '{{.Server.Version}}'], env),
    );
  } catch (e) {
    await stop();
    throw e;
  }

  return {
    root,
    docker: (...args) => run('docker', args, env),
    ctr: (namespace, ...args) => run('ctr', [...ctrArgs(namespace), ...args]),
    stop,
  };
}
