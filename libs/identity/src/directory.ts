import type { Logger } from 'pino';
import type { AccountKind, IdentityStore, IdentitySnapshot, TokenRow } from './identity.store';
import { type Action, parseScopePattern, patternMatches } from './scope';

/** How often each replica asks whether identity changed: the bound on how long a revoked token still works. */
export const IDENTITY_POLL_MS = 1000;

export interface Account {
  readonly id: string;
  /** Changes with the account's credentials (password, disable, enable): tokens carry it. */
  readonly version: number;
  readonly name: string;
  readonly kind: AccountKind;
  readonly passwordHash: string | null;
  readonly disabled: boolean;
  /** Own grants and those of the account's groups. */
  readonly grants: readonly { pattern: string; actions: readonly Action[] }[];
}

export interface AccessToken {
  readonly id: string;
  readonly account: string;
  readonly secretHash: Buffer;
  readonly scopes: readonly { pattern: string; actions: readonly Action[] }[];
  readonly expiresAt: Date | null;
  readonly revoked: boolean;
}

/** Who a request acts as: an account (perhaps through one of its access tokens), or nobody. */
export type Principal =
  | { readonly kind: 'anonymous'; readonly name: 'anonymous' }
  | { readonly kind: AccountKind; readonly name: string; readonly tokenId: string | null };

export const ANONYMOUS: Principal = { kind: 'anonymous', name: 'anonymous' };

function build(s: IdentitySnapshot): { accounts: Map<string, Account>; tokens: Map<string, AccessToken> } {
  const groupGrants = new Map<string, { pattern: string; actions: Action[] }[]>();
  const own = new Map<string, { pattern: string; actions: Action[] }[]>();
  for (const g of s.grants) {
    const into = g.account !== null ? own : groupGrants;
    const key = g.account ?? g.group_name!;
    const list = into.get(key) ?? [];
    list.push({ pattern: g.pattern, actions: g.actions });
    into.set(key, list);
  }
  const groupsOf = new Map<string, string[]>();
  for (const m of s.members) groupsOf.set(m.account, [...(groupsOf.get(m.account) ?? []), m.group_name]);
  const accounts = new Map<string, Account>();
  for (const a of s.accounts) {
    const grants = [...(own.get(a.name) ?? [])];
    for (const g of groupsOf.get(a.name) ?? []) grants.push(...(groupGrants.get(g) ?? []));
    accounts.set(a.name, {
      id: String(a.id),
      version: a.updated_at.getTime(),
      name: a.name,
      kind: a.kind,
      passwordHash: a.password_hash,
      disabled: a.disabled_at !== null,
      grants,
    });
  }
  const tokens = new Map<string, AccessToken>();
  for (const t of s.tokens) tokens.set(t.id, toToken(t));
  return { accounts, tokens };
}

function toToken(t: TokenRow): AccessToken {
  return {
    id: t.id,
    account: t.account,
    secretHash: t.secret_hash,
    scopes: t.scopes.map(parseScopePattern),
    expiresAt: t.expires_at,
    revoked: t.revoked_at !== null,
  };
}

/**
 * Every replica's copy of the accounts, groups, grants and access tokens (a few rows per person), refreshed when
 * `identity_version` moves, so that checking a request costs no query. Answers "may this principal do this
 * action on this repository now", which every request asks.
 */
export class Directory {
  private accounts = new Map<string, Account>();
  private tokens = new Map<string, AccessToken>();
  private version: string | null = null;
  private timer: NodeJS.Timeout | undefined;
  private readonly decided = new Map<string, Set<Action>>();
  private failing = false;

  constructor(
    private readonly store: IdentityStore,
    private readonly anonymousPull: readonly string[],
    private readonly logger: Logger,
  ) {}

  async start(pollMs = IDENTITY_POLL_MS): Promise<void> {
    await this.reload();
    this.timer = setInterval(() => void this.poll(), pollMs);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** Reads everything again (the poll does this when the version moved). */
  async reload(): Promise<void> {
    const snapshot = await this.store.snapshot();
    const { accounts, tokens } = build(snapshot);
    this.accounts = accounts;
    this.tokens = tokens;
    this.version = snapshot.version;
    this.decided.clear();
  }

  private async poll(): Promise<void> {
    try {
      if ((await this.store.version()) !== this.version) await this.reload();
      if (this.failing) this.logger.info('identity refresh works again');
      this.failing = false;
    } catch (err) {
      // The database away: the last copy stays in force (a revocation meanwhile waits for it to come back).
      if (!this.failing) this.logger.warn({ err }, 'failed to refresh identity; keeping the last copy');
      this.failing = true;
    }
  }

  account(name: string): Account | undefined {
    return this.accounts.get(name);
  }

  token(id: string): AccessToken | undefined {
    return this.tokens.get(id);
  }

  get accountCount(): number {
    return this.accounts.size;
  }

  /**
   * Whether the principal may now do `action` on the repository: anonymous within STRATA_ANONYMOUS_PULL (pull
   * only); an enabled account by its grants and its groups'; through an access token, only within the token's
   * scopes too, and only while the token is neither revoked nor expired.
   */
  allows(principal: Principal, repository: string, action: Action): boolean {
    return this.actions(principal, repository).has(action);
  }

  /** Every action the principal may do on the repository now. */
  actions(principal: Principal, repository: string): ReadonlySet<Action> {
    const key = `${principal.kind === 'anonymous' ? '' : principal.name}\u0000${principal.kind === 'anonymous' ? '' : (principal.tokenId ?? '')}\u0000${repository}`;
    let set = this.decided.get(key);
    if (set) return set;
    set = this.decide(principal, repository);
    if (this.decided.size > 10_000) this.decided.clear();
    this.decided.set(key, set);
    return set;
  }

  /** Whether the account (or token) is still usable: exists, enabled, and the token valid. */
  active(principal: Principal, now = Date.now()): boolean {
    if (principal.kind === 'anonymous') return true;
    const account = this.accounts.get(principal.name);
    if (!account || account.disabled) return false;
    if (principal.tokenId === null) return true;
    const token = this.tokens.get(principal.tokenId);
    return (
      token !== undefined &&
      token.account === principal.name &&
      !token.revoked &&
      (token.expiresAt === null || token.expiresAt.getTime() > now)
    );
  }

  /**
   * What `allows(principal, name, 'pull')` answers, as patterns, for filtering lists in SQL: a name is pullable
   * when it matches one of `anonymous`, or one of `granted` and, through an access token, one of `scoped` too.
   */
  pullPatterns(principal: Principal): { anonymous: string[]; granted: string[]; scoped: string[] | null } {
    const anonymous = [...this.anonymousPull];
    if (principal.kind === 'anonymous' || !this.active(principal))
      return { anonymous, granted: [], scoped: null };
    const account = this.accounts.get(principal.name)!;
    const granted = account.grants.filter((g) => g.actions.includes('pull')).map((g) => g.pattern);
    if (principal.tokenId === null) return { anonymous, granted, scoped: null };
    const token = this.tokens.get(principal.tokenId)!;
    return {
      anonymous,
      granted,
      scoped: token.scopes.filter((s) => s.actions.includes('pull')).map((s) => s.pattern),
    };
  }

  /** An enabled account (not through a token) granted `admin` on `**`: the operators (metrics, later the admin API). */
  isGlobalAdmin(principal: Principal): boolean {
    if (principal.kind === 'anonymous' || principal.tokenId !== null || !this.active(principal)) return false;
    return (
      this.accounts
        .get(principal.name)
        ?.grants.some((g) => g.pattern === '**' && g.actions.includes('admin')) ?? false
    );
  }

  private decide(principal: Principal, repository: string): Set<Action> {
    const out = new Set<Action>();
    if (principal.kind === 'anonymous') {
      if (this.anonymousPull.some((p) => patternMatches(p, repository))) out.add('pull');
      return out;
    }
    // Time-dependent (expiry) answers are not cached: `active` is checked on every request instead.
    const account = this.accounts.get(principal.name);
    if (!account || account.disabled) return out;
    for (const g of account.grants)
      if (patternMatches(g.pattern, repository)) for (const a of g.actions) out.add(a);
    // What anonymous clients may do, an account may do too (through any of its tokens).
    const anonymous = this.anonymousPull.some((p) => patternMatches(p, repository));
    if (principal.tokenId !== null) {
      const token = this.tokens.get(principal.tokenId);
      const scoped = new Set<Action>();
      if (token && token.account === principal.name && !token.revoked) {
        for (const s of token.scopes)
          if (patternMatches(s.pattern, repository)) for (const a of s.actions) if (out.has(a)) scoped.add(a);
      }
      if (anonymous) scoped.add('pull');
      return scoped;
    }
    if (anonymous) out.add('pull');
    return out;
  }
}
