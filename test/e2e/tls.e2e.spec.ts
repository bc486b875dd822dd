import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { copyFile, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { Agent, request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { freePort } from '../../libs/db/src/embedded-postgres';
import {
  buildLayout,
  createContainersEnv,
  pulledDigests,
  sha256Hex,
  type ContainersEnv,
} from '../support/containers';
import { ensureDebianPackage, reportSkip } from '../support/debian';
import { MAIN } from '../support/server-process';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

const execFileAsync = promisify(execFile);
const RELOADED = 'reloaded TLS certificate';
const RELOAD_FAILED = 'failed to reload TLS certificate, still serving the old one';
const EXPOSED = /^serving plain HTTP without authentication beyond loopback/;

interface KeyPair {
  readonly cert: string;
  readonly key: string;
  readonly fingerprint: string;
}

async function openssl(cwd: string, ...args: string[]): Promise<void> {
  await execFileAsync('openssl', args, { cwd });
}

const fingerprintOf = async (certFile: string): Promise<string> =>
  new X509Certificate(await readFile(certFile)).fingerprint256;

/** A CA as an operator would make one with openssl: a P-256 key, a self-signed certificate that may sign. */
async function makeCa(dir: string): Promise<KeyPair> {
  await openssl(
    dir,
    ...['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2'],
    ...['-subj', '/CN=Strata test CA', '-keyout', 'ca.key', '-out', 'ca.crt'],
    ...['-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
  );
  return {
    cert: join(dir, 'ca.crt'),
    key: join(dir, 'ca.key'),
    fingerprint: await fingerprintOf(join(dir, 'ca.crt')),
  };
}

/** A server certificate signed by `ca` for 127.0.0.1 and localhost, as the README's TLS section makes one. */
async function issue(dir: string, ca: KeyPair, name: string): Promise<KeyPair> {
  await writeFile(
    join(dir, `${name}.ext`),
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n' +
      'extendedKeyUsage=serverAuth\n',
  );
  await openssl(
    dir,
    ...[
      'req',
      '-new',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-subj',
      '/CN=localhost',
    ],
    ...['-keyout', `${name}.key`, '-out', `${name}.csr`],
  );
  await openssl(
    dir,
    ...['x509', '-req', '-in', `${name}.csr`, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial'],
    ...['-days', '1', '-extfile', `${name}.ext`, '-out', `${name}.crt`],
  );
  const cert = join(dir, `${name}.crt`);
  return { cert, key: join(dir, `${name}.key`), fingerprint: await fingerprintOf(cert) };
}

type Line = Record<string, unknown>;

interface Server {
  readonly port: number;
  readonly child: ChildProcess;
  readonly lines: Line[];
  readonly stderr: string[];
  readonly exited: Promise<number | string>;
  /** Resolves with the first line, already written or still to come, that `match` accepts. */
  line(match: (l: Line) => boolean): Promise<Line>;
  stop(): Promise<number | string>;
}

/**
 * The built registry as its own process (server-process.ts probes over plain HTTP): ready once it logs that it
 * listens, which it does after any start-up warning.
 */
async function start(env: Record<string, string>): Promise<Server> {
  const port = await freePort();
  const child = spawn(MAIN, ['serve'], {
    env: {
      PATH: process.env.PATH ?? '',
      HOST: '127.0.0.1',
      PORT: String(port),
      STRATA_JOBS: 'false',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Line[] = [];
  const stderr: string[] = [];
  const events = new EventEmitter();
  let buf = '';
  child.stdout.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const text = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (!text.trim()) continue;
      const parsed = JSON.parse(text) as Line;
      lines.push(parsed);
      events.emit('line', parsed);
    }
  });
  child.stderr.on('data', (d: Buffer) => stderr.push(d.toString('utf8')));
  const exited = new Promise<number | string>((res) =>
    child.once('exit', (code, signal) => res(code ?? signal ?? -1)),
  );
  const line = (match: (l: Line) => boolean): Promise<Line> =>
    new Promise((resolve, reject) => {
      const seen = lines.find(match);
      if (seen) return resolve(seen);
      const onLine = (l: Line): void => {
        if (!match(l)) return;
        events.off('line', onLine);
        resolve(l);
      };
      events.on('line', onLine);
      void exited.then((code) => {
        events.off('line', onLine);
        reject(new Error(`server exited (${String(code)}) first: ${stderr.join('')}`));
      });
    });
  const listening = line((l) => l.msg === 'strata listening');
  const deadline = setTimeout(() => child.kill('SIGKILL'), 60_000);
  try {
    await listening;
  } finally {
    clearTimeout(deadline);
  }
  return {
    port,
    child,
    lines,
    stderr,
    exited,
    line,
    stop: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
  /** The certificate the server presented on the connection that carried this request. */
  readonly fingerprint: string;
  /** Whether the request went on a connection an earlier request had opened. */
  readonly reused: boolean;
}

function get(port: number, path: string, options: { ca: Buffer; agent?: Agent }): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, ca: options.ca, agent: options.agent ?? false });
    req.on('response', (res) => {
      const socket = res.socket as TLSSocket;
      const fingerprint = socket.getPeerCertificate().fingerprint256;
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body,
          fingerprint,
          reused: req.reusedSocket,
        }),
      );
    });
    req.on('error', reject);
    req.end();
  });
}

/** The certificate a new TLS connection is served, verified against `ca`. */
function peerFingerprint(port: number, ca: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, ca }, () => {
      const fingerprint = socket.getPeerCertificate().fingerprint256;
      socket.end();
      resolve(fingerprint);
    });
    socket.on('error', reject);
  });
}

/** Replaces a file the way certificate tooling does: written beside it, then renamed over it. */
async function replace(path: string, from: string): Promise<void> {
  await copyFile(from, `${path}.new`);
  await rename(`${path}.new`, path);
}

const errorsOf = (server: Server): Line[] =>
  server.lines.filter(
    (l) => l.level === 'error' || l.level === 'fatal' || (typeof l.status === 'number' && l.status >= 500),
  );

describe('Strata over HTTPS', () => {
  let dir: string;
  let ca: KeyPair;
  let caPem: Buffer;
  let a: KeyPair;
  let b: KeyPair;
  let live: { cert: string; key: string };
  let database: TestDatabase;
  let dataDir: string;
  let server: Server;
  /** The error lines this file causes on purpose; any other is a bug. */
  const causedErrors: string[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'strata-tls-'));
    ca = await makeCa(dir);
    caPem = await readFile(ca.cert);
    a = await issue(dir, ca, 'a');
    b = await issue(dir, ca, 'b');
    live = { cert: join(dir, 'live.crt'), key: join(dir, 'live.key') };
    await copyFile(a.cert, live.cert);
    await copyFile(a.key, live.key);
    database = await createTestDatabase();
    dataDir = await mkdtemp(join(tmpdir(), 'strata-tls-data-'));
    server = await start({
      DATABASE_URL: database.url,
      STRATA_DATA_DIR: dataDir,
      STRATA_TLS_CERT: live.cert,
      STRATA_TLS_KEY: live.key,
    });
  });
  afterAll(async () => {
    try {
      if (server) {
        expect(await server.stop()).toBe(0);
        expect(errorsOf(server).map((l) => l.msg)).toEqual(causedErrors);
      }
    } finally {
      if (server) await server.stop();
      await database?.drop();
      await rm(dataDir, { recursive: true, force: true });
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('answers the API and the health endpoints over HTTPS with the configured certificate', async () => {
    for (const path of ['/v2/', '/healthz', '/readyz']) {
      const r = await get(server.port, path, { ca: caPem });
      expect([path, r.status]).toEqual([path, 200]);
      expect(r.fingerprint).toBe(a.fingerprint);
    }
    // Bound to loopback: nothing to warn about.
    expect(server.lines.filter((l) => EXPOSED.test(String(l.msg)))).toEqual([]);
  });

  describe('clients that verify the certificate', () => {
    const skipSkopeo = ensureDebianPackage('skopeo');
    reportSkip('skopeo over HTTPS', skipSkopeo);
    const skipPodman = ensureDebianPackage('podman');
    reportSkip('podman over HTTPS', skipPodman);
    let containers: ContainersEnv;
    let host: string;

    beforeAll(async () => {
      containers = await createContainersEnv();
      host = `127.0.0.1:${server.port}`;
    });
    afterAll(() => containers?.close());

    (skipSkopeo ? it.skip : it)(
      'skopeo refuses the server until it trusts the CA, then pushes and pulls with every digest the same',
      async () => {
        const skopeo = (...args: string[]): Promise<string> => containers.run('skopeo', ...args);
        const layout = await buildLayout(join(containers.root, 'skopeo'), 2);
        await expect(skopeo('inspect', '--raw', `docker://${host}/tls/app:v1`)).rejects.toThrow(
          /x509: certificate signed by unknown authority/,
        );
        await containers.trust(host, caPem);
        await skopeo(
          'copy',
          '--quiet',
          '--preserve-digests',
          `oci:${layout.dir}:v1`,
          `docker://${host}/tls/app:v1`,
        );
        const raw = await skopeo('inspect', '--raw', `docker://${host}/tls/app:v1`);
        expect(`sha256:${sha256Hex(Buffer.from(raw))}`).toBe(layout.manifestDigest);
        const pulled = join(containers.root, 'skopeo-pulled');
        await skopeo(
          'copy',
          '--quiet',
          '--preserve-digests',
          `docker://${host}/tls/app:v1`,
          `oci:${pulled}:v1`,
        );
        expect(await pulledDigests(pulled, layout)).toEqual({
          index: [layout.manifestDigest],
          blobs: [layout.manifestDigest, ...layout.blobDigests],
        });
      },
    );

    (skipPodman ? it.skip : it)(
      'podman pushes and pulls back the same image id and manifest digest',
      async () => {
        const podman = (...args: string[]): Promise<string> => containers.run('podman', ...args);
        await containers.trust(host, caPem);
        const layout = await buildLayout(join(containers.root, 'podman'), 2);
        const configHex = layout.blobDigests[0]!.slice('sha256:'.length);
        const local = 'localhost/strata-tls/podman:v1';
        const remote = `${host}/tls/podman:v1`;
        await podman('pull', '--quiet', `oci:${layout.dir}:v1`);
        await podman('tag', configHex, local);
        await podman('push', '--quiet', local, `docker://${remote}`);
        await podman('rmi', '--force', local, configHex);
        expect((await podman('images', '--quiet')).trim()).toBe('');
        await podman('pull', '--quiet', remote);
        expect((await podman('image', 'inspect', '--format', '{{.Id}}', remote)).trim()).toBe(configHex);
        const manifest = await get(server.port, '/v2/tls/podman/manifests/v1', { ca: caPem });
        expect(manifest.status).toBe(200);
        expect(manifest.headers['docker-content-digest']).toBe(
          `sha256:${sha256Hex(Buffer.from(manifest.body))}`,
        );
        const digest = (await podman('image', 'inspect', '--format', '{{.Digest}}', remote)).trim();
        expect(digest).toBe(manifest.headers['docker-content-digest']);
      },
    );
  });

  it('serves a certificate swapped on disk to the next connection after SIGHUP, and keeps open ones', async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1 });
    try {
      const before = await get(server.port, '/v2/', { ca: caPem, agent });
      expect([before.status, before.fingerprint]).toEqual([200, a.fingerprint]);
      expect(await peerFingerprint(server.port, caPem)).toBe(a.fingerprint);

      await replace(live.key, b.key);
      await replace(live.cert, b.cert);
      const reloaded = server.line((l) => l.msg === RELOADED);
      server.child.kill('SIGHUP');
      expect(await reloaded).toMatchObject({ level: 'info', fingerprint256: b.fingerprint });

      expect(await peerFingerprint(server.port, caPem)).toBe(b.fingerprint);
      const after = await get(server.port, '/v2/', { ca: caPem, agent });
      expect(after).toMatchObject({ status: 200, reused: true, fingerprint: a.fingerprint });
    } finally {
      agent.destroy();
    }
  });

  it('keeps serving the certificate in use when a reload fails, logging one error for each', async () => {
    const serving = await peerFingerprint(server.port, caPem);
    const failures = (): Line[] => server.lines.filter((l) => l.msg === RELOAD_FAILED);

    await writeFile(live.key, 'garbage\n');
    server.child.kill('SIGHUP');
    causedErrors.push(RELOAD_FAILED);
    expect(await server.line((l) => l.msg === RELOAD_FAILED)).toMatchObject({
      level: 'error',
      file: live.key,
    });
    expect(await peerFingerprint(server.port, caPem)).toBe(serving);

    // A key that parses but belongs to another certificate.
    await replace(live.key, a.key);
    server.child.kill('SIGHUP');
    causedErrors.push(RELOAD_FAILED);
    await server.line(() => failures().length === 2);
    expect(failures()[1]).toMatchObject({ level: 'error', file: live.key });
    expect(await peerFingerprint(server.port, caPem)).toBe(serving);
    expect((await get(server.port, '/readyz', { ca: caPem })).status).toBe(200);
    expect(server.child.exitCode).toBeNull();

    // Still listening for the next, good one.
    await replace(live.key, b.key);
    const reloads = server.lines.filter((l) => l.msg === RELOADED).length;
    server.child.kill('SIGHUP');
    await server.line(() => server.lines.filter((l) => l.msg === RELOADED).length === reloads + 1);
    expect(failures()).toHaveLength(2);
  });

  it('refuses to start with a certificate and no key, or a key that is not the certificate’s', async () => {
    const run = async (
      command: string,
      env: Record<string, string>,
    ): Promise<{ code: number; stderr: string }> =>
      execFileAsync(MAIN, [command], {
        env: { PATH: process.env.PATH ?? '', ...env },
        encoding: 'utf8',
      }).then(
        () => ({ code: 0, stderr: '' }),
        (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
      );
    for (const command of ['verify-config', 'serve']) {
      const r = await run(command, { DATABASE_URL: database.url, STRATA_TLS_CERT: a.cert });
      expect([command, r.code]).toEqual([command, 2]);
      expect(r.stderr.trim().split('\n')).toEqual([expect.stringContaining('STRATA_TLS_KEY')]);
    }
    const mismatch = await run('verify-config', { STRATA_TLS_CERT: a.cert, STRATA_TLS_KEY: b.key });
    expect(mismatch.code).toBe(2);
    expect(mismatch.stderr.trim().split('\n')).toEqual([expect.stringContaining('STRATA_TLS_KEY')]);
    expect((await run('verify-config', { STRATA_TLS_CERT: a.cert, STRATA_TLS_KEY: a.key })).code).toBe(0);
  });

  it('warns once at start when listening beyond loopback with neither TLS nor authentication', async () => {
    const env = { DATABASE_URL: database.url, STRATA_DATA_DIR: dataDir, HOST: '0.0.0.0' };
    const plain = await start(env);
    try {
      expect(plain.lines.filter((l) => EXPOSED.test(String(l.msg)))).toEqual([
        expect.objectContaining({ level: 'warn', host: '0.0.0.0' }),
      ]);
      expect(errorsOf(plain)).toEqual([]);
    } finally {
      expect(await plain.stop()).toBe(0);
    }
    const secure = await start({ ...env, STRATA_TLS_CERT: a.cert, STRATA_TLS_KEY: a.key });
    try {
      expect(secure.lines.filter((l) => EXPOSED.test(String(l.msg)))).toEqual([]);
      expect((await get(secure.port, '/v2/', { ca: caPem })).status).toBe(200);
      expect(errorsOf(secure)).toEqual([]);
    } finally {
      expect(await secure.stop()).toBe(0);
    }
  });
});
