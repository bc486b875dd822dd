// The only module that talks to the server: /api/v1 reads and the token endpoint. The access token lives in
// memory only; the refresh token in sessionStorage, so a reload renews without asking for the password again,
// and closing the tab forgets it. The password itself is never kept.
import type {
  AuditPage,
  Image,
  LayerDiff,
  Page,
  RepositorySummary,
  Session,
  TagSummary,
  Timeline,
} from './api-types';

/** An error as the UI shows it: the first entry of the OCI envelope, or what stood in for one. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** The token endpoint's answer (the Docker token specification's, with OAuth2's names). */
interface TokenResponse {
  readonly access_token: string;
  readonly refresh_token?: string;
}

type Query = Record<string, string | null | undefined>;

const REFRESH_TOKEN_KEY = 'strata.refresh-token';
const CLIENT_ID = 'strata-ui';
const SCOPE = 'registry:catalog:*';

let accessToken: string | null = null;
/** One renewal at a time: the pages that fail together on an expired token all wait for the same one. */
let renewal: Promise<boolean> | null = null;
let signedOut: () => void = () => undefined;

/** Called when a request is refused even after renewing: the session is over and the login form is due. */
export function onSignedOut(listener: () => void): void {
  signedOut = listener;
}

async function errorOf(res: Response): Promise<ApiError> {
  try {
    const body = (await res.json()) as { errors?: { code?: string; message?: string }[] };
    const first = body.errors?.[0];
    if (first?.code) return new ApiError(res.status, first.code, first.message ?? res.statusText);
  } catch {
    // Not the envelope (a proxy's page, say): the status is all there is to tell.
  }
  return new ApiError(res.status, `HTTP ${res.status}`, res.statusText || 'the request failed');
}

/** fetch, with a failure to reach the server turned into an ApiError; an abort is rethrown as it is. */
async function send(input: string, init: RequestInit): Promise<Response> {
  try {
    return await fetch(input, init);
  } catch (e) {
    if (e instanceof DOMException && e.name === 'AbortError') throw e;
    throw new ApiError(0, 'NETWORK', 'could not reach the registry');
  }
}

async function requestToken(form: Record<string, string>): Promise<void> {
  const res = await send('/auth/token', {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ ...form, scope: SCOPE, client_id: CLIENT_ID }),
  });
  if (!res.ok) throw await errorOf(res);
  const token = (await res.json()) as TokenResponse;
  accessToken = token.access_token;
  if (token.refresh_token) sessionStorage.setItem(REFRESH_TOKEN_KEY, token.refresh_token);
}

/** Logs in with the password grant, asking for a refresh token (access_type=offline). */
export async function logIn(username: string, password: string): Promise<void> {
  await requestToken({ grant_type: 'password', username, password, access_type: 'offline' });
}

export function logOut(): void {
  accessToken = null;
  sessionStorage.removeItem(REFRESH_TOKEN_KEY);
}

async function renewOnce(): Promise<boolean> {
  const refreshToken = sessionStorage.getItem(REFRESH_TOKEN_KEY);
  if (refreshToken === null) return false;
  try {
    await requestToken({ grant_type: 'refresh_token', refresh_token: refreshToken });
    return true;
  } catch (e) {
    // A refused refresh token is void for good (password changed, account disabled); a network error is not.
    if (e instanceof ApiError && e.status === 401) logOut();
    return false;
  }
}

/** A new access token from the stored refresh token; false when there is none or it was refused. */
export function renew(): Promise<boolean> {
  renewal ??= renewOnce().finally(() => (renewal = null));
  return renewal;
}

function queryString(query: Query): string {
  const pairs = Object.entries(query).flatMap(([key, value]) =>
    value ? [`${key}=${encodeURIComponent(value)}`] : [],
  );
  return pairs.length ? `?${pairs.join('&')}` : '';
}

function authorized(signal: AbortSignal | undefined): RequestInit {
  return {
    headers: accessToken ? { Authorization: `Bearer ${accessToken}` } : {},
    ...(signal ? { signal } : {}),
  };
}

/** A GET under /api/v1; a 401 renews the access token once and retries. */
async function get<T>(path: string, query: Query, signal?: AbortSignal): Promise<T> {
  const url = `/api/v1/${path}${queryString(query)}`;
  let res = await send(url, authorized(signal));
  if (res.status === 401 && (await renew())) res = await send(url, authorized(signal));
  if (res.status === 401) signedOut();
  if (!res.ok) throw await errorOf(res);
  return (await res.json()) as T;
}

export const fetchSession = (signal?: AbortSignal): Promise<Session> => get('session', {}, signal);

export const fetchRepositories = (
  query: { q: string; after: string | null },
  signal?: AbortSignal,
): Promise<Page<RepositorySummary>> => get('repositories', query, signal);

export const fetchTags = (
  query: { repository: string; q: string; after: string | null },
  signal?: AbortSignal,
): Promise<Page<TagSummary>> => get('tags', query, signal);

export const fetchImage = (
  query: { repository: string; reference: string },
  signal?: AbortSignal,
): Promise<Image> => get('image', query, signal);

export const fetchTimeline = (
  query: { repository: string; tag: string },
  signal?: AbortSignal,
): Promise<Timeline> => get('timeline', query, signal);

export const fetchDiff = (
  query: { repository: string; from: string; to: string },
  signal?: AbortSignal,
): Promise<LayerDiff> => get('diff', query, signal);

export const fetchAudit = (query: Query, signal?: AbortSignal): Promise<AuditPage> =>
  get('audit', query, signal);
