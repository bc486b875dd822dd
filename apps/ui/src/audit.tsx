import { useEffect, useState } from 'preact/hooks';
import type { AuditEvent } from './api-types';
import { fetchAudit } from './api';
import { shortDigest } from './format';
import { type AuditFilters, href } from './route';
import { DataTable, DigestLink, Empty, Loaded, Time, useLoad, useTitle } from './ui';

/** Suggested in the Action box. */
const EVENT_TYPES = [
  'manifest.pushed',
  'tag.moved',
  'tag.deleted',
  'upload.committed',
  'blob.mounted',
  'upload.started',
  'auth.failed',
];
/** Suggested as `<kind>.`, the prefix that matches every event of that kind. */
const EVENT_KINDS = ['manifest', 'tag', 'blob', 'upload', 'auth'];

type FormFields = Omit<AuditFilters, 'before'>;

/** An ISO time as a datetime-local input's value, in the reader's time zone. */
function toLocalInput(iso: string): string {
  const date = new Date(iso);
  if (iso === '' || Number.isNaN(date.getTime())) return '';
  return new Date(date.getTime() - date.getTimezoneOffset() * 60_000).toISOString().slice(0, 19);
}

/** A datetime-local value (no zone: the reader's) as an ISO time. */
function fromLocalInput(value: string): string {
  return value === '' ? '' : new Date(value).toISOString();
}

function formFields(filters: AuditFilters): FormFields {
  return {
    actor: filters.actor,
    repository: filters.repository,
    action: filters.action,
    since: toLocalInput(filters.since),
    until: toLocalInput(filters.until),
  };
}

function FilterField(props: {
  id: keyof FormFields;
  label: string;
  type?: string;
  list?: string;
  fields: FormFields;
  set: (id: keyof FormFields, value: string) => void;
}) {
  return (
    <div class="field">
      <label for={`audit-${props.id}`}>{props.label}</label>
      <input
        id={`audit-${props.id}`}
        type={props.type ?? 'text'}
        // Whole seconds, so that a linked time with seconds is a valid value rather than a step mismatch.
        step={props.type === 'datetime-local' ? 1 : undefined}
        list={props.list}
        autocomplete="off"
        value={props.fields[props.id]}
        onInput={(e) => props.set(props.id, e.currentTarget.value)}
      />
    </div>
  );
}

/** The filters, edited here and applied by putting them in the address, so that the view can be linked to. */
function FilterForm({ filters }: { filters: AuditFilters }) {
  const [fields, setFields] = useState(() => formFields(filters));
  // Back and forward change the filters under the form: it follows them (without remounting, which would lose
  // the focus of the button just pressed).
  useEffect(() => setFields(formFields(filters)), [href.audit(filters)]);
  const set = (id: keyof FormFields, value: string): void => setFields((f) => ({ ...f, [id]: value }));
  const apply = (e: Event): void => {
    e.preventDefault();
    location.hash = href.audit({
      ...fields,
      since: fromLocalInput(fields.since),
      until: fromLocalInput(fields.until),
    });
  };
  return (
    <form class="filters" onSubmit={apply}>
      <FilterField id="actor" label="Actor" fields={fields} set={set} />
      <FilterField id="repository" label="Repository" fields={fields} set={set} />
      <FilterField id="action" label="Action" list="audit-actions" fields={fields} set={set} />
      <datalist id="audit-actions">
        {EVENT_TYPES.map((type) => (
          <option key={type} value={type} />
        ))}
        {EVENT_KINDS.map((kind) => (
          <option key={kind} value={`${kind}.`}>
            every {kind} event
          </option>
        ))}
      </datalist>
      <FilterField id="since" label="Since" type="datetime-local" fields={fields} set={set} />
      <FilterField id="until" label="Until" type="datetime-local" fields={fields} set={set} />
      <button type="submit">Apply filters</button>
    </form>
  );
}

function TagCell({ repository, tag }: { repository: string | null; tag: string | null }) {
  if (tag === null) return <>—</>;
  return repository ? <a href={href.timeline(repository, tag)}>{tag}</a> : <>{tag}</>;
}

function DigestCell({
  repository,
  digest,
  action,
}: {
  repository: string | null;
  digest: string | null;
  action: string;
}) {
  if (digest === null) return <>—</>;
  // Only manifests have a page: a blob's digest (an upload's, a mount's) is shown, not linked.
  const manifest = action.startsWith('manifest.') || action.startsWith('tag.');
  if (repository && manifest) return <DigestLink repository={repository} digest={digest} />;
  return <code title={digest}>{shortDigest(digest)}</code>;
}

function EventRow({ event }: { event: AuditEvent }) {
  const { repository, tag, digest } = event;
  return (
    <tr>
      <td>{event.seq}</td>
      <td>
        <Time iso={event.at} absolute />
      </td>
      <td>{event.actor}</td>
      <td>
        <code>{event.action}</code>
      </td>
      <td>{repository ? <a href={href.tags(repository)}>{repository}</a> : '—'}</td>
      <td>
        <TagCell repository={repository} tag={tag} />
      </td>
      <td>
        <DigestCell repository={repository} digest={digest} action={event.action} />
      </td>
      <td>{event.requestId ? <code>{event.requestId}</code> : '—'}</td>
    </tr>
  );
}

export function AuditView({ filters }: { filters: AuditFilters }) {
  useTitle('Audit log');
  const load = useLoad((signal) => fetchAudit(filters, signal), [href.audit(filters)]);
  const older = load.value?.next ?? null;
  return (
    <>
      <h1>Audit log</h1>
      <FilterForm filters={filters} />
      <Loaded load={load}>
        {(page) =>
          page.items.length === 0 ? (
            <Empty>No events</Empty>
          ) : (
            <DataTable
              label="Audit log"
              columns={['Seq', 'Time', 'Actor', 'Action', 'Repository', 'Tag', 'Digest', 'Request ID']}
            >
              {page.items.map((event) => (
                <EventRow key={event.seq} event={event} />
              ))}
            </DataTable>
          )
        }
      </Loaded>
      <nav class="pager" aria-label="Pages">
        {filters.before && <a href={href.audit({ ...filters, before: '' })}>Newest events</a>}
        {older !== null && (
          <button type="button" onClick={() => (location.hash = href.audit({ ...filters, before: older }))}>
            Older events
          </button>
        )}
      </nav>
    </>
  );
}
