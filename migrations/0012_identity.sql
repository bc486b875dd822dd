-- Identity and access (issue 13): accounts (people and robots), groups, grants on repository patterns, and the
-- access tokens of robots. Like every other change, each write is one function below that updates these
-- projections and appends its event (user.created, grant.changed, token.revoked, ...) in the same transaction.
--
-- Every replica keeps these few rows in memory and reloads them when identity_version moves: a statement-level
-- trigger on each table bumps it, so a revoked token or a disabled account stops working on every replica within
-- one poll interval (see libs/identity/src/directory.ts).

CREATE TABLE accounts (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  -- No ':' (actors like system:<job> stay apart) and never 'anonymous'.
  name          text        NOT NULL UNIQUE
                CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$' AND name <> 'anonymous'),
  kind          text        NOT NULL CHECK (kind IN ('user', 'robot')),
  -- argon2id in its encoded form ($argon2id$v=19$m=...,t=...,p=...$salt$hash); null: no password login.
  password_hash text,
  disabled_at   timestamptz,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE groups (
  name       text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$'),
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE group_members (
  group_name text   NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
  account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  PRIMARY KEY (group_name, account_id)
);

-- Actions on repository names matching pattern (exact, `*` within one path segment, `**` across segments).
CREATE TABLE grants (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  account_id bigint REFERENCES accounts (id) ON DELETE CASCADE,
  group_name text   REFERENCES groups (name) ON DELETE CASCADE,
  pattern    text   NOT NULL CHECK (length(pattern) BETWEEN 1 AND 255),
  actions    text[] NOT NULL CHECK (cardinality(actions) > 0 AND actions <@ ARRAY['pull', 'push', 'delete', 'admin']),
  CHECK ((account_id IS NULL) <> (group_name IS NULL))
);
CREATE UNIQUE INDEX grants_account_pattern_idx ON grants (account_id, pattern) WHERE account_id IS NOT NULL;
CREATE UNIQUE INDEX grants_group_pattern_idx ON grants (group_name, pattern) WHERE group_name IS NOT NULL;

-- A robot's (or a person's) access token for CI: the secret is shown once; kept is its SHA-256 (a random 256-bit
-- secret needs no slow hash). Its scopes narrow what the account's grants allow.
CREATE TABLE access_tokens (
  id          uuid        PRIMARY KEY,
  account_id  bigint      NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
  secret_hash bytea       NOT NULL CHECK (octet_length(secret_hash) = 32),
  scopes      text[]      NOT NULL,
  description text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz,
  revoked_at  timestamptz
);

CREATE TABLE identity_version (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  version  bigint  NOT NULL
);
INSERT INTO identity_version VALUES (true, 1);

CREATE FUNCTION strata_identity_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE identity_version SET version = version + 1;
  RETURN NULL;
END
$$;

CREATE TRIGGER accounts_changed AFTER INSERT OR UPDATE OR DELETE ON accounts
  FOR EACH STATEMENT EXECUTE FUNCTION strata_identity_changed();
CREATE TRIGGER groups_changed AFTER INSERT OR UPDATE OR DELETE ON groups
  FOR EACH STATEMENT EXECUTE FUNCTION strata_identity_changed();
CREATE TRIGGER group_members_changed AFTER INSERT OR UPDATE OR DELETE ON group_members
  FOR EACH STATEMENT EXECUTE FUNCTION strata_identity_changed();
CREATE TRIGGER grants_changed AFTER INSERT OR UPDATE OR DELETE ON grants
  FOR EACH STATEMENT EXECUTE FUNCTION strata_identity_changed();
CREATE TRIGGER access_tokens_changed AFTER INSERT OR UPDATE OR DELETE ON access_tokens
  FOR EACH STATEMENT EXECUTE FUNCTION strata_identity_changed();

-- A new account with its user.created event. Raises unique_violation (23505) when the name is taken.
CREATE FUNCTION strata_create_account(p_name text, p_kind text, p_password_hash text, p_meta jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
  created bigint;
BEGIN
  INSERT INTO accounts (name, kind, password_hash) VALUES (p_name, p_kind, p_password_hash) RETURNING id INTO created;
  PERFORM strata_event(p_meta, 'user.created', NULL, p_name,
    jsonb_build_object('name', p_name, 'kind', p_kind, 'password', p_password_hash IS NOT NULL));
  RETURN created;
END
$$;

-- A change to an account: 'password' (p_password_hash), 'disabled', 'enabled' or 'removed', as user.<change>.
-- False when there is no such account (or nothing changes: disabling a disabled account).
CREATE FUNCTION strata_change_account(p_name text, p_change text, p_password_hash text, p_meta jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  CASE p_change
    WHEN 'password' THEN
      UPDATE accounts SET password_hash = p_password_hash, updated_at = now() WHERE name = p_name;
    WHEN 'disabled' THEN
      UPDATE accounts SET disabled_at = now(), updated_at = now() WHERE name = p_name AND disabled_at IS NULL;
    WHEN 'enabled' THEN
      UPDATE accounts SET disabled_at = NULL, updated_at = now() WHERE name = p_name AND disabled_at IS NOT NULL;
    WHEN 'removed' THEN
      DELETE FROM accounts WHERE name = p_name;
    ELSE
      RAISE EXCEPTION 'unknown account change %', p_change USING ERRCODE = '22023';
  END CASE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM strata_event(p_meta, 'user.' || CASE p_change WHEN 'password' THEN 'password_changed' ELSE p_change END,
    NULL, p_name, jsonb_build_object('name', p_name));
  RETURN true;
END
$$;

-- Sets what a subject ('user' or 'group', by name) may do on a pattern: p_actions replaces the grant, an empty
-- array removes it. A group named here is created. grant.changed records before and after. Returns false when
-- the user does not exist, or nothing changed.
CREATE FUNCTION strata_set_grant(p_subject_kind text, p_subject text, p_pattern text, p_actions text[], p_meta jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  account bigint;
  before text[];
BEGIN
  IF p_subject_kind = 'user' THEN
    SELECT id INTO account FROM accounts WHERE name = p_subject;
    IF NOT FOUND THEN
      RETURN false;
    END IF;
    SELECT actions INTO before FROM grants WHERE account_id = account AND pattern = p_pattern FOR UPDATE;
  ELSIF p_subject_kind = 'group' THEN
    INSERT INTO groups (name) VALUES (p_subject) ON CONFLICT DO NOTHING;
    SELECT actions INTO before FROM grants WHERE group_name = p_subject AND pattern = p_pattern FOR UPDATE;
  ELSE
    RAISE EXCEPTION 'unknown grant subject kind %', p_subject_kind USING ERRCODE = '22023';
  END IF;
  IF before IS NOT DISTINCT FROM (CASE WHEN cardinality(p_actions) = 0 THEN NULL ELSE p_actions END) THEN
    RETURN false;
  END IF;
  IF cardinality(p_actions) = 0 THEN
    DELETE FROM grants WHERE pattern = p_pattern
      AND (account_id = account OR (account IS NULL AND group_name = p_subject));
  ELSIF before IS NULL THEN
    INSERT INTO grants (account_id, group_name, pattern, actions)
    VALUES (account, CASE WHEN account IS NULL THEN p_subject END, p_pattern, p_actions);
  ELSE
    UPDATE grants SET actions = p_actions WHERE pattern = p_pattern
      AND (account_id = account OR (account IS NULL AND group_name = p_subject));
  END IF;
  PERFORM strata_event(p_meta, 'grant.changed', NULL, p_subject_kind || ':' || p_subject,
    jsonb_build_object('subject', p_subject_kind || ':' || p_subject, 'pattern', p_pattern,
                       'actions', to_jsonb(p_actions), 'previous', to_jsonb(coalesce(before, '{}'))));
  RETURN true;
END
$$;

-- Adds (p_add) or removes an account from a group, with group.member_added / group.member_removed. A group is
-- created on its first member. False when the account does not exist or nothing changed.
CREATE FUNCTION strata_group_member(p_group text, p_account text, p_add boolean, p_meta jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  account bigint;
BEGIN
  SELECT id INTO account FROM accounts WHERE name = p_account;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  IF p_add THEN
    INSERT INTO groups (name) VALUES (p_group) ON CONFLICT DO NOTHING;
    INSERT INTO group_members VALUES (p_group, account) ON CONFLICT DO NOTHING;
  ELSE
    DELETE FROM group_members WHERE group_name = p_group AND account_id = account;
  END IF;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM strata_event(p_meta, CASE WHEN p_add THEN 'group.member_added' ELSE 'group.member_removed' END,
    NULL, p_group, jsonb_build_object('group', p_group, 'member', p_account));
  RETURN true;
END
$$;

-- A new access token of an account, with token.created (never the secret). False when there is no such account.
CREATE FUNCTION strata_create_token(
  p_id uuid, p_account text, p_secret_hash bytea, p_scopes text[], p_expires timestamptz, p_description text,
  p_meta jsonb
) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  account bigint;
BEGIN
  SELECT id INTO account FROM accounts WHERE name = p_account;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  INSERT INTO access_tokens (id, account_id, secret_hash, scopes, expires_at, description)
  VALUES (p_id, account, p_secret_hash, p_scopes, p_expires, p_description);
  PERFORM strata_event(p_meta, 'token.created', NULL, p_id::text,
    jsonb_build_object('token', p_id, 'account', p_account, 'scopes', to_jsonb(p_scopes),
                       'expires_at', p_expires, 'description', p_description));
  RETURN true;
END
$$;

-- Revokes a token, with token.revoked. False when there is no such token or it was revoked already.
CREATE FUNCTION strata_revoke_token(p_id uuid, p_meta jsonb)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
  owner text;
BEGIN
  UPDATE access_tokens t SET revoked_at = now() FROM accounts a
  WHERE t.id = p_id AND t.revoked_at IS NULL AND a.id = t.account_id
  RETURNING a.name INTO owner;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM strata_event(p_meta, 'token.revoked', NULL, p_id::text,
    jsonb_build_object('token', p_id, 'account', owner));
  RETURN true;
END
$$;
