import { createHash, randomBytes } from 'node:crypto';
import { sqlstate, SQLSTATE } from '@strata/db';
import type { RequestMeta } from '@strata/events';
import type { AccountKind, IdentityStore } from './identity.store';
import type { PasswordHasher } from './passwords';
import { type Action, ACTIONS, isValidPattern, parseScopePattern } from './scope';

/** `strata_<token id, 32 hex>_<secret, 43 base64url>`: an access token's secret, shown once. */
const SECRET_RE = /^strata_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$/;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/;
const MAX_PASSWORD = 1024;

const uuidOf = (hex: string): string =>
  `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;

/** Actions deduplicated, in the order of ACTIONS (pull, push, delete, admin), as stored and shown. */
export function inActionOrder(actions: readonly Action[]): Action[] {
  return ACTIONS.filter((a) => actions.includes(a));
}

export function isValidAccountName(name: string): boolean {
  return NAME_RE.test(name) && name !== 'anonymous';
}

/** The token id of an access token's secret; null when `password` is not one. */
export function secretTokenId(password: string): string | null {
  const m = SECRET_RE.exec(password);
  return m ? uuidOf(m[1]!) : null;
}

/** A usage error of an administrative change (bad name, empty password): told to the operator as it is. */
export class AccountError extends Error {}

/**
 * Changes to accounts, groups, grants and access tokens, each one event with its projection (the CLI's verbs, and
 * later the admin API's). Passwords are hashed here, never stored or logged in clear.
 */
export class Accounts {
  constructor(
    private readonly store: IdentityStore,
    private readonly passwords: PasswordHasher,
  ) {}
  async addAccount(
    name: string,
    kind: AccountKind,
    password: string | null,
    meta: RequestMeta,
  ): Promise<void> {
    if (!isValidAccountName(name)) throw new AccountError(`invalid account name ${JSON.stringify(name)}`);
    await this.store.createAccount(
      name,
      kind,
      password === null ? null : await this.hashPassword(password),
      meta,
    );
  }

  async setPassword(name: string, password: string, meta: RequestMeta): Promise<boolean> {
    return this.store.changeAccount(name, 'password', await this.hashPassword(password), meta);
  }

  changeAccount(
    name: string,
    change: 'disabled' | 'enabled' | 'removed',
    meta: RequestMeta,
  ): Promise<boolean> {
    return this.store.changeAccount(name, change, null, meta);
  }

  setGrant(
    subject: { kind: 'user' | 'group'; name: string },
    pattern: string,
    actions: Action[],
    meta: RequestMeta,
  ): Promise<boolean> {
    if (!isValidPattern(pattern))
      throw new AccountError(`invalid repository pattern ${JSON.stringify(pattern)}`);
    if (actions.some((a) => !ACTIONS.includes(a)))
      throw new AccountError(`actions are ${ACTIONS.join(', ')}`);
    return this.store.setGrant(subject, pattern, inActionOrder(actions), meta);
  }

  groupMember(group: string, account: string, add: boolean, meta: RequestMeta): Promise<boolean> {
    if (!isValidAccountName(group)) throw new AccountError(`invalid group name ${JSON.stringify(group)}`);
    return this.store.groupMember(group, account, add, meta);
  }

  /** A new access token: its id and its secret (shown once, never stored). Null when there is no such account. */
  async createToken(
    account: string,
    scopes: string[],
    expiresAt: Date | null,
    description: string | null,
    meta: RequestMeta,
  ): Promise<{ id: string; secret: string } | null> {
    for (const s of scopes) parseScopePattern(s);
    const hex = randomBytes(16).toString('hex');
    const secret = `strata_${hex}_${randomBytes(32).toString('base64url')}`;
    const secretHash = createHash('sha256').update(secret).digest();
    const id = uuidOf(hex);
    const created = await this.store.createToken(
      { id, account, secretHash, scopes, expiresAt },
      description,
      meta,
    );
    return created ? { id, secret } : null;
  }

  revokeToken(id: string, meta: RequestMeta): Promise<boolean> {
    return this.store.revokeToken(id, meta);
  }

  /**
   * The first administrator (STRATA_ADMIN_PASSWORD) on a database without accounts: `admin`, with every action on
   * every repository. False when accounts exist already (the password is then left as it is).
   */
  async ensureAdmin(password: string, meta: RequestMeta): Promise<boolean> {
    const snapshot = await this.store.snapshot();
    if (snapshot.accounts.length > 0) return false;
    try {
      await this.addAccount('admin', 'user', password, meta);
    } catch (e) {
      if (sqlstate(e) === SQLSTATE.uniqueViolation) return false; // another replica did it first
      throw e;
    }
    await this.setGrant({ kind: 'user', name: 'admin' }, '**', [...ACTIONS], meta);
    return true;
  }

  snapshot(): ReturnType<IdentityStore['snapshot']> {
    return this.store.snapshot();
  }

  private hashPassword(password: string): Promise<string> {
    if (password.length === 0) throw new AccountError('the password is empty');
    if (password.length > MAX_PASSWORD)
      throw new AccountError(`the password is longer than ${MAX_PASSWORD} characters`);
    return this.passwords.hash(password);
  }
}
