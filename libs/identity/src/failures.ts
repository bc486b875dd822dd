/** Failed logins one client address may make for one account name in a window before it is told to wait. */
export const FAILURES_ALLOWED = 10;
/** ... and for all names together (password spraying from one address). */
export const ADDRESS_FAILURES_ALLOWED = 100;
export const FAILURE_WINDOW_MS = 60_000;
/** Keys tracked at most; past it the oldest are forgotten (a flood of addresses cannot exhaust memory). */
const MAX_TRACKED = 20_000;
/** Account names remembered per address for its next event. */
const MAX_NAMES = 10;

interface Entry {
  windowStart: number;
  /** Attempts counted against the allowance: failures, and logins being checked right now. */
  attempts: number;
}

interface Unrecorded {
  failures: number;
  refused: number;
  names: Set<string>;
  since: number;
}

/**
 * The key failed logins are counted under: an IPv4 address as it is, an IPv6 address by its /64 (one host
 * usually has a whole /64, and rotating addresses within it must not reset the count).
 */
export function clientKey(address: string | null): string {
  if (!address) return '';
  const v4 = /^(?:::ffff:)?(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(address);
  if (v4) return v4[1]!;
  if (!address.includes(':')) return address;
  const [head = '', tail = ''] = address.split('%')[0]!.split('::');
  const left = head ? head.split(':') : [];
  const right = address.includes('::') && tail ? tail.split(':') : [];
  const groups = address.includes('::')
    ? [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right]
    : left;
  return `${groups
    .slice(0, 4)
    .map((g) => g.replace(/^0+(?=.)/, '').toLowerCase())
    .join(':')}::/64`;
}

/** What an `auth.failed` event says about one client address. */
export interface FailureReport {
  readonly address: string;
  /** Logins checked and refused (wrong name or password). */
  readonly failures: number;
  /** Logins not even checked: the address had to wait (429). */
  readonly refused: number;
  /** Some of the account names tried (at most MAX_NAMES). */
  readonly accounts: string[];
}

/**
 * Failed logins per client address, and per address and account name. An attempt is counted when it starts (so
 * concurrent guesses cannot all slip under the allowance while they are being checked) and refunded when it
 * succeeds; past FAILURES_ALLOWED for one name, or ADDRESS_FAILURES_ALLOWED for any, in a window, the address
 * waits until the window ends. Someone guessing from the same address (a NAT) does not lock out a user who knows
 * their password, unless the address sprays. Failures and refusals are reported at most once per address per
 * window, with their counts, so a guessing flood cannot grow the log without bound.
 */
export class FailureTracker {
  private readonly entries = new Map<string, Entry>();
  private readonly unrecorded = new Map<string, Unrecorded>();
  private readonly lastReported = new Map<string, number>();

  /**
   * Starts an attempt: 0 when it may go ahead (it is then counted until `succeeded` refunds it), else the
   * milliseconds the address must wait (the refusal is counted for the report).
   */
  begin(address: string, username: string, now = Date.now()): number {
    const nameKey = `${address}\u0000${username}`;
    const wait = Math.max(
      this.wait(nameKey, FAILURES_ALLOWED, now),
      this.wait(address, ADDRESS_FAILURES_ALLOWED, now),
    );
    if (wait > 0) {
      this.note(address, username, now).refused++;
      return wait;
    }
    this.entry(nameKey, now).attempts++;
    this.entry(address, now).attempts++;
    return 0;
  }

  /** The attempt was right: it does not count against the address. */
  succeeded(address: string, username: string): void {
    for (const key of [`${address}\u0000${username}`, address]) {
      const e = this.entries.get(key);
      if (e && e.attempts > 0) e.attempts--;
    }
  }

  /** The attempt was wrong: it stays counted, and goes into the address's next report. */
  failed(address: string, username: string, now = Date.now()): void {
    this.note(address, username, now).failures++;
  }

  /** Reports due: addresses with unreported failures whose last report is a window old (or that never had one). */
  due(now = Date.now()): FailureReport[] {
    const out: FailureReport[] = [];
    for (const [address, u] of this.unrecorded) {
      if (now - (this.lastReported.get(address) ?? -Infinity) < FAILURE_WINDOW_MS) continue;
      out.push({ address, failures: u.failures, refused: u.refused, accounts: [...u.names] });
      this.unrecorded.delete(address);
      this.lastReported.set(address, now);
    }
    for (const [address, at] of this.lastReported)
      if (now - at >= FAILURE_WINDOW_MS && !this.unrecorded.has(address)) this.lastReported.delete(address);
    return out;
  }

  private note(address: string, username: string, now: number): Unrecorded {
    let u = this.unrecorded.get(address);
    if (!u) {
      if (this.unrecorded.size >= MAX_TRACKED) this.unrecorded.delete(this.unrecorded.keys().next().value!);
      u = { failures: 0, refused: 0, names: new Set(), since: now };
      this.unrecorded.set(address, u);
    }
    if (u.names.size < MAX_NAMES && username.length <= 128) u.names.add(username);
    return u;
  }

  private wait(key: string, allowed: number, now: number): number {
    const e = this.entries.get(key);
    if (!e || now - e.windowStart >= FAILURE_WINDOW_MS || e.attempts < allowed) return 0;
    return FAILURE_WINDOW_MS - (now - e.windowStart);
  }

  private entry(key: string, now: number): Entry {
    let e = this.entries.get(key);
    if (!e) {
      if (this.entries.size >= MAX_TRACKED) this.entries.delete(this.entries.keys().next().value!);
      e = { windowStart: now, attempts: 0 };
      this.entries.set(key, e);
    }
    if (now - e.windowStart >= FAILURE_WINDOW_MS) {
      e.windowStart = now;
      e.attempts = 0;
    }
    return e;
  }
}
