import { readFile, readlink, realpath } from 'node:fs/promises';
import { basename, join } from 'node:path';

/** What PostgreSQL writes to `postmaster.pid` in its data directory while it runs (one field a line). */
export interface PostmasterLock {
  readonly pid: number;
  readonly dataDir: string;
  readonly port: number;
  /** `starting`, `ready`, `stopping` or `standby` (line 8); empty while the postmaster is still writing it. */
  readonly status: string;
}

export async function readPostmasterLock(dataDir: string): Promise<PostmasterLock | null> {
  let text: string;
  try {
    text = await readFile(join(dataDir, 'postmaster.pid'), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  const lines = text.split('\n');
  return {
    pid: Number(lines[0]),
    dataDir: lines[1] ?? '',
    port: Number(lines[3]),
    status: (lines[7] ?? '').trim(),
  };
}

interface ProcessStat {
  readonly state: string;
  readonly ppid: number;
  /** Clock ticks after boot: with the pid, names one process even once its pid is reused. */
  readonly startTime: string;
}

async function processStat(pid: number): Promise<ProcessStat | null> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so fields are counted after the last `)`.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return { state: fields[0] ?? '', ppid: Number(fields[1]), startTime: fields[19] ?? '' };
  } catch {
    return null;
  }
}

/** A process that is running or stopped, not one that has exited and waits to be reaped. */
export interface LiveProcess {
  readonly pid: number;
  readonly ppid: number;
  readonly startTime: string;
}

export async function liveProcess(pid: number): Promise<LiveProcess | null> {
  if (!Number.isSafeInteger(pid) || pid <= 0) return null;
  const stat = await processStat(pid);
  if (!stat || stat.state === 'Z' || stat.state === 'X') return null;
  return { pid, ppid: stat.ppid, startTime: stat.startTime };
}

/** Who holds a data directory's lock file, judged from its pid. */
export type LockHolder =
  /** No live process has that pid: the lock file is stale. */
  | { readonly kind: 'gone' }
  /** The postmaster of this data directory: a `postgres` program started with `-D <dataDir>`. */
  | { readonly kind: 'postmaster'; readonly process: LiveProcess }
  /** A PostgreSQL process that is not recognisably this directory's postmaster: never to be touched. */
  | { readonly kind: 'other-postgres'; readonly process: LiveProcess }
  /** Some other program that got the pid since (a reboot, a container restart): the lock file is stale. */
  | { readonly kind: 'unrelated'; readonly process: LiveProcess };

export async function lockHolder(pid: number, dataDir: string): Promise<LockHolder> {
  const proc = await liveProcess(pid);
  if (!proc) return { kind: 'gone' };
  let argv: string[];
  try {
    argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0');
  } catch {
    // Unreadable: it may be anything, so it is not ours to judge.
    return { kind: 'other-postgres', process: proc };
  }
  const program = argv[0] ?? '';
  const d = argv.indexOf('-D');
  // A postmaster works in its data directory: one started by hand (`pg_ctl start -D cluster`, a relative path, or
  // PGDATA) is recognised by that, whatever its arguments.
  if (
    basename(program) === 'postgres' &&
    ((d > 0 && argv[d + 1] === dataDir) || (await workingIn(pid, dataDir)))
  ) {
    return { kind: 'postmaster', process: proc };
  }
  // A backend's title reads `postgres: …`; a postmaster keeps its argv.
  if (
    basename(program) === 'postgres' ||
    program.startsWith('postgres:') ||
    /postgres|postmaster/.test(program)
  ) {
    return { kind: 'other-postgres', process: proc };
  }
  return { kind: 'unrelated', process: proc };
}

async function workingIn(pid: number, dir: string): Promise<boolean> {
  try {
    const [cwd, wanted] = await Promise.all([readlink(`/proc/${pid}/cwd`), realpath(dir)]);
    return cwd === wanted;
  } catch {
    return false;
  }
}

/** Resolves true once the process has exited (or its pid names another process), false after `timeoutMs`. */
export async function waitForExit(proc: LiveProcess, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const now = await liveProcess(proc.pid);
    if (!now || now.startTime !== proc.startTime) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
}
