import { isValidName } from '@strata/oci';

/** What a grant or a token may allow on a repository. `admin` is for accounts and policies, never in a token. */
export type Action = 'pull' | 'push' | 'delete' | 'admin';
export const ACTIONS: readonly Action[] = ['pull', 'push', 'delete', 'admin'];
/** What a token's `access` may carry for a repository (the Docker token specification's actions). */
const TOKEN_ACTIONS: readonly string[] = ['pull', 'push', 'delete'];

/** One entry of a token's `access` claim, as the Docker token specification writes it. */
export interface Access {
  readonly type: 'repository' | 'registry';
  readonly name: string;
  readonly actions: string[];
}

export class ScopeError extends Error {
  constructor(
    readonly scope: string,
    reason: string,
  ) {
    super(`invalid scope ${JSON.stringify(scope.slice(0, 200))}: ${reason}`);
  }
}

const MAX_SCOPE_LENGTH = 1024;

/**
 * `repository:<name>:<actions>` or `registry:catalog:*` (the token specification's resource scope). The name sits
 * between the first and the last colon; actions are a comma-separated list, `*` meaning every action. Unknown
 * actions are dropped (a client may ask for more than Strata knows), an empty remainder or a bad name is an error.
 */
export function parseScope(scope: string): Access {
  if (scope.length > MAX_SCOPE_LENGTH) throw new ScopeError(scope, 'too long');
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first <= 0 || last === first) throw new ScopeError(scope, 'expected type:name:actions');
  const type = scope.slice(0, first);
  const name = scope.slice(first + 1, last);
  const wanted = scope.slice(last + 1).split(',');
  if (type === 'registry') {
    if (name !== 'catalog') throw new ScopeError(scope, 'the only registry resource is catalog');
    return { type, name, actions: wanted.includes('*') ? ['*'] : [] };
  }
  // "repository(plugin)" is an old class syntax of the specification; its class is ignored.
  if (type !== 'repository' && !/^repository\([a-z0-9]+\)$/.test(type))
    throw new ScopeError(scope, `unknown resource type ${JSON.stringify(type.slice(0, 40))}`);
  if (!isValidName(name)) throw new ScopeError(scope, 'not a valid repository name');
  const actions = wanted.includes('*') ? [...TOKEN_ACTIONS] : TOKEN_ACTIONS.filter((a) => wanted.includes(a));
  return { type: 'repository', name, actions };
}

/** The scope string for a challenge: `repository:team/app:pull,push`. */
export function formatScope(access: Access): string {
  return `${access.type}:${access.name}:${access.actions.join(',')}`;
}

const PATTERN_RE = /^(?:[a-z0-9._*-]+|\*\*)(?:\/(?:[a-z0-9._*-]+|\*\*))*$/;

/**
 * A repository name pattern: exact (`team/app`), `*` matching within one path segment (`team/*`, `team/app-*`),
 * `**` matching any number of segments (`team/**` is every repository under team/, and `**` every repository).
 */
export function isValidPattern(pattern: string): boolean {
  return pattern.length <= 255 && PATTERN_RE.test(pattern) && !/\*\*\*/.test(pattern);
}

/** One path segment against one pattern segment with `*` wildcards: greedy with one backtrack point, O(n·m). */
function segmentMatches(pattern: string, text: string): boolean {
  let p = 0;
  let t = 0;
  let star = -1;
  let resume = 0;
  while (t < text.length) {
    if (p < pattern.length && pattern[p] !== '*' && pattern[p] === text[t]) {
      p++;
      t++;
    } else if (p < pattern.length && pattern[p] === '*') {
      star = p++;
      resume = t;
    } else if (star >= 0) {
      p = star + 1;
      t = ++resume;
    } else {
      return false;
    }
  }
  while (p < pattern.length && pattern[p] === '*') p++;
  return p === pattern.length;
}

/**
 * Whether `name` matches `pattern`: segment by segment, `**` standing for any number of segments (at least one
 * at the end, `a/**` being what is under a/; possibly none elsewhere, as in gitignore, so that a, **, b matches
 * a/b).
 * Dynamic programming over segments, so no pattern, however many wildcards it has, costs more than
 * O(pattern segments × name length): no regular expression to backtrack.
 */
export function patternMatches(pattern: string, name: string): boolean {
  const ps = pattern.split('/');
  const ns = name.split('/');
  // can[j]: pattern segments [0, i) match name segments [0, j).
  let can = new Array<boolean>(ns.length + 1).fill(false);
  can[0] = true;
  for (let i = 0; i < ps.length; i++) {
    const seg = ps[i]!;
    const next = new Array<boolean>(ns.length + 1).fill(false);
    if (seg === '**') {
      const last = i === ps.length - 1;
      let reachable = false;
      for (let j = 0; j <= ns.length; j++) {
        // Zero segments (not at the end), or one more than a reachable prefix.
        if (!last && can[j]) next[j] = true;
        if (reachable) next[j] = true;
        reachable = reachable || can[j]!;
      }
    } else {
      for (let j = 1; j <= ns.length; j++) next[j] = can[j - 1]! && segmentMatches(seg, ns[j - 1]!);
    }
    can = next;
  }
  return can[ns.length]!;
}

/**
 * The pattern as a POSIX regular expression (PostgreSQL's `~`, and JavaScript's RegExp alike) over the name with a
 * slash appended (`name || '/'`): each segment then ends in a slash, so `**` is `([^/]+/)*` (zero or more
 * segments), or `([^/]+/)+` at the end (one or more), exactly as patternMatches reads it.
 */
export function patternRegex(pattern: string): string {
  const ps = pattern.split('/');
  const body = ps
    .map((seg, i) => {
      if (seg === '**') return i === ps.length - 1 ? '([^/]+/)+' : '([^/]+/)*';
      return `${seg.replace(/[.]/g, '\\.').replace(/\*/g, '[^/]*')}/`;
    })
    .join('');
  return `^${body}$`;
}

// A tag starts with a letter, digit or underscore: so does a tag pattern (or with `*`).
const TAG_PATTERN_RE = /^[A-Za-z0-9_*][A-Za-z0-9_.*-]{0,127}$/;

/** A tag pattern: tag characters and `*` for any run of them (`v*`, `release-*`, `*`). */
export function isValidTagPattern(pattern: string): boolean {
  return TAG_PATTERN_RE.test(pattern);
}

/**
 * A token scope given on the command line (`repository:team/*:pull,push`): like parseScope, but the name is a
 * pattern.
 */
export function parseScopePattern(scope: string): { pattern: string; actions: Action[] } {
  const m = /^repository:([^:]+):([a-z*,]+)$/.exec(scope);
  if (!m || !isValidPattern(m[1]!)) throw new ScopeError(scope, 'expected repository:<pattern>:<actions>');
  const wanted = m[2]!.split(',');
  const actions = (
    wanted.includes('*') ? TOKEN_ACTIONS : TOKEN_ACTIONS.filter((a) => wanted.includes(a))
  ) as Action[];
  if (actions.length === 0 || wanted.some((a) => a !== '*' && !TOKEN_ACTIONS.includes(a)))
    throw new ScopeError(scope, 'actions are pull, push, delete or *');
  return { pattern: m[1]!, actions };
}
