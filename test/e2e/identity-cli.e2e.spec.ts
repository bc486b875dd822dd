import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAIN } from '../support/server-process';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

interface Run {
  readonly status: number;
  readonly stdout: string;
  readonly stderr: string;
}

describe('strata users | groups | grants | tokens', () => {
  let database: TestDatabase;
  let dataDir: string;

  /** bin/strata as an operator runs it, against the test's database, with `input` on stdin. */
  const strata = (args: string[], input = ''): Promise<Run> =>
    new Promise((resolve, reject) => {
      const child = spawn(MAIN, args, {
        env: { PATH: process.env.PATH ?? '', DATABASE_URL: database.url, STRATA_DATA_DIR: dataDir },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', reject);
      child.on('exit', (code) => resolve({ status: code ?? -1, stdout, stderr }));
      child.stdin.end(input);
    });

  beforeAll(async () => {
    database = await createTestDatabase();
    dataDir = await mkdtemp(join(tmpdir(), 'strata-cli-'));
  });
  afterAll(async () => {
    await database.drop();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('manages accounts, groups, grants and tokens as events, with clear errors', async () => {
    expect(await strata(['users', 'add', 'alice', '--password-stdin'], 'alice-pw\n')).toMatchObject({
      status: 0,
      stdout: 'created user alice\n',
    });
    const taken = await strata(['users', 'add', 'alice', '--password-stdin'], 'x');
    expect(taken.status).toBe(1);
    expect(taken.stderr).toBe('strata users: that name is taken\n');
    const noPassword = await strata(['users', 'add', 'bob']);
    expect(noPassword.status).toBe(2);
    expect(noPassword.stderr).toContain('--password-stdin');
    expect((await strata(['users', 'add', 'Bad Name', '--password-stdin'], 'x')).status).toBe(2);
    expect((await strata(['users', 'add', 'ci-bot', '--robot'])).status).toBe(0);
    const robotPassword = await strata(['users', 'passwd', 'ci-bot', '--password-stdin'], 'pw');
    expect(robotPassword.status).toBe(1);
    expect(robotPassword.stderr).toContain('is a robot');

    expect((await strata(['grants', 'add', 'alice', 'team/*', 'pull,push'])).stdout).toBe(
      'user:alice may pull,push on team/*\n',
    );
    expect((await strata(['grants', 'add', 'alice', 'team/*', 'delete'])).stdout).toBe(
      'user:alice may pull,push,delete on team/*\n',
    );
    const badAction = await strata(['grants', 'add', 'alice', 'team/*', 'fly']);
    expect(badAction.status).toBe(2);
    expect(badAction.stderr).toContain('unknown action fly');
    expect((await strata(['grants', 'add', 'alice', 'Team//x', 'pull'])).status).toBe(2);
    expect((await strata(['grants', 'remove', 'group:ghosts', 'x/**'])).status).toBe(1);
    expect((await strata(['groups', 'add', 'devs', 'alice'])).stdout).toBe('alice added to devs\n');
    expect((await strata(['grants', 'add', 'group:devs', 'dev/**', 'pull'])).status).toBe(0);
    const grants = await strata(['grants', 'list']);
    expect(grants.stdout).toMatch(/user:alice\s+team\/\*\s+pull,push,delete/);
    expect(grants.stdout).toMatch(/group:devs\s+dev\/\*\*\s+pull/);

    const created = await strata([
      'tokens',
      'create',
      '--user',
      'ci-bot',
      '--scope',
      'repository:team/**:pull,push',
      '--expires',
      '30d',
    ]);
    expect(created.status).toBe(0);
    const id = /^token ([0-9a-f-]{36})$/m.exec(created.stdout)![1]!;
    expect(created.stdout).toMatch(/^strata_[0-9a-f]{32}_[A-Za-z0-9_-]{43}$/m);
    expect((await strata(['tokens', 'create', '--user', 'ci-bot', '--scope', 'nonsense'])).status).toBe(2);
    expect(
      (
        await strata([
          'tokens',
          'create',
          '--user',
          'ci-bot',
          '--scope',
          'repository:a:pull',
          '--expires',
          '99999999d',
        ])
      ).status,
    ).toBe(2);
    expect((await strata(['tokens', 'list'])).stdout).toMatch(
      new RegExp(`${id}\\s+ci-bot\\s+repository:team/\\*\\*:pull,push`),
    );
    expect((await strata(['tokens', 'revoke', id])).stdout).toBe(`token ${id} revoked\n`);
    expect((await strata(['tokens', 'revoke', id])).status).toBe(1);
    expect((await strata(['tokens', 'list'])).stdout).toContain('revoked');

    expect((await strata(['users', 'disable', 'alice'])).stdout).toBe('alice disabled\n');
    expect((await strata(['users', 'disable', 'alice'])).status).toBe(1);
    expect((await strata(['users', 'list'])).stdout).toMatch(/alice\s+user\s+disabled/);
    expect((await strata(['users', 'remove', 'nobody'])).status).toBe(1);
    expect((await strata(['users', 'frobnicate'])).status).toBe(2);

    const events = await database.pool.query<{ type: string; actor: string }>(
      'SELECT type, actor FROM events ORDER BY seq',
    );
    expect(events.rows.map((e) => e.type)).toEqual([
      'user.created',
      'user.created',
      'grant.changed',
      'grant.changed',
      'group.member_added',
      'grant.changed',
      'token.created',
      'token.revoked',
      'user.disabled',
    ]);
    expect(new Set(events.rows.map((e) => e.actor)).size).toBe(1);
    expect(events.rows[0]!.actor).toMatch(/^cli:/);
  });
});
