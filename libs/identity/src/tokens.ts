import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  randomUUID,
} from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { calculateJwkThumbprint, exportJWK, type JWK, jwtVerify, SignJWT } from 'jose';
import type { Access } from './scope';

/** Only this algorithm verifies: `alg: none`, HS256 with the public key as secret, or RS256 are all refused. */
const ALG = 'ES256';

export interface SigningKey {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  /** The key's RFC 7638 thumbprint, as `kid` in every token's header. */
  readonly kid: string;
  readonly jwk: JWK;
}

/**
 * The token signing key: the PEM file (PKCS#8, an EC P-256 key) at `file`, created there on first start when
 * `create` (the data directory's default). Replicas behind one name must share it (STRATA_TOKEN_KEY).
 */
export async function loadSigningKey(file: string, create: boolean): Promise<SigningKey> {
  let pem: string;
  try {
    pem = readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || !create) throw e;
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    try {
      // 'wx': of two replicas starting on one directory, one creates it and the other reads it.
      writeFileSync(file, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
    } catch (w) {
      if ((w as NodeJS.ErrnoException).code !== 'EEXIST') throw w;
    }
    pem = readFileSync(file, 'utf8');
  }
  const privateKey = createPrivateKey(pem);
  if (privateKey.asymmetricKeyType !== 'ec' || privateKey.asymmetricKeyDetails?.namedCurve !== 'prime256v1')
    throw new Error(`${file}: the token key must be an EC P-256 private key (ES256)`);
  const publicKey = createPublicKey(privateKey);
  const jwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(jwk);
  return { privateKey, publicKey, kid, jwk: { ...jwk, kid, alg: ALG, use: 'sig' } };
}

/** What ties a token to the account it was issued to (all null for anonymous). */
export interface TokenBinding {
  /** The access token (robot secret) the login used, if any: it must still be valid at each use. */
  readonly tid: string | null;
  /** The account's id: a removed account created again under the name is another account. */
  readonly uid: string | null;
  /** The account's credentials version (changed by a new password, a disable or enable). */
  readonly ver: number | null;
}

export interface TokenClaims extends TokenBinding {
  /** The account name, or `anonymous`. */
  readonly sub: string;
  readonly access: Access[];
  readonly exp: number;
}

const bindingClaims = (b: TokenBinding): Record<string, unknown> =>
  Object.fromEntries(Object.entries(b).filter(([, v]) => v !== null));

function bindingOf(payload: Record<string, unknown>): TokenBinding {
  return {
    tid: typeof payload.tid === 'string' ? payload.tid : null,
    uid: typeof payload.uid === 'string' ? payload.uid : null,
    ver: typeof payload.ver === 'number' ? payload.ver : null,
  };
}

export interface IssuedToken {
  readonly token: string;
  readonly expiresIn: number;
  readonly issuedAt: string;
}

/** Verified tokens kept, so a request costs a map lookup rather than an ECDSA verification. */
const CACHE_MAX = 10_000;

/**
 * Bearer tokens as the Docker token specification has them: a JWT signed by this registry's key, for one
 * audience (the service), carrying exactly the access granted. Refresh tokens (docker's identity tokens) are JWTs
 * of their own type that grant nothing on a registry request.
 */
export class TokenIssuer {
  private readonly verified = new Map<string, TokenClaims>();

  constructor(
    private readonly key: SigningKey,
    private readonly options: {
      issuer: string;
      service: string;
      ttlSeconds: number;
      refreshTtlSeconds: number;
    },
  ) {}

  get service(): string {
    return this.options.service;
  }

  get jwks(): { keys: JWK[] } {
    return { keys: [this.key.jwk] };
  }

  async issue(subject: string, access: Access[], binding: TokenBinding): Promise<IssuedToken> {
    const now = Math.floor(Date.now() / 1000);
    const token = await new SignJWT({ access, ...bindingClaims(binding) })
      .setProtectedHeader({ alg: ALG, kid: this.key.kid, typ: 'JWT' })
      .setIssuer(this.options.issuer)
      .setAudience(this.options.service)
      .setSubject(subject)
      .setIssuedAt(now)
      .setNotBefore(now - 10)
      .setExpirationTime(now + this.options.ttlSeconds)
      .setJti(randomUUID())
      .sign(this.key.privateKey);
    return { token, expiresIn: this.options.ttlSeconds, issuedAt: new Date(now * 1000).toISOString() };
  }

  /** A long-lived token a client trades for access tokens (`grant_type=refresh_token`); it carries no access. */
  async issueRefresh(subject: string, binding: TokenBinding): Promise<string> {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ refresh: true, ...bindingClaims(binding) })
      .setProtectedHeader({ alg: ALG, kid: this.key.kid, typ: 'JWT' })
      .setIssuer(this.options.issuer)
      .setAudience(`${this.options.service}#refresh`)
      .setSubject(subject)
      .setIssuedAt(now)
      .setExpirationTime(now + this.options.refreshTtlSeconds)
      .setJti(randomUUID())
      .sign(this.key.privateKey);
  }

  /** The claims of a valid access token of this service; null for anything else (bad, expired, other key). */
  async verify(token: string): Promise<TokenClaims | null> {
    const cached = this.verified.get(token);
    const now = Date.now() / 1000;
    if (cached) {
      if (cached.exp > now) return cached;
      this.verified.delete(token);
      return null;
    }
    if (token.length > 16_384) return null;
    try {
      const { payload } = await jwtVerify(token, this.key.publicKey, {
        algorithms: [ALG],
        issuer: this.options.issuer,
        audience: this.options.service,
        requiredClaims: ['sub', 'exp', 'iat'],
      });
      if (payload.refresh === true || !Array.isArray(payload.access)) return null;
      const claims: TokenClaims = {
        sub: payload.sub!,
        access: (payload.access as unknown[]).filter(isAccess),
        ...bindingOf(payload),
        exp: payload.exp!,
      };
      if (this.verified.size >= CACHE_MAX) this.verified.clear();
      this.verified.set(token, claims);
      return claims;
    } catch {
      return null;
    }
  }

  /** The subject (and access token) of a valid refresh token; null otherwise. */
  async verifyRefresh(token: string): Promise<(TokenBinding & { sub: string }) | null> {
    if (token.length > 16_384) return null;
    try {
      const { payload } = await jwtVerify(token, this.key.publicKey, {
        algorithms: [ALG],
        issuer: this.options.issuer,
        audience: `${this.options.service}#refresh`,
        requiredClaims: ['sub', 'exp'],
      });
      if (payload.refresh !== true) return null;
      return { sub: payload.sub!, ...bindingOf(payload) };
    } catch {
      return null;
    }
  }
}

function isAccess(a: unknown): a is Access {
  const x = a as Partial<Access> | null;
  return (
    typeof x === 'object' &&
    x !== null &&
    (x.type === 'repository' || x.type === 'registry') &&
    typeof x.name === 'string' &&
    Array.isArray(x.actions) &&
    x.actions.every((v) => typeof v === 'string')
  );
}
