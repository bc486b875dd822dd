import type pg from 'pg';
import type { PreparedStatements, Statement } from '@strata/db';
import { metaJson, type RequestMeta } from '@strata/events';
import type { FailureReport } from './failures';
import type { Action } from './scope';

const SQL = {
  version: { name: 'identity_version', text: 'SELECT version FROM identity_version' },
  accounts: {
    name: 'identity_accounts',
    text: `SELECT id, name, kind, password_hash, disabled_at, created_at, updated_at FROM accounts
      ORDER BY name COLLATE "C"`,
  },
  members: {
    name: 'identity_members',
    text: 'SELECT g.group_name, a.name AS account FROM group_members g JOIN accounts a ON a.id = g.account_id',
  },
  grants: {
    name: 'identity_grants',
    text: `SELECT a.name AS account, g.group_name, g.pattern, g.actions FROM grants g
      LEFT JOIN accounts a ON a.id = g.account_id ORDER BY g.id`,
  },
  tokens: {
    name: 'identity_tokens',
    text: `SELECT t.id, a.name AS account, t.secret_hash, t.scopes, t.description, t.created_at, t.expires_at,
        t.revoked_at
      FROM access_tokens t JOIN accounts a ON a.id = t.account_id ORDER BY t.created_at, t.id`,
  },
  createAccount: {
    name: 'identity_create_account',
    text: 'SELECT strata_create_account($1::text, $2::text, $3::text, $4::jsonb) AS id',
  },
  changeAccount: {
    name: 'identity_change_account',
    text: 'SELECT strata_change_account($1::text, $2::text, $3::text, $4::jsonb) AS changed',
  },
  setGrant: {
    name: 'identity_set_grant',
    text: 'SELECT strata_set_grant($1::text, $2::text, $3::text, $4::text[], $5::jsonb) AS changed',
  },
  groupMember: {
    name: 'identity_group_member',
    text: 'SELECT strata_group_member($1::text, $2::text, $3::boolean, $4::jsonb) AS changed',
  },
  createToken: {
    name: 'identity_create_token',
    text: `SELECT strata_create_token($1::uuid, $2::text, $3::bytea, $4::text[], $5::timestamptz, $6::text,
      $7::jsonb) AS created`,
  },
  revokeToken: {
    name: 'identity_revoke_token',
    text: 'SELECT strata_revoke_token($1::uuid, $2::jsonb) AS revoked',
  },
  authFailed: {
    name: 'identity_auth_failed',
    text: `SELECT strata_event($1::jsonb, 'auth.failed', NULL, $2::text, $3::jsonb)`,
  },
} satisfies Record<string, Statement>;

export type AccountKind = 'user' | 'robot';

export interface AccountRow {
  readonly id: string;
  readonly name: string;
  readonly kind: AccountKind;
  readonly password_hash: string | null;
  readonly disabled_at: Date | null;
  readonly created_at: Date;
  readonly updated_at: Date;
}

export interface GrantRow {
  readonly account: string | null;
  readonly group_name: string | null;
  readonly pattern: string;
  readonly actions: Action[];
}

export interface TokenRow {
  readonly id: string;
  readonly account: string;
  readonly secret_hash: Buffer;
  readonly scopes: string[];
  readonly description: string | null;
  readonly created_at: Date;
  readonly expires_at: Date | null;
  readonly revoked_at: Date | null;
}

export interface IdentitySnapshot {
  readonly version: string;
  readonly accounts: AccountRow[];
  readonly members: { group_name: string; account: string }[];
  readonly grants: GrantRow[];
  readonly tokens: TokenRow[];
}

/** The only reader and writer of the identity tables (migration 0011); every write is one of its functions. */
export class IdentityStore {
  constructor(
    private readonly statements: PreparedStatements,
    private readonly pool: pg.Pool,
  ) {}

  async version(): Promise<string> {
    const row = await this.statements.one<{ version: string }>(SQL.version, []);
    return row.version;
  }

  /** Everything, read in one repeatable-read transaction so the parts agree with each other and the version. */
  async snapshot(): Promise<IdentitySnapshot> {
    const client = await this.pool.connect();
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const q = async <T extends pg.QueryResultRow>(s: Statement): Promise<T[]> =>
        (await client.query<T>({ name: s.name, text: s.text })).rows;
      const [version] = await q<{ version: string }>(SQL.version);
      const accounts = await q<AccountRow>(SQL.accounts);
      const members = await q<{ group_name: string; account: string }>(SQL.members);
      const grants = await q<GrantRow>(SQL.grants);
      const tokens = await q<TokenRow>(SQL.tokens);
      await client.query('COMMIT');
      return { version: version!.version, accounts, members, grants, tokens };
    } catch (e) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw e;
    } finally {
      client.release();
    }
  }

  async createAccount(
    name: string,
    kind: AccountKind,
    passwordHash: string | null,
    meta: RequestMeta,
  ): Promise<void> {
    await this.statements.one(SQL.createAccount, [name, kind, passwordHash, metaJson(meta)]);
  }

  /** False when there is no such account, or the change changes nothing. */
  async changeAccount(
    name: string,
    change: 'password' | 'disabled' | 'enabled' | 'removed',
    passwordHash: string | null,
    meta: RequestMeta,
  ): Promise<boolean> {
    const row = await this.statements.one<{ changed: boolean }>(SQL.changeAccount, [
      name,
      change,
      passwordHash,
      metaJson(meta),
    ]);
    return row.changed;
  }

  /** Sets the subject's actions on the pattern (none: removes the grant). False: no such user, or no change. */
  async setGrant(
    subject: { kind: 'user' | 'group'; name: string },
    pattern: string,
    actions: Action[],
    meta: RequestMeta,
  ): Promise<boolean> {
    const row = await this.statements.one<{ changed: boolean }>(SQL.setGrant, [
      subject.kind,
      subject.name,
      pattern,
      actions,
      metaJson(meta),
    ]);
    return row.changed;
  }

  async groupMember(group: string, account: string, add: boolean, meta: RequestMeta): Promise<boolean> {
    const row = await this.statements.one<{ changed: boolean }>(SQL.groupMember, [
      group,
      account,
      add,
      metaJson(meta),
    ]);
    return row.changed;
  }

  /** False when there is no such account. */
  async createToken(
    token: { id: string; account: string; secretHash: Buffer; scopes: string[]; expiresAt: Date | null },
    description: string | null,
    meta: RequestMeta,
  ): Promise<boolean> {
    const row = await this.statements.one<{ created: boolean }>(SQL.createToken, [
      token.id,
      token.account,
      token.secretHash,
      token.scopes,
      token.expiresAt,
      description,
      metaJson(meta),
    ]);
    return row.created;
  }

  async revokeToken(id: string, meta: RequestMeta): Promise<boolean> {
    const row = await this.statements.one<{ revoked: boolean }>(SQL.revokeToken, [id, metaJson(meta)]);
    return row.revoked;
  }

  /** An `auth.failed` event: refused logins from one address since its last one. */
  async authFailed(report: FailureReport, meta: RequestMeta): Promise<void> {
    await this.statements.rows(SQL.authFailed, [
      metaJson(meta),
      report.accounts.length === 1 ? report.accounts[0]! : null,
      JSON.stringify({
        client_addr: report.address,
        failures: report.failures,
        refused: report.refused,
        accounts: report.accounts,
      }),
    ]);
  }
}
