import { userInfo } from 'node:os';
import { PreparedStatements, sqlstate, SQLSTATE } from '@strata/db';
import type { RequestMeta } from '@strata/events';
import {
  AccountError,
  Accounts,
  type Action,
  ACTIONS,
  IdentityStore,
  inActionOrder,
  isValidAccountName,
  PasswordHasher,
  ScopeError,
} from '@strata/identity';
import type { Config } from '../config/config';
import { withDatabase } from './database';

export const IDENTITY_USAGE = `  users add <name> [--robot] [--password-stdin]   a person (password read from stdin) or a robot (tokens only)
  users passwd <name> --password-stdin           set a password
  users disable|enable|remove <name>
  users list
  groups add|remove <group> <user>               group membership (a group exists while it has members or grants)
  groups list
  grants add <user|group:name> <pattern> <actions>    e.g. grants add ci-bot 'team/**' pull,push
  grants remove <user|group:name> <pattern> [actions] (no actions: the whole grant)
  grants list
  tokens create --user <name> --scope <repository:pattern:actions> [--scope ...] [--expires 30d] [--description text]
  tokens list [--user <name>]
  tokens revoke <id>
`;

/** A mistake in the command line or a refused change: said in one line, exit status 2 (usage) or 1. */
class CommandError extends Error {
  constructor(
    message: string,
    readonly status = 1,
  ) {
    super(message);
  }
}

/** The actor of a change made from the command line: `cli:<the OS user>`. */
export function cliMeta(): RequestMeta {
  let user = 'unknown';
  try {
    user = userInfo().username;
  } catch {
    // No passwd entry for this uid (a container): the uid alone is not worth more.
  }
  return { actor: `cli:${user}`, requestId: null, clientAddr: null, userAgent: 'strata-cli' };
}

function flags(args: string[]): {
  positional: string[];
  options: Map<string, string[]>;
  switches: Set<string>;
} {
  const positional: string[] = [];
  const options = new Map<string, string[]>();
  const switches = new Set<string>();
  const valued = new Set(['--user', '--scope', '--expires', '--description']);
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (valued.has(a)) {
      const v = args[++i];
      if (v === undefined) throw new CommandError(`${a} needs a value`, 2);
      options.set(a, [...(options.get(a) ?? []), v]);
    } else if (a.startsWith('--')) switches.add(a);
    else positional.push(a);
  }
  return { positional, options, switches };
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
}

function parseActions(raw: string | undefined): Action[] {
  if (raw === undefined)
    throw new CommandError(`give the actions: a comma-separated list of ${ACTIONS.join(', ')}`, 2);
  const list = raw.split(',').map((a) => a.trim());
  const wrong = list.filter((a) => !(ACTIONS as readonly string[]).includes(a));
  if (wrong.length)
    throw new CommandError(`unknown action ${wrong.join(', ')}: actions are ${ACTIONS.join(', ')}`, 2);
  return list as Action[];
}

function parseSubject(raw: string | undefined): { kind: 'user' | 'group'; name: string } {
  if (!raw) throw new CommandError('give a user name or group:<name>', 2);
  const subject = raw.startsWith('group:')
    ? { kind: 'group' as const, name: raw.slice(6) }
    : { kind: 'user' as const, name: raw.startsWith('user:') ? raw.slice(5) : raw };
  if (!isValidAccountName(subject.name))
    throw new CommandError(`not a valid ${subject.kind} name: ${JSON.stringify(subject.name)}`, 2);
  return subject;
}

function parseExpiry(raw: string | undefined): Date | null {
  if (raw === undefined || raw === 'never') return null;
  const m = /^(\d{1,6})([hdw])$/.exec(raw);
  if (!m) throw new CommandError('--expires takes a duration like 12h, 30d or 8w, or never', 2);
  const hours = Number(m[1]) * ({ h: 1, d: 24, w: 168 } as Record<string, number>)[m[2]!]!;
  if (hours < 1 || hours > 10 * 366 * 24) throw new CommandError('--expires is between 1h and 10 years', 2);
  return new Date(Date.now() + hours * 3_600_000);
}

function table(rows: Record<string, unknown>[]): string {
  if (rows.length === 0) return '(none)\n';
  const keys = Object.keys(rows[0]!);
  const cells = rows.map((r) =>
    keys.map((k) => (r[k] === null || r[k] === undefined ? '' : String(r[k] as string))),
  );
  const widths = keys.map((k, i) => Math.max(k.length, ...cells.map((c) => c[i]!.length)));
  const line = (c: string[]): string =>
    c
      .map((v, i) => v.padEnd(widths[i]!))
      .join('  ')
      .trimEnd();
  return `${[line(keys), ...cells.map(line)].join('\n')}\n`;
}

const iso = (d: Date | null): string | null => (d ? d.toISOString().replace(/\.\d+Z$/, 'Z') : null);

async function run(
  accounts: Accounts,
  noun: string,
  verb: string | undefined,
  args: string[],
): Promise<string> {
  const meta = cliMeta();
  const { positional, options, switches } = flags(args);
  const [first, second, third] = positional;
  const need = (v: string | undefined, what: string): string => {
    if (!v) throw new CommandError(`give the ${what}`, 2);
    return v;
  };
  const changed = (ok: boolean, done: string, otherwise: string): string => {
    if (!ok) throw new CommandError(otherwise);
    return `${done}\n`;
  };
  switch (`${noun} ${verb ?? ''}`) {
    case 'users add': {
      const name = need(first, 'account name');
      const robot = switches.has('--robot');
      if (!robot && !switches.has('--password-stdin'))
        throw new CommandError('give the password on stdin: strata users add <name> --password-stdin', 2);
      await accounts.addAccount(name, robot ? 'robot' : 'user', robot ? null : await readStdin(), meta);
      return robot
        ? `created robot ${name}; give it a token: strata tokens create --user ${name} --scope 'repository:<pattern>:pull,push'\n`
        : `created user ${name}\n`;
    }
    case 'users passwd': {
      const name = need(first, 'account name');
      if (!switches.has('--password-stdin'))
        throw new CommandError('give the password on stdin: --password-stdin', 2);
      // A robot logs in with its tokens only, whose scopes narrow what it may; a password would not.
      if ((await accounts.snapshot()).accounts.some((a) => a.name === name && a.kind === 'robot'))
        throw new CommandError(`${name} is a robot: it logs in with its tokens (strata tokens create)`);
      return changed(
        await accounts.setPassword(name, await readStdin(), meta),
        `password of ${name} changed`,
        `no account ${name}`,
      );
    }
    case 'users disable':
    case 'users enable':
    case 'users remove': {
      const name = need(first, 'account name');
      const change = verb === 'disable' ? 'disabled' : verb === 'enable' ? 'enabled' : 'removed';
      return changed(
        await accounts.changeAccount(name, change, meta),
        `${name} ${change}`,
        `no account ${name}${change === 'removed' ? '' : ` (or it is ${change} already)`}`,
      );
    }
    case 'users list': {
      const s = await accounts.snapshot();
      return table(
        s.accounts.map((a) => ({
          name: a.name,
          kind: a.kind,
          status: a.disabled_at ? `disabled ${iso(a.disabled_at)}` : 'enabled',
          created: iso(a.created_at),
          groups: s.members
            .filter((m) => m.account === a.name)
            .map((m) => m.group_name)
            .join(','),
        })),
      );
    }
    case 'groups add':
    case 'groups remove': {
      const group = need(first, 'group name');
      const user = need(second, 'user name');
      const add = verb === 'add';
      return changed(
        await accounts.groupMember(group, user, add, meta),
        `${user} ${add ? 'added to' : 'removed from'} ${group}`,
        `no account ${user}, or it is ${add ? 'in' : 'not in'} ${group} already`,
      );
    }
    case 'groups list': {
      const s = await accounts.snapshot();
      const groups = new Map<string, string[]>();
      for (const m of s.members) groups.set(m.group_name, [...(groups.get(m.group_name) ?? []), m.account]);
      return table([...groups].map(([group, members]) => ({ group, members: members.join(',') })));
    }
    case 'grants add':
    case 'grants remove': {
      const subject = parseSubject(first);
      const pattern = need(second, 'repository pattern');
      const s = await accounts.snapshot();
      const current =
        s.grants.find(
          (g) =>
            g.pattern === pattern &&
            (subject.kind === 'user' ? g.account === subject.name : g.group_name === subject.name),
        )?.actions ?? [];
      const given = verb === 'add' || third !== undefined ? parseActions(third) : [...current];
      const next =
        verb === 'add' ? inActionOrder([...current, ...given]) : current.filter((a) => !given.includes(a));
      const label = `${subject.kind}:${subject.name}`;
      return changed(
        await accounts.setGrant(subject, pattern, next, meta),
        next.length ? `${label} may ${next.join(',')} on ${pattern}` : `${label} has no grant on ${pattern}`,
        subject.kind === 'user' && !s.accounts.some((a) => a.name === subject.name)
          ? `no account ${subject.name}`
          : `nothing to change for ${label} on ${pattern}`,
      );
    }
    case 'grants list': {
      const s = await accounts.snapshot();
      return table(
        s.grants.map((g) => ({
          subject: g.account !== null ? `user:${g.account}` : `group:${g.group_name}`,
          pattern: g.pattern,
          actions: g.actions.join(','),
        })),
      );
    }
    case 'tokens create': {
      const user = need(options.get('--user')?.[0], 'account: --user <name>');
      const scopes = options.get('--scope') ?? [];
      if (scopes.length === 0)
        throw new CommandError("give at least one --scope 'repository:<pattern>:<actions>'", 2);
      const created = await accounts.createToken(
        user,
        scopes,
        parseExpiry(options.get('--expires')?.[0]),
        options.get('--description')?.[0] ?? null,
        meta,
      );
      if (!created) throw new CommandError(`no account ${user}`);
      return `token ${created.id}\nsecret (shown only now; log in as ${user} with it as the password):\n${created.secret}\n`;
    }
    case 'tokens list': {
      const user = options.get('--user')?.[0];
      const s = await accounts.snapshot();
      return table(
        s.tokens
          .filter((t) => user === undefined || t.account === user)
          .map((t) => ({
            id: t.id,
            user: t.account,
            scopes: t.scopes.join(' '),
            created: iso(t.created_at),
            expires: iso(t.expires_at) ?? 'never',
            status: t.revoked_at
              ? `revoked ${iso(t.revoked_at)}`
              : t.expires_at && t.expires_at < new Date()
                ? 'expired'
                : 'valid',
            description: t.description,
          })),
      );
    }
    case 'tokens revoke': {
      const id = need(first, 'token id');
      if (!/^[0-9a-f-]{36}$/.test(id)) throw new CommandError(`not a token id: ${id}`, 2);
      return changed(
        await accounts.revokeToken(id, meta),
        `token ${id} revoked`,
        `no token ${id}, or it is revoked already`,
      );
    }
    default:
      throw new CommandError(`unknown command: ${noun} ${verb ?? ''}\n${IDENTITY_USAGE}`, 2);
  }
}

/** `strata users|groups|grants|tokens ...`, against the configured database; the exit status to leave with. */
export async function runIdentityCommand(config: Config, noun: string, args: string[]): Promise<number> {
  try {
    const out = await withDatabase(config, async (pool) => {
      const passwords = new PasswordHasher();
      try {
        return await run(
          new Accounts(new IdentityStore(new PreparedStatements(pool), pool), passwords),
          noun,
          args[0],
          args.slice(1),
        );
      } finally {
        await passwords.close();
      }
    });
    process.stdout.write(out);
    return 0;
  } catch (e) {
    if (e instanceof CommandError || e instanceof AccountError || e instanceof ScopeError) {
      process.stderr.write(`strata ${noun}: ${e.message}\n`);
      return e instanceof CommandError ? e.status : 2;
    }
    if (sqlstate(e) === SQLSTATE.uniqueViolation) {
      process.stderr.write(`strata ${noun}: that name is taken\n`);
      return 1;
    }
    process.stderr.write(`strata ${noun}: ${e instanceof Error ? e.message : String(e)}\n`);
    return 1;
  }
}
