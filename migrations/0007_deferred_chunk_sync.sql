-- A chunk may be accepted before its bytes are flushed to disk: the flush runs in the background, and the commit
-- waits for it (fsync of each chunk file and its directory) before the blob becomes visible. unsynced_boot is the
-- kernel boot id of the machine that wrote such a chunk, NULL for a chunk durable when it was recorded. A commit
-- on a machine with another boot id (the writer's machine crashed and restarted, or is another host) cannot know
-- the bytes survived, so it hashes them again from storage instead of trusting the digest taken as they arrived.
ALTER TABLE upload_chunks ADD COLUMN unsynced_boot text;
