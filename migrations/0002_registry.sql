-- Projections of the event log: the current state of repositories, uploads, blobs, manifests and tags.

CREATE TABLE repositories (
  id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  name       text        NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 255),
  created_at timestamptz NOT NULL DEFAULT now()
);

-- An upload session. hash_state is a hash-wasm SHA-256 state covering bytes [0, hash_offset);
-- prefix_digest, when set, is the digest of bytes [0, size) computed natively in one pass.
CREATE TABLE uploads (
  id            uuid PRIMARY KEY,
  repository_id bigint      NOT NULL REFERENCES repositories (id),
  started_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  size          bigint      NOT NULL DEFAULT 0 CHECK (size >= 0),
  hash_state    bytea,
  hash_offset   bigint      NOT NULL DEFAULT 0 CHECK (hash_offset >= 0 AND hash_offset <= size),
  prefix_digest text,
  CHECK (hash_state IS NOT NULL OR hash_offset = 0)
);

CREATE INDEX uploads_updated_at_idx ON uploads (updated_at);

-- The bytes of one accepted chunk: [offset, offset + size) of the upload, under a key never reused.
CREATE TABLE upload_chunks (
  upload_id   uuid   NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
  "offset"    bigint NOT NULL CHECK ("offset" >= 0),
  size        bigint NOT NULL CHECK (size > 0),
  storage_key text   NOT NULL UNIQUE,
  PRIMARY KEY (upload_id, "offset")
);

-- Content-addressed blobs, shared by all repositories. Visible only through repository_blobs.
CREATE TABLE blobs (
  digest      text PRIMARY KEY CHECK (digest ~ '^sha(256:[a-f0-9]{64}|512:[a-f0-9]{128})$'),
  size        bigint      NOT NULL CHECK (size >= 0),
  storage_key text        NOT NULL UNIQUE,
  created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE repository_blobs (
  repository_id bigint      NOT NULL REFERENCES repositories (id),
  digest        text        NOT NULL REFERENCES blobs (digest),
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (repository_id, digest)
);

CREATE INDEX repository_blobs_digest_idx ON repository_blobs (digest);

CREATE TABLE manifests (
  repository_id  bigint      NOT NULL REFERENCES repositories (id),
  digest         text        NOT NULL CHECK (digest ~ '^sha(256:[a-f0-9]{64}|512:[a-f0-9]{128})$'),
  media_type     text        NOT NULL,
  artifact_type  text,
  subject_digest text,
  annotations    jsonb,
  size           bigint      NOT NULL CHECK (size >= 0),
  content        bytea       NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (repository_id, digest)
);

CREATE INDEX manifests_subject_idx ON manifests (repository_id, subject_digest) WHERE subject_digest IS NOT NULL;

-- What a manifest points at: its config and layers (blobs) and, for an index, its child manifests.
CREATE TABLE manifest_references (
  repository_id bigint NOT NULL,
  parent_digest text   NOT NULL,
  child_digest  text   NOT NULL,
  kind          text   NOT NULL CHECK (kind IN ('config', 'layer', 'manifest', 'blob')),
  position      int    NOT NULL,
  size          bigint NOT NULL CHECK (size >= 0),
  PRIMARY KEY (repository_id, parent_digest, position),
  FOREIGN KEY (repository_id, parent_digest) REFERENCES manifests (repository_id, digest) ON DELETE CASCADE
);

CREATE INDEX manifest_references_child_idx ON manifest_references (child_digest);

CREATE TABLE tags (
  repository_id bigint      NOT NULL,
  name          text        NOT NULL CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$'),
  digest        text        NOT NULL,
  updated_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (repository_id, name),
  FOREIGN KEY (repository_id, digest) REFERENCES manifests (repository_id, digest)
);

-- One row per period a tag pointed at a digest: [started_at, ended_at), ended_at NULL while current.
CREATE TABLE tag_lifetimes (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  repository_id bigint      NOT NULL REFERENCES repositories (id),
  tag           text        NOT NULL,
  digest        text        NOT NULL,
  started_at    timestamptz NOT NULL,
  started_seq   bigint      NOT NULL REFERENCES events (seq),
  ended_at      timestamptz,
  ended_seq     bigint REFERENCES events (seq),
  CHECK ((ended_at IS NULL) = (ended_seq IS NULL)),
  CHECK (ended_at IS NULL OR ended_at >= started_at)
);

CREATE UNIQUE INDEX tag_lifetimes_open_idx ON tag_lifetimes (repository_id, tag) WHERE ended_at IS NULL;
CREATE INDEX tag_lifetimes_time_idx ON tag_lifetimes (repository_id, tag, started_at);
CREATE INDEX tag_lifetimes_digest_idx ON tag_lifetimes (digest);
