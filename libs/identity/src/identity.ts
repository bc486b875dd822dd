import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import type pg from 'pg';
import type { Logger } from 'pino';
import type { PreparedStatements } from '@strata/db';
import type { RequestMeta } from '@strata/events';
import { RegistryError } from '@strata/oci';
import { type Account, ANONYMOUS, Directory, type Principal } from './directory';
import { clientKey, FailureTracker } from './failures';
import { Accounts, secretTokenId } from './accounts';
import { IdentityStore } from './identity.store';
import { PasswordHasher, PasswordsBusyError } from './passwords';
import type { Access, Action } from './scope';
import { loadSigningKey, type TokenBinding, type TokenClaims, TokenIssuer } from './tokens';

export interface IdentityOptions {
  readonly statements: PreparedStatements;
  readonly pool: pg.Pool;
  readonly logger: Logger;
  /** The signing key's PEM file, and whether to create it when missing. */
  readonly keyFile: string;
  readonly createKey: boolean;
  readonly issuer: string;
  readonly service: string;
  readonly tokenTtlSeconds: number;
  readonly anonymousPull: readonly string[];
  /** Remember verified name/password pairs for VERIFIED_TTL_MS (default true). */
  readonly loginCache?: boolean;
}

const MAX_PASSWORD = 1024;
/** Verified name/password pairs kept (hashed), so Basic credentials on every request cost no argon2 run. */
const VERIFIED_MAX = 1000;
const VERIFIED_TTL_MS = 5 * 60_000;
/** How often refused logins are written as `auth.failed` events (each address at most once a minute). */
const FAILURE_REPORT_MS = 5000;

const sha256 = (s: string): Buffer => createHash('sha256').update(s).digest();

/**
 * Authentication and authorization: logins (passwords with argon2id, access tokens of robots), the bearer tokens
 * of the Docker token flow, and what a principal may do. Account changes go through here too, as events.
 */
export class Identity {
  readonly directory: Directory;
  readonly accounts: Accounts;
  private readonly store: IdentityStore;
  private readonly passwords = new PasswordHasher();
  private readonly failures = new FailureTracker();
  private readonly verified = new Map<string, number>();
  /** A hash to verify against when the account does not exist, so the answer takes as long as for a real one. */
  private decoy: Promise<string> | null = null;
  private reporter: NodeJS.Timeout | undefined;

  private constructor(
    private readonly options: IdentityOptions,
    readonly tokens: TokenIssuer,
  ) {
    this.store = new IdentityStore(options.statements, options.pool);
    this.accounts = new Accounts(this.store, this.passwords);
    this.directory = new Directory(this.store, options.anonymousPull, options.logger);
  }

  static async create(options: IdentityOptions): Promise<Identity> {
    const key = await loadSigningKey(options.keyFile, options.createKey);
    const tokens = new TokenIssuer(key, {
      issuer: options.issuer,
      service: options.service,
      ttlSeconds: options.tokenTtlSeconds,
      refreshTtlSeconds: 30 * 24 * 3600,
    });
    return new Identity(options, tokens);
  }

  async start(): Promise<void> {
    await this.directory.start();
    this.reporter = setInterval(() => void this.reportFailures(), FAILURE_REPORT_MS);
    this.reporter.unref();
  }

  async close(): Promise<void> {
    clearInterval(this.reporter);
    this.directory.stop();
    await this.reportFailures(true);
    await this.passwords.close();
  }

  /**
   * The principal of a name and password (or access-token secret) given by `meta.clientAddr`. Refused logins
   * answer UNAUTHORIZED, counted per address: past the allowance, TOOMANYREQUESTS with the wait.
   */
  async login(username: string, password: string, meta: RequestMeta): Promise<Principal> {
    // A name and password verified a moment ago prove themselves: someone else guessing from the same address
    // (a NAT) does not lock out a user who knows their password.
    const remembered = this.remembered(username, password);
    if (remembered) return remembered;
    const address = clientKey(meta.clientAddr);
    const wait = this.failures.begin(address, username);
    if (wait > 0)
      throw new RegistryError('TOOMANYREQUESTS', {
        reason: 'too many failed logins from this address',
        retryAfter: Math.ceil(wait / 1000),
      });
    let principal: Principal | null;
    try {
      principal = await this.check(username, password);
    } catch (e) {
      this.failures.succeeded(address, username); // not the client's failure (too many logins at once)
      throw e;
    }
    if (principal) {
      this.failures.succeeded(address, username);
      return principal;
    }
    this.failures.failed(address, username);
    throw new RegistryError('UNAUTHORIZED', { reason: 'invalid username or password' });
  }

  /** Writes the `auth.failed` events due (the timer does this every FAILURE_REPORT_MS; `all`: every pending one). */
  async reportFailures(all = false): Promise<void> {
    for (const report of this.failures.due(all ? Infinity : Date.now())) {
      const meta: RequestMeta = {
        actor: 'anonymous',
        requestId: null,
        clientAddr: report.address || null,
        userAgent: null,
      };
      await this.store
        .authFailed(report, meta)
        .catch((err: unknown) => this.options.logger.warn({ err }, 'failed to record failed logins'));
    }
  }

  private cacheKey(username: string, password: string, account: Account): string {
    return sha256(`${username}\u0000${password}\u0000${account.passwordHash}`).toString('base64');
  }

  private remembered(username: string, password: string): Principal | null {
    const account = this.directory.account(username);
    if (!account || account.disabled || account.passwordHash === null || this.verified.size === 0)
      return null;
    const until = this.verified.get(this.cacheKey(username, password, account));
    return until !== undefined && until > Date.now() ? this.principalOf(account, null) : null;
  }

  private principalOf(account: Account, tokenId: string | null): Principal {
    return { kind: account.kind, name: account.name, tokenId };
  }

  private async check(username: string, password: string): Promise<Principal | null> {
    if (username.length > 128 || password.length > MAX_PASSWORD) return null;
    const tokenId = secretTokenId(password);
    if (tokenId !== null) {
      const token = this.directory.token(tokenId);
      const account = this.directory.account(username);
      if (!token || !account || token.account !== username) return null;
      if (!timingSafeEqual(sha256(password), token.secretHash)) return null;
      const principal = this.principalOf(account, token.id);
      return this.directory.active(principal) ? principal : null;
    }
    const account = this.directory.account(username);
    if (!account || account.disabled || account.passwordHash === null || password === '') {
      // As long as a real check, so that timing does not tell which names exist.
      await this.verifyPassword(randomUUID(), await (this.decoy ??= this.passwords.hash(randomUUID())));
      return null;
    }
    if (!(await this.verifyPassword(password, account.passwordHash))) return null;
    if (this.options.loginCache !== false) {
      if (this.verified.size >= VERIFIED_MAX) this.verified.clear();
      this.verified.set(this.cacheKey(username, password, account), Date.now() + VERIFIED_TTL_MS);
    }
    return this.principalOf(account, null);
  }

  private async verifyPassword(password: string, encoded: string): Promise<boolean> {
    try {
      return await this.passwords.verify(password, encoded);
    } catch (e) {
      if (e instanceof PasswordsBusyError)
        throw new RegistryError('TOOMANYREQUESTS', { reason: 'too many logins in progress', retryAfter: 1 });
      throw e;
    }
  }

  /** The principal and access of a bearer token, or null when it is not a valid, current token. */
  async bearer(token: string): Promise<{ principal: Principal; claims: TokenClaims } | null> {
    const claims = await this.tokens.verify(token);
    if (!claims) return null;
    if (claims.sub === 'anonymous') return { principal: ANONYMOUS, claims };
    const principal = this.current(claims);
    return principal ? { principal, claims } : null;
  }

  /**
   * The principal a token (access or refresh) names, if that is still the account it was issued to, with the
   * credentials it had: a password changed, an account disabled (or re-enabled) or removed and created again
   * since, and its tokens are void.
   */
  current(claims: {
    sub: string;
    tid: string | null;
    uid: string | null;
    ver: number | null;
  }): Principal | null {
    const account = this.directory.account(claims.sub);
    if (!account || account.id !== claims.uid || account.version !== claims.ver) return null;
    const principal = this.principalOf(account, claims.tid);
    return this.directory.active(principal) ? principal : null;
  }

  /** A token for the principal with `access`, bound to the account's identity and credentials as they are. */
  issue(principal: Principal, access: Access[]): ReturnType<TokenIssuer['issue']> {
    return this.tokens.issue(principal.name, access, this.binding(principal));
  }

  issueRefresh(principal: Principal): Promise<string> {
    return this.tokens.issueRefresh(principal.name, this.binding(principal));
  }

  private binding(principal: Principal): TokenBinding {
    if (principal.kind === 'anonymous') return { tid: null, uid: null, ver: null };
    const account = this.directory.account(principal.name);
    return { tid: principal.tokenId, uid: account?.id ?? null, ver: account?.version ?? null };
  }

  allows(principal: Principal, repository: string, action: Action): boolean {
    return this.directory.allows(principal, repository, action);
  }

  /** What of `requested` the principal gets in a token: each scope narrowed to what it may; empty ones dropped. */
  grant(principal: Principal, requested: Access[]): Access[] {
    const out: Access[] = [];
    for (const r of requested) {
      if (r.type === 'registry') {
        if (r.actions.length > 0) out.push({ type: 'registry', name: 'catalog', actions: ['*'] });
        continue;
      }
      const may = this.directory.actions(principal, r.name);
      const actions = r.actions.filter((a) => may.has(a as Action));
      const same = out.find((o) => o.type === 'repository' && o.name === r.name);
      if (same) {
        for (const a of actions) if (!same.actions.includes(a)) same.actions.push(a);
      } else if (actions.length > 0) {
        out.push({ type: 'repository', name: r.name, actions });
      }
    }
    return out;
  }

  /** The first administrator (STRATA_ADMIN_PASSWORD), see Accounts.ensureAdmin; the directory then knows it. */
  async ensureAdmin(password: string, meta: RequestMeta): Promise<boolean> {
    const created = await this.accounts.ensureAdmin(password, meta);
    if (created) await this.directory.reload();
    return created;
  }
}

export type { Account };
