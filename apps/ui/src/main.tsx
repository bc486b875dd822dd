// The shell: the session (and, with authentication on, the login form before anything else), the header, and
// the view the address names.
import { type RefObject, render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import type { Session } from './api-types';
import { type ApiError, fetchSession, logIn, logOut, onSignedOut, renew } from './api';
import { AuditView } from './audit';
import { ImageView } from './image';
import { RepositoriesView } from './repositories';
import { parseRoute, type Route, routePath, useHash } from './route';
import { TagsView } from './tags';
import { TimelineView } from './timeline';
import { asApiError, ErrorAlert, useTitle } from './ui';

type Gate =
  | { readonly state: 'loading' }
  | { readonly state: 'failed'; readonly error: ApiError }
  | { readonly state: 'login' }
  | { readonly state: 'in'; readonly session: Session };

async function openSession(): Promise<Gate> {
  let session = await fetchSession();
  // A reload keeps the refresh token but not the access token: renewed before asking for the password again.
  if (session.auth && session.user === null && (await renew())) session = await fetchSession();
  // Visitors who are not logged in browse what anonymous pulls allow, when the registry allows any.
  return session.auth && session.user === null && !session.anonymous
    ? { state: 'login' }
    : { state: 'in', session };
}

function LoginForm({ onLoggedIn }: { onLoggedIn: () => void }) {
  useTitle('Log in');
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<ApiError | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (): Promise<void> => {
    if (busy) return;
    setBusy(true);
    setError(null);
    try {
      await logIn(username, password);
      onLoggedIn();
    } catch (e) {
      setError(asApiError(e));
    } finally {
      setBusy(false);
    }
  };
  return (
    <>
      <h1>Log in</h1>
      <form
        class="login"
        aria-busy={busy}
        onSubmit={(e) => {
          e.preventDefault();
          void submit();
        }}
      >
        {error && <ErrorAlert error={error} />}
        <label for="login-username">Username</label>
        <input
          id="login-username"
          autocomplete="username"
          required
          value={username}
          onInput={(e) => setUsername(e.currentTarget.value)}
        />
        <label for="login-password">Password</label>
        <input
          id="login-password"
          type="password"
          autocomplete="current-password"
          required
          value={password}
          onInput={(e) => setPassword(e.currentTarget.value)}
        />
        <button type="submit">Log in</button>
      </form>
    </>
  );
}

function NotFound() {
  useTitle('Not found');
  return (
    <>
      <h1>Not found</h1>
      <p>No page of the registry lives at this address.</p>
    </>
  );
}

function View({ route, session }: { route: Route; session: Session }) {
  switch (route.view) {
    case 'repositories':
      return <RepositoriesView />;
    case 'tags':
      return <TagsView repository={route.repository} />;
    case 'image':
      return (
        <ImageView repository={route.repository} reference={route.reference} registry={session.registry} />
      );
    case 'timeline':
      return <TimelineView repository={route.repository} tag={route.tag} />;
    case 'audit':
      return <AuditView filters={route.filters} />;
    case 'not-found':
      return <NotFound />;
  }
}

function Header({
  route,
  session,
  onLogOut,
  onLogIn,
}: {
  route: Route;
  session: Session | null;
  onLogOut: () => void;
  onLogIn: () => void;
}) {
  const current = (view: Route['view']) => (route.view === view ? 'page' : undefined);
  return (
    <header class="top">
      <a class="brand" href="#/">
        Strata
      </a>
      {session && (
        <nav aria-label="Main">
          <a href="#/" aria-current={current('repositories')}>
            Repositories
          </a>
          <a href="#/audit" aria-current={current('audit')}>
            Audit log
          </a>
        </nav>
      )}
      {session && session.auth && !session.user && (
        <div class="user">
          <button type="button" onClick={onLogIn}>
            Log in
          </button>
        </div>
      )}
      {session?.user && (
        <div class="user">
          <span>{session.user}</span>
          <button type="button" onClick={onLogOut}>
            Log out
          </button>
        </div>
      )}
    </header>
  );
}

/** Moves the focus to `<main>` when the view changes (not on the first one), as a page load would. */
function useFocusOnNavigation(path: string): RefObject<HTMLElement> {
  const main = useRef<HTMLElement>(null);
  const first = useRef(true);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    window.scrollTo(0, 0);
    main.current?.focus({ preventScroll: true });
  }, [path]);
  return main;
}

function Gated({ gate, route, path, start }: { gate: Gate; route: Route; path: string; start: () => void }) {
  switch (gate.state) {
    case 'loading':
      return (
        <p role="status" class="status">
          Loading…
        </p>
      );
    case 'failed':
      return (
        <>
          <h1>Strata could not start</h1>
          <ErrorAlert error={gate.error} />
          <button type="button" onClick={start}>
            Retry
          </button>
        </>
      );
    case 'login':
      return <LoginForm onLoggedIn={start} />;
    case 'in':
      // Keyed by the view's address: another image or repository starts from a clean state, not the last one's.
      return <View key={path} route={route} session={gate.session} />;
  }
}

function App() {
  const [gate, setGate] = useState<Gate>({ state: 'loading' });
  const hash = useHash();
  const path = routePath(hash);
  const route = parseRoute(hash);
  const main = useFocusOnNavigation(path);
  const start = (): void => {
    openSession().then(setGate, (e: unknown) => {
      const error = asApiError(e);
      setGate(error.status === 401 ? { state: 'login' } : { state: 'failed', error });
    });
  };
  useEffect(() => {
    onSignedOut(() => setGate({ state: 'login' }));
    start();
  }, []);
  const logOutNow = (): void => {
    logOut();
    setGate({ state: 'login' });
  };
  return (
    <>
      <Header
        route={route}
        session={gate.state === 'in' ? gate.session : null}
        onLogOut={logOutNow}
        onLogIn={() => setGate({ state: 'login' })}
      />
      <main ref={main} tabIndex={-1}>
        <Gated gate={gate} route={route} path={path} start={start} />
      </main>
    </>
  );
}

const root = document.getElementById('app');
if (root) render(<App />, root);
