import type { Tx } from '@strata/db';
import type { AppendedEvent, EventType, NewEvent } from './event-types';

/**
 * Writes an event that stands alone, in the caller's transaction. The registry's own changes write their events
 * inside the SQL functions of migration 0009 (`strata_event`), with the projection rows they describe; this is
 * for writes outside them. It takes a transaction, never the database, so an event can only be written together
 * with what it describes: both commit or neither does.
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
}
