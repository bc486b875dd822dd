/** Failed logins one client address may make for one account name in a window before it is told to wait. */
export const FAILURES_ALLOWED = 10;
/** ... and for all names together (password spraying from one address). */
export const ADDRESS_FAILURES_ALLOWED = 100;
export const FAILURE_WINDOW_MS = 60_000;
/** Keys tracked at most; past it the oldest are forgotten (a flood of addresses cannot exhaust memory). */
const MAX_TRACKED = 20_000;

interface Entry {
  windowStart: number;
  failures: number;
  lastRecorded: number;
  unrecorded: number;
}

/**
 * Failed logins per client address, and per address and account name: how long a client must wait (after
 * FAILURES_ALLOWED failures for one name, or ADDRESS_FAILURES_ALLOWED for any, in a window, until the window
 * ends), and when failures are due to be recorded as an event: at most once per address per window, with the
 * count since the last, so a guessing flood cannot grow the log without bound. Someone else guessing from the
 * same address (a NAT) does not lock out a user who knows their password, unless the address sprays.
 */
export class FailureTracker {
  private readonly entries = new Map<string, Entry>();

  /** Milliseconds the address must wait before it may try `username` again; 0 when it may now. */
  waitFor(address: string, username: string, now = Date.now()): number {
    return Math.max(
      this.wait(`${address}\u0000${username}`, FAILURES_ALLOWED, now),
      this.wait(address, ADDRESS_FAILURES_ALLOWED, now),
    );
  }

  /** Counts a failure; returns how many failures to record now (0: not yet, they are counted into a later one). */
  fail(address: string, username: string, now = Date.now()): number {
    this.count(`${address}\u0000${username}`, now);
    const e = this.count(address, now);
    if (now - e.lastRecorded < FAILURE_WINDOW_MS) return 0;
    const due = e.unrecorded;
    e.unrecorded = 0;
    e.lastRecorded = now;
    return due;
  }

  private wait(key: string, allowed: number, now: number): number {
    const e = this.entries.get(key);
    if (!e || now - e.windowStart >= FAILURE_WINDOW_MS || e.failures < allowed) return 0;
    return FAILURE_WINDOW_MS - (now - e.windowStart);
  }

  private count(key: string, now: number): Entry {
    let e = this.entries.get(key);
    if (!e) {
      if (this.entries.size >= MAX_TRACKED) this.entries.delete(this.entries.keys().next().value!);
      e = { windowStart: now, failures: 0, lastRecorded: -Infinity, unrecorded: 0 };
      this.entries.set(key, e);
    }
    if (now - e.windowStart >= FAILURE_WINDOW_MS) {
      e.windowStart = now;
      e.failures = 0;
    }
    e.failures++;
    e.unrecorded++;
    return e;
  }
}
