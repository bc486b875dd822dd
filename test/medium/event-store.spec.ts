import { randomBytes } from 'node:crypto';
import { sql } from 'kysely';
import pg from 'pg';
import type { Tx } from '@strata/db';
import { EventStore, type EventType, type NewEvent, type RequestMeta } from '@strata/events';
import { createTestDatabase, type TestDatabase } from '../support/test-database';

const meta: RequestMeta = { actor: 'anonymous', requestId: 'r1', clientAddr: '127.0.0.1', userAgent: 'jest' };

const unique = (prefix: string): string => `${prefix}-${randomBytes(6).toString('hex')}`;

function testEvent(repository: string, payload: Record<string, unknown> = {}): NewEvent<'test.event'> {
  return { type: 'test.event', repository, subject: null, payload, meta };
}

interface PgError extends Error {
  code?: string;
  constraint?: string;
}

/** The error a promise rejects with; fails the test when it resolves. */
async function rejection(p: Promise<unknown>): Promise<PgError> {
  try {
    await p;
  } catch (e) {
    return e as PgError;
  }
  throw new Error('expected a rejection');
}

describe('event store', () => {
  let t: TestDatabase;
  const store = new EventStore();

  beforeAll(async () => {
    t = await createTestDatabase();
  });
  afterAll(async () => {
    // pool.end() resolves before the server has seen every connection close, so the DROP ... WITH (FORCE) of
    // drop() may terminate one that is still idle: expected here, not an error.
    t.pool.on('error', () => undefined);
    await t.drop();
  });

  const eventCount = async (repository: string): Promise<number> =>
    (
      await sql<{ n: number }>`SELECT count(*) AS n FROM events WHERE repository = ${repository}`.execute(
        t.db,
      )
    ).rows[0]!.n;

  async function appendOne(repository: string, payload: Record<string, unknown> = {}): Promise<number> {
    return t.db
      .transaction()
      .execute(async (tx) => (await store.append(tx, testEvent(repository, payload))).seq);
  }

  describe('an event and its projection commit or roll back together', () => {
    it('commits both', async () => {
      const name = unique('commit');
      const appended = await t.db.transaction().execute(async (tx) => {
        await tx.insertInto('repositories').values({ name }).execute();
        return store.append(tx, testEvent(name, { n: 1 }));
      });
      const repo = await t.db
        .selectFrom('repositories')
        .select('name')
        .where('name', '=', name)
        .executeTakeFirst();
      expect(repo).toEqual({ name });
      const event = await t.db
        .selectFrom('events')
        .selectAll()
        .where('seq', '=', appended.seq)
        .executeTakeFirstOrThrow();
      expect(event).toMatchObject({
        seq: appended.seq,
        at: appended.at,
        actor: 'anonymous',
        type: 'test.event',
        repository: name,
        subject: null,
        payload: { n: 1 },
        request_id: 'r1',
        client_addr: '127.0.0.1',
        user_agent: 'jest',
      });
    });

    it('rolls back both when the transaction throws after the append', async () => {
      const name = unique('rollback');
      const failure = new Error('projection failed');
      await expect(
        t.db.transaction().execute(async (tx) => {
          await tx.insertInto('repositories').values({ name }).execute();
          await store.append(tx, testEvent(name));
          throw failure;
        }),
      ).rejects.toBe(failure);
      expect(await t.db.selectFrom('repositories').selectAll().where('name', '=', name).execute()).toEqual(
        [],
      );
      expect(await eventCount(name)).toBe(0);
    });

    it('rolls back the event when the projection write fails after it', async () => {
      const name = unique('conflict');
      await t.db.insertInto('repositories').values({ name }).execute();
      const err = await rejection(
        t.db.transaction().execute(async (tx) => {
          await store.append(tx, testEvent(name));
          await tx.insertInto('repositories').values({ name }).execute();
        }),
      );
      expect(err.code).toBe('23505');
      expect(await eventCount(name)).toBe(0);
    });
  });

  describe('events are append-only', () => {
    let seq: number;
    let admin: pg.Client;

    beforeAll(async () => {
      seq = await appendOne(unique('immutable'), { keep: true });
      // A plain session, as `psql` would open: no kysely, no pool.
      admin = new pg.Client({ connectionString: t.url });
      await admin.connect();
    });
    afterAll(async () => {
      await admin.end();
    });

    const unchanged = async (): Promise<void> => {
      const row = await t.db
        .selectFrom('events')
        .select(['seq', 'payload'])
        .where('seq', '=', seq)
        .executeTakeFirst();
      expect(row).toEqual({ seq, payload: { keep: true } });
    };

    it('refuses UPDATE through kysely', async () => {
      const err = await rejection(
        t.db.updateTable('events').set({ actor: 'mallory' }).where('seq', '=', seq).execute(),
      );
      expect(err.message).toBe('events are append-only: UPDATE is not allowed');
      expect(err.code).toBe('42501');
      await unchanged();
    });

    it('refuses DELETE through kysely', async () => {
      const err = await rejection(t.db.deleteFrom('events').where('seq', '=', seq).execute());
      expect(err.message).toBe('events are append-only: DELETE is not allowed');
      expect(err.code).toBe('42501');
      await unchanged();
    });

    it.each([
      ['UPDATE', `UPDATE events SET payload = '{}' WHERE seq = (SELECT max(seq) FROM events)`],
      ['UPDATE', `UPDATE events SET payload = '{}'`],
      ['DELETE', 'DELETE FROM events WHERE seq = (SELECT max(seq) FROM events)'],
      ['DELETE', 'DELETE FROM events'],
      ['TRUNCATE', 'TRUNCATE events CASCADE'],
      ['TRUNCATE', 'TRUNCATE events, tag_lifetimes'],
    ])('refuses %s in raw SQL: %s', async (op, text) => {
      const err = await rejection(admin.query(text));
      expect(err.message).toBe(`events are append-only: ${op} is not allowed`);
      expect(err.code).toBe('42501');
      await unchanged();
    });

    it('refuses a plain TRUNCATE (the foreign keys of tag_lifetimes or the trigger stop it)', async () => {
      const err = await rejection(admin.query('TRUNCATE events'));
      expect(err.code).toMatch(/^(42501|0A000)$/);
      await unchanged();
    });
  });

  describe('sequence numbers', () => {
    it('are unique across concurrent transactions and increase within each one', async () => {
      const repository = unique('concurrent');
      const transactions = 24;
      const perTransaction = 10;
      const results = await Promise.all(
        Array.from({ length: transactions }, (_, i) =>
          t.db.transaction().execute(async (tx) => {
            const seqs: number[] = [];
            for (let j = 0; j < perTransaction; j++) {
              seqs.push((await store.append(tx, testEvent(repository, { tx: i, n: j }))).seq);
            }
            return seqs;
          }),
        ),
      );
      const all = results.flat();
      expect(all.every((s) => Number.isSafeInteger(s) && s > 0)).toBe(true);
      expect(new Set(all).size).toBe(transactions * perTransaction);
      for (const seqs of results) {
        for (let j = 1; j < seqs.length; j++) expect(seqs[j]!).toBeGreaterThan(seqs[j - 1]!);
      }
      // Stored rows carry the seq each append returned, in the order they were appended.
      const rows = await t.db
        .selectFrom('events')
        .select(['seq', 'payload'])
        .where('repository', '=', repository)
        .orderBy('seq')
        .execute();
      expect(rows.map((r) => r.seq)).toEqual([...all].sort((a, b) => a - b));
      for (const [i, seqs] of results.entries()) {
        const mine = rows.filter((r) => r.payload.tx === i);
        expect(mine.map((r) => r.seq)).toEqual(seqs);
        expect(mine.map((r) => r.payload.n)).toEqual(Array.from({ length: perTransaction }, (_, j) => j));
      }
    });

    it('of a rolled-back transaction are never handed out again (gaps are possible, reuse is not)', async () => {
      const repository = unique('gap');
      let lost = 0;
      await expect(
        t.db.transaction().execute(async (tx) => {
          lost = (await store.append(tx, testEvent(repository))).seq;
          throw new Error('abandon');
        }),
      ).rejects.toThrow('abandon');
      const next = await appendOne(repository);
      expect(lost).toBeGreaterThan(0);
      expect(next).toBeGreaterThan(lost);
      expect(await t.db.selectFrom('events').select('seq').where('seq', '=', lost).execute()).toEqual([]);
    });
  });

  describe('columns filled by the database', () => {
    async function inTx<T>(fn: (tx: Tx) => Promise<T>): Promise<T> {
      return t.db.transaction().execute(fn);
    }

    it('xid is the id of the writing transaction', async () => {
      const repository = unique('xid');
      const { seqs, xid } = await inTx(async (tx) => {
        const a = await store.append(tx, testEvent(repository));
        const b = await store.append(tx, testEvent(repository));
        const row = await sql<{ xid: string }>`SELECT pg_current_xact_id()::text AS xid`.execute(tx);
        const stored = await sql<{
          xid: string;
        }>`SELECT xid::text AS xid FROM events WHERE seq = ${a.seq}`.execute(tx);
        expect(stored.rows[0]!.xid).toBe(row.rows[0]!.xid);
        return { seqs: [a.seq, b.seq], xid: row.rows[0]!.xid };
      });
      const other = await appendOne(repository);
      const rows = await sql<{ seq: number; xid: string }>`
        SELECT seq, xid::text AS xid FROM events WHERE repository = ${repository} ORDER BY seq`.execute(t.db);
      expect(rows.rows.slice(0, 2)).toEqual(seqs.map((seq) => ({ seq, xid })));
      expect(rows.rows[2]).toMatchObject({ seq: other });
      expect(rows.rows[2]!.xid).not.toBe(xid);
    });

    it('at is the transaction time, the same for every event of a transaction', async () => {
      const repository = unique('at');
      const appended = await inTx(async (tx) => {
        const a = await store.append(tx, testEvent(repository));
        await sql`SELECT pg_sleep(0.02)`.execute(tx);
        const b = await store.append(tx, testEvent(repository));
        const check = await sql<{ is_now: boolean; before_clock: boolean }>`
          SELECT bool_and(at = now()) AS is_now, bool_and(at < clock_timestamp()) AS before_clock
          FROM events WHERE seq IN (${a.seq}, ${b.seq})`.execute(tx);
        expect(check.rows[0]).toEqual({ is_now: true, before_clock: true });
        return [a, b] as const;
      });
      expect(appended[0].at).toBeInstanceOf(Date);
      expect(appended[1].at.getTime()).toBe(appended[0].at.getTime());
      const later = await inTx((tx) => store.append(tx, testEvent(repository)));
      expect(later.at.getTime()).toBeGreaterThan(appended[0].at.getTime());
    });
  });

  describe('constraints', () => {
    it.each(['[]', '"text"', '1', 'null', 'true'])(
      'refuses a payload that is not a JSON object: %s',
      async (json) => {
        const err = await rejection(
          sql`INSERT INTO events (actor, type, payload) VALUES ('anonymous', 'test.event', ${json}::jsonb)`.execute(
            t.db,
          ),
        );
        expect(err.code).toBe('23514');
        expect(err.constraint).toBe('events_payload_check');
      },
    );

    it('accepts an empty object payload and defaults a missing one to {}', async () => {
      const r = await sql<{ payload: unknown }>`
        INSERT INTO events (actor, type) VALUES ('anonymous', 'test.event') RETURNING payload`.execute(t.db);
      expect(r.rows[0]!.payload).toEqual({});
    });

    it.each([
      'Upload.started',
      'upload',
      'upload.',
      '.started',
      'upload..started',
      'upload.started!',
      'upload.Started',
      'up-load.started',
      'upload.st arted',
      '',
    ])('refuses the event type %j', async (type) => {
      const err = await rejection(
        t.db
          .transaction()
          .execute((tx) =>
            store.append(tx, { ...testEvent(unique('type')), type: type as EventType } as NewEvent),
          ),
      );
      expect(err.code).toBe('23514');
      expect(err.constraint).toBe('events_type_check');
    });

    it.each(['upload.started', 'manifest.pushed', 'a.b_c.d', 'test.event'])(
      'accepts the event type %j',
      async (type) => {
        const repository = unique('type-ok');
        const appended = await t.db
          .transaction()
          .execute((tx) =>
            store.append(tx, { ...testEvent(repository), type: type as EventType } as NewEvent),
          );
        const row = await t.db
          .selectFrom('events')
          .select('type')
          .where('seq', '=', appended.seq)
          .executeTakeFirstOrThrow();
        expect(row.type).toBe(type);
      },
    );

    it('refuses an empty actor', async () => {
      const err = await rejection(
        t.db
          .transaction()
          .execute((tx) => store.append(tx, { ...testEvent(unique('actor')), meta: { ...meta, actor: '' } })),
      );
      expect(err.code).toBe('23514');
      expect(err.constraint).toBe('events_actor_check');
    });
  });
});
