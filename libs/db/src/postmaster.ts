import { type ChildProcess, spawn } from 'node:child_process';
import { rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { readOwnerPid } from './data-dir-lock';
import { EmbeddedPostgresError, HOST, type PostgresUser, TAIL_LINES } from './embedded-cluster';
import { lockHolder, type LiveProcess, readPostmasterLock, waitForExit } from './postmaster-pid';

const READY_LINE = 'database system is ready to accept connections';
/** Crash recovery replays WAL before the server accepts connections; that may take a while on a large cluster. */
const READY_TIMEOUT_MS = 120_000;
/** Fast shutdown ends sessions and writes a checkpoint; past this, immediate shutdown, then SIGKILL. */
const FAST_SHUTDOWN_MS = 30_000;
const IMMEDIATE_SHUTDOWN_MS = 10_000;

export interface PostmasterOptions {
  readonly bin: string;
  readonly dataDir: string;
  readonly port: number;
  readonly owner: PostgresUser | undefined;
  /** Settings for throwaway clusters (tests): no fsync, no full-page writes. */
  readonly fast: boolean;
  readonly log: (line: string) => void;
  /** It exited once it was up: ended by someone else (an administrator, the OOM killer, a crash). */
  readonly lost: (status: string) => void;
}

/** A postmaster this process started, as its child: spawned by the constructor, stopped by `stop`. */
export class Postmaster {
  /** Its last lines of log, the cause told when it fails to start. */
  readonly tail: string[] = [];
  private readonly child: ChildProcess;
  private readonly exited: Promise<void>;
  private readonly readyNow: Promise<void>;
  private readonly failed: Promise<never>;

  constructor(private readonly options: PostmasterOptions) {
    const settings = [
      `listen_addresses=${HOST}`,
      'max_connections=200',
      // TCP only: no socket file in /tmp to go stale after a crash.
      'unix_socket_directories=',
      ...(options.fast ? ['fsync=off', 'full_page_writes=off', 'synchronous_commit=off'] : []),
    ];
    // Detached: the postmaster leads its own process group, so a terminal's Ctrl-C does not reach it.
    const child = spawn(
      join(options.bin, 'postgres'),
      ['-D', options.dataDir, '-p', String(options.port), ...settings.flatMap((s) => ['-c', s])],
      {
        ...(options.owner ?? {}),
        detached: true,
        stdio: ['ignore', 'ignore', 'pipe'],
        env: { ...process.env, LC_MESSAGES: 'C' },
      },
    );
    this.child = child;
    // Neither the process nor its log pipe keeps this process alive; stop() is what ends the server.
    child.unref();
    (child.stderr as Socket).unref();
    this.exited = new Promise<void>((res) => child.once('exit', () => res()));
    const closed = new Promise<string>((res) =>
      child.once('close', (code, signal) => res(code === null ? `signal ${signal}` : `code ${code}`)),
    );
    let ready = false;
    this.readyNow = new Promise<void>((res) => {
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
          options.log(line);
          if (!ready && line.includes(READY_LINE)) {
            ready = true;
            res();
          }
        }
      });
    });
    this.failed = new Promise<never>((_, rej) => {
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
    child.once('exit', (code, sig) => {
      if (ready) options.lost(code === null ? `signal ${sig}` : `code ${code}`);
    });
  }

  /** Resolves once it accepts connections; rejects if it exits first or takes too long. */
  async untilReady(): Promise<void> {
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
      await Promise.race([this.readyNow, this.failed, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  kill(sig: NodeJS.Signals): void {
    this.child.kill(sig);
  }

  /** Fast shutdown, then immediate, then SIGKILL; resolves once it has exited. */
  async stop(): Promise<void> {
    const within = (ms: number): Promise<boolean> => {
      let timer: NodeJS.Timeout | undefined;
      return Promise.race([
        this.exited.then(() => true),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms))),
      ]).finally(() => clearTimeout(timer));
    };
    this.child.kill('SIGINT');
    if (await within(FAST_SHUTDOWN_MS)) return;
    this.options.log(
      `postgres did not stop within ${FAST_SHUTDOWN_MS} ms of SIGINT: immediate shutdown (SIGQUIT)`,
    );
    this.child.kill('SIGQUIT');
    if (await within(IMMEDIATE_SHUTDOWN_MS)) return;
    this.child.kill('SIGKILL');
    await this.exited;
  }

  private earlyExit(status: string): EmbeddedPostgresError {
    const said = this.tail.length ? this.tail.join(' | ') : '(it logged nothing)';
    return new EmbeddedPostgresError(`postgres exited (${status}) before accepting connections: ${said}`);
  }
}

/** Waits for a postmaster someone else started to finish starting (crash recovery may replay WAL first). */
export async function untilAdoptedReady(proc: LiveProcess, dataDir: string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    const lock = await readPostmasterLock(dataDir);
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

/**
 * A postmaster left by a process that was killed (SIGKILL, OOM) keeps the cluster's lock and port: it is
 * stopped, so this start runs with its own settings. A lock file whose pid is dead or reused is removed.
 */
export async function clearLeftover(
  dir: string,
  dataDir: string,
  log: (line: string) => void,
): Promise<void> {
  const lock = await readPostmasterLock(dataDir);
  if (!lock) return;
  const holder = await lockHolder(lock.pid, dataDir);
  switch (holder.kind) {
    case 'postmaster': {
      const ownerPid = await readOwnerPid(dir);
      if (ownerPid > 0 && holder.process.ppid === ownerPid) {
        throw new EmbeddedPostgresError(
          `it is in use by process ${ownerPid} (postgres pid ${lock.pid}, port ${lock.port}); one process per data directory on the embedded database`,
        );
      }
      log(`stopping postgres (pid ${lock.pid}) left running by a process that has exited`);
      await stopLeftover(holder.process, log);
      break;
    }
    case 'other-postgres':
      throw new EmbeddedPostgresError(
        `${join(dataDir, 'postmaster.pid')} is held by PostgreSQL process ${lock.pid}, which was not started by Strata: stop it first`,
      );
    case 'gone':
    case 'unrelated':
      break;
  }
  // The holder has exited: the lock is stale (postgres itself refuses one whose pid is alive, even if reused).
  await rm(join(dataDir, 'postmaster.pid'), { force: true });
}

/** Stops a postmaster this process did not start (it is not a child to wait for): by its pid, with escalation. */
export async function stopLeftover(proc: LiveProcess, log: (line: string) => void): Promise<void> {
  const steps: [NodeJS.Signals, number][] = [
    ['SIGINT', FAST_SHUTDOWN_MS],
    ['SIGQUIT', IMMEDIATE_SHUTDOWN_MS],
    ['SIGKILL', IMMEDIATE_SHUTDOWN_MS],
  ];
  for (const [signal, ms] of steps) {
    process.kill(proc.pid, signal);
    if (await waitForExit(proc, ms)) return;
    log(`postgres (pid ${proc.pid}) did not exit within ${ms} ms of ${signal}`);
  }
  throw new EmbeddedPostgresError(`postgres (pid ${proc.pid}) left by an earlier process does not exit`);
}

/** A signal to a process that may have exited meanwhile. */
export function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // Gone already.
  }
}
