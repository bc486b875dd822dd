// What the views share: loading data, showing its errors, searching and paging, and the small pieces every
// table has (times, digests).
import type { ComponentChildren } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { ApiError } from './api';
import { formatRelative, formatSize, formatTime, shortDigest } from './format';
import { href } from './route';

const SEARCH_DEBOUNCE_MS = 200;

export function useTitle(title: string): void {
  useEffect(() => {
    document.title = `${title} · Strata`;
  }, [title]);
}

export function asApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  return new ApiError(0, 'UNKNOWN', e instanceof Error ? e.message : String(e));
}

export interface Load<T> {
  /** The last value loaded, kept while the next one loads so a table does not blink at every keystroke. */
  readonly value: T | null;
  readonly error: ApiError | null;
  readonly loading: boolean;
}

/** Runs `load` whenever `deps` change, aborting the request it replaces so a late answer never wins. */
export function useLoad<T>(load: (signal: AbortSignal) => Promise<T>, deps: unknown[]): Load<T> {
  const [state, setState] = useState<Load<T>>({ value: null, error: null, loading: true });
  useEffect(() => {
    const controller = new AbortController();
    setState((s) => ({ ...s, loading: true }));
    load(controller.signal).then(
      (value) => {
        if (!controller.signal.aborted) setState({ value, error: null, loading: false });
      },
      (e: unknown) => {
        if (!controller.signal.aborted) setState({ value: null, error: asApiError(e), loading: false });
      },
    );
    return () => controller.abort();
  }, deps);
  return state;
}

export function ErrorAlert({ error }: { error: ApiError }) {
  return (
    <p role="alert" class="error">
      <strong>{error.code}</strong>: {error.message}
    </p>
  );
}

/** The error, or "Loading…" until there is a value, or `children` of the value (dimmed while the next loads). */
export function Loaded<T>({ load, children }: { load: Load<T>; children: (value: T) => ComponentChildren }) {
  if (load.error) return <ErrorAlert error={load.error} />;
  if (load.value === null)
    return (
      <p role="status" class="status">
        Loading…
      </p>
    );
  return (
    <div class={load.loading ? 'busy' : undefined} aria-busy={load.loading}>
      {children(load.value)}
    </div>
  );
}

export interface PagedSearch {
  /** What is typed in the search box. */
  readonly text: string;
  /** The search in effect: `text` once typing paused, or at once on Enter. */
  readonly query: string;
  /** The `after` of the page shown; null for the first. */
  readonly after: string | null;
  readonly hasPrevious: boolean;
  readonly setText: (text: string) => void;
  readonly submit: () => void;
  readonly next: (after: string) => void;
  readonly previous: () => void;
}

/** A search box and server-side pages: the `after` of every page shown so far, to go back a page. */
export function usePagedSearch(): PagedSearch {
  const [text, setText] = useState('');
  const [paging, setPaging] = useState<{ query: string; cursors: string[] }>({ query: '', cursors: [] });
  const apply = (typed: string): void => {
    const query = typed.trim();
    setPaging((p) => (p.query === query ? p : { query, cursors: [] }));
  };
  useEffect(() => {
    const timer = setTimeout(() => apply(text), SEARCH_DEBOUNCE_MS);
    return () => clearTimeout(timer);
  }, [text]);
  const { query, cursors } = paging;
  return {
    text,
    query,
    after: cursors[cursors.length - 1] ?? null,
    hasPrevious: cursors.length > 0,
    setText,
    submit: () => apply(text),
    // Ignores a second click on Next page while the page it asked for still loads.
    next: (after) =>
      setPaging((p) =>
        p.cursors[p.cursors.length - 1] === after ? p : { ...p, cursors: [...p.cursors, after] },
      ),
    previous: () => setPaging((p) => ({ ...p, cursors: p.cursors.slice(0, -1) })),
  };
}

export function SearchBox({ id, label, search }: { id: string; label: string; search: PagedSearch }) {
  return (
    <form
      role="search"
      class="search"
      onSubmit={(e) => {
        e.preventDefault();
        search.submit();
      }}
    >
      <label for={id}>{label}</label>
      <input
        id={id}
        type="search"
        autocomplete="off"
        spellcheck={false}
        value={search.text}
        onInput={(e) => search.setText(e.currentTarget.value)}
      />
    </form>
  );
}

export function Pager({ search, next }: { search: PagedSearch; next: string | null }) {
  if (!search.hasPrevious && next === null) return null;
  return (
    <nav class="pager" aria-label="Pages">
      <button type="button" disabled={!search.hasPrevious} onClick={search.previous}>
        Previous page
      </button>
      <button type="button" disabled={next === null} onClick={() => next !== null && search.next(next)}>
        Next page
      </button>
    </nav>
  );
}

/** A time as "3 hours ago" (or in the reader's locale when `absolute`), the ISO time in its tooltip. */
export function Time({ iso, absolute = false }: { iso: string; absolute?: boolean }) {
  return (
    <time dateTime={iso} title={iso}>
      {absolute ? formatTime(iso) : formatRelative(iso)}
    </time>
  );
}

/** A digest's 12 first hex digits, linking to its image; the whole digest in the tooltip. */
export function DigestLink({ repository, digest }: { repository: string; digest: string }) {
  return (
    <a href={href.image(repository, digest)} title={digest} class="digest">
      {shortDigest(digest)}
    </a>
  );
}

export function Size({ bytes }: { bytes: number }) {
  return <span title={`${bytes.toLocaleString()} bytes`}>{formatSize(bytes)}</span>;
}

/** A table with its accessible name, scrolling sideways on its own when the screen is narrow. */
export function DataTable({
  label,
  columns,
  children,
}: {
  label: string;
  columns: string[];
  children: ComponentChildren;
}) {
  return (
    <div class="table-wrap">
      <table aria-label={label}>
        <thead>
          <tr>
            {columns.map((column) => (
              <th scope="col" key={column}>
                {column}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>{children}</tbody>
      </table>
    </div>
  );
}

export function Empty({ children }: { children: ComponentChildren }) {
  return <p class="empty">{children}</p>;
}
