import { type RawBuilder, sql } from 'kysely';
import type { Tx } from '@strata/db';
import type { AppendedEvent, EventType, NewEvent } from './event-types';

/** An event for `EventStore.insertion`, whose payload may gain keys only the statement itself knows. */
export interface StatementEvent<T extends EventType = EventType> extends NewEvent<T> {
  /** A jsonb object expression merged into the payload, such as a flag read from a sibling CTE. */
  readonly merge?: RawBuilder<unknown>;
  /**
   * The name of a sibling CTE: the event is written only when that CTE returned a row. Or a boolean expression,
   * for a statement that writes several requests' events, each under its own condition.
   */
  readonly onlyIf?: string | RawBuilder<boolean>;
}

function condition(onlyIf: StatementEvent['onlyIf']): RawBuilder<boolean> {
  if (onlyIf === undefined) return sql<boolean>`true`;
  if (typeof onlyIf === 'string') return sql<boolean>`EXISTS (SELECT 1 FROM ${sql.table(onlyIf)})`;
  return onlyIf;
}

/**
 * The only writer of `events`. It takes a transaction, never the database, so an event can only be written
 * together with the projection rows it describes: both commit or neither does. The other way in is a single
 * statement: `insertion` gives the INSERT for a data-modifying WITH, committed with its sibling changes.
 */
export class EventStore {
  async append<T extends EventType>(tx: Tx, event: NewEvent<T>): Promise<AppendedEvent> {
    const row = await tx
      .insertInto('events')
      .values({
        actor: event.meta.actor,
        type: event.type,
        repository: event.repository,
        subject: event.subject,
        payload: JSON.stringify(event.payload),
        request_id: event.meta.requestId,
        client_addr: event.meta.clientAddr,
        user_agent: event.meta.userAgent,
      })
      .returning(['seq', 'at'])
      .executeTakeFirstOrThrow();
    return { seq: row.seq, at: row.at };
  }

  /**
   * `INSERT INTO events … RETURNING seq, at, type` writing `events` in the order given, to be used as one CTE of a
   * statement that changes the projections. An event with `onlyIf` (the name of a sibling CTE) is written only
   * when that CTE returned a row, so a statement whose guard found nothing records nothing.
   */
  insertion(events: readonly StatementEvent[]): RawBuilder<AppendedEvent & { type: string }> {
    const rows = events.map(
      (e, i) =>
        sql`(${i}::int, ${e.meta.actor}::text, ${e.type}::text, ${e.repository}::text, ${e.subject}::text,
             ${JSON.stringify(e.payload)}::jsonb${e.merge ? sql` || ${e.merge}` : sql``},
             ${e.meta.requestId}::text, ${e.meta.clientAddr}::text, ${e.meta.userAgent}::text,
             ${condition(e.onlyIf)})`,
    );
    // Identity values follow the order the SELECT yields its rows in, so ORDER BY fixes the events' order.
    return sql`INSERT INTO events (actor, type, repository, subject, payload, request_id, client_addr, user_agent)
      SELECT actor, type, repository, subject, payload, request_id, client_addr, user_agent
      FROM (VALUES ${sql.join(rows)})
        AS e(ord, actor, type, repository, subject, payload, request_id, client_addr, user_agent, wanted)
      WHERE wanted
      ORDER BY ord
      RETURNING seq, at, type`;
  }
}
