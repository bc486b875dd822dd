-- The append-only event log. Every change to a projection is written with its event in one transaction.
CREATE TABLE events (
  seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at          timestamptz NOT NULL DEFAULT now(),
  xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
  actor       text        NOT NULL CHECK (actor <> ''),
  type        text        NOT NULL CHECK (type ~ '^[a-z]+(\.[a-z_]+)+$'),
  repository  text,
  subject     text,
  payload     jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(payload) = 'object'),
  request_id  text,
  client_addr text,
  user_agent  text
);

CREATE INDEX events_repository_seq_idx ON events (repository, seq);
CREATE INDEX events_type_at_idx ON events (type, at);
CREATE INDEX events_actor_at_idx ON events (actor, at);

CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP
    USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_refuse_update_delete
  BEFORE UPDATE OR DELETE ON events
  FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE TRIGGER events_refuse_truncate
  BEFORE TRUNCATE ON events
  FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
