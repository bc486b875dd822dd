import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ERROR_TABLE, OCI_SPEC_ERROR_CODES, RegistryError } from './errors';

describe('the OCI error table', () => {
  it('covers every error code of the OCI distribution spec under its own name', () => {
    for (const code of OCI_SPEC_ERROR_CODES) {
      expect(ERROR_TABLE[code]).toBeDefined();
      expect(ERROR_TABLE[code].code).toBe(code);
    }
    expect(OCI_SPEC_ERROR_CODES).toHaveLength(14);
  });

  it('gives every entry a 4xx or 5xx status and a message', () => {
    for (const entry of Object.values(ERROR_TABLE)) {
      expect(entry.status).toBeGreaterThanOrEqual(400);
      expect(entry.status).toBeLessThan(600);
      expect(entry.message.length).toBeGreaterThan(0);
    }
  });

  it('uses the statuses clients depend on', () => {
    expect(ERROR_TABLE.BLOB_UNKNOWN.status).toBe(404);
    expect(ERROR_TABLE.BLOB_UPLOAD_UNKNOWN.status).toBe(404);
    expect(ERROR_TABLE.MANIFEST_UNKNOWN.status).toBe(404);
    expect(ERROR_TABLE.NAME_UNKNOWN.status).toBe(404);
    expect(ERROR_TABLE.DIGEST_INVALID.status).toBe(400);
    expect(ERROR_TABLE.NAME_INVALID.status).toBe(400);
    expect(ERROR_TABLE.UNAUTHORIZED.status).toBe(401);
    expect(ERROR_TABLE.DENIED.status).toBe(403);
    expect(ERROR_TABLE.TOOMANYREQUESTS.status).toBe(429);
    expect(ERROR_TABLE.RANGE_INVALID.status).toBe(416);
  });

  it('renders the spec envelope', () => {
    const e = new RegistryError('BLOB_UNKNOWN', { digest: 'sha256:00' });
    expect(e.status).toBe(404);
    expect(e.toEnvelope()).toEqual({
      errors: [
        { code: 'BLOB_UNKNOWN', message: 'blob unknown to registry', detail: { digest: 'sha256:00' } },
      ],
    });
  });
});

describe("the README's error table", () => {
  it('lists every code with every status Strata can send it with', () => {
    const readme = readFileSync(join(__dirname, '../../../README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('## Errors'), readme.indexOf('## Layout'));
    const rows = new Set(
      [...section.matchAll(/^\| `([A-Z_]+)` +\| +(\d{3}) \|/gm)].map((m) => `${m[1]} ${m[2]}`),
    );
    const sent = new Set(Object.values(ERROR_TABLE).map((e) => `${e.code} ${e.status}`));
    expect([...sent].filter((r) => !rows.has(r))).toEqual([]);
    // And nothing listed that the table cannot send.
    expect([...rows].filter((r) => !sent.has(r))).toEqual([]);
  });
});
