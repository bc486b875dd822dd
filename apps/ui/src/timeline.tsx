import { useState } from 'preact/hooks';
import type { Descriptor, LayerDiff, Timeline, TimelineEntry } from './api-types';
import { fetchDiff, fetchTimeline } from './api';
import { formatSize, formatTime, shortDigest } from './format';
import { href } from './route';
import { DataTable, DigestLink, Empty, Loaded, Size, Time, useLoad, useTitle } from './ui';

interface Comparison {
  readonly from: string;
  readonly to: string;
}

function ended(entry: TimelineEntry): string {
  if (entry.endReason === null) return '—';
  return entry.endedBy ? `${entry.endReason} by ${entry.endedBy}` : entry.endReason;
}

function PeriodRow(props: {
  repository: string;
  entry: TimelineEntry;
  index: number;
  from: number;
  to: number;
  choose: (end: 'from' | 'to', index: number) => void;
}) {
  const { repository, entry, index } = props;
  const when = `${shortDigest(entry.digest)} ${formatTime(entry.startedAt)}`;
  return (
    <tr>
      <td>
        <input
          type="radio"
          name="from"
          aria-label={`From ${when}`}
          checked={props.from === index}
          onChange={() => props.choose('from', index)}
        />
      </td>
      <td>
        <input
          type="radio"
          name="to"
          aria-label={`To ${when}`}
          checked={props.to === index}
          onChange={() => props.choose('to', index)}
        />
      </td>
      <td>
        <DigestLink repository={repository} digest={entry.digest} />
      </td>
      <td>
        <Time iso={entry.startedAt} absolute />
      </td>
      <td>{entry.endedAt ? <Time iso={entry.endedAt} absolute /> : 'now'}</td>
      <td>{entry.startedBy}</td>
      <td>{ended(entry)}</td>
    </tr>
  );
}

function LayerGroup({ title, layers }: { title: string; layers: Descriptor[] }) {
  const total = layers.reduce((sum, layer) => sum + layer.size, 0);
  return (
    <section>
      <h3>{title}</h3>
      {layers.length === 0 ? (
        <Empty>None</Empty>
      ) : (
        <>
          <p>
            {layers.length} {layers.length === 1 ? 'layer' : 'layers'}, {formatSize(total)}
          </p>
          <DataTable label={`${title} layers`} columns={['Digest', 'Media type', 'Size']}>
            {layers.map((layer) => (
              <tr key={layer.digest}>
                <td>
                  <code title={layer.digest}>{shortDigest(layer.digest)}</code>
                </td>
                <td class="wrap">{layer.mediaType}</td>
                <td>
                  <Size bytes={layer.size} />
                </td>
              </tr>
            ))}
          </DataTable>
        </>
      )}
    </section>
  );
}

function DiffResult({ diff }: { diff: LayerDiff }) {
  return (
    <section>
      <h2>
        Layers from {shortDigest(diff.from)} to {shortDigest(diff.to)}
      </h2>
      <LayerGroup title="Added" layers={diff.added} />
      <LayerGroup title="Removed" layers={diff.removed} />
      <LayerGroup title="Kept" layers={diff.kept} />
    </section>
  );
}

/** The periods, two of them chosen (by default the previous and the newest) to compare their layers. */
function TimelineTable({ timeline }: { timeline: Timeline }) {
  const { repository, items } = timeline;
  const [from, setFrom] = useState(items.length > 1 ? 1 : 0);
  const [to, setTo] = useState(0);
  const [comparison, setComparison] = useState<Comparison | null>(null);
  const diff = useLoad(
    (signal) => (comparison ? fetchDiff({ repository, ...comparison }, signal) : Promise.resolve(null)),
    [repository, comparison],
  );
  const compare = (e: Event): void => {
    e.preventDefault();
    const [older, newer] = [items[from], items[to]];
    if (older && newer) setComparison({ from: older.digest, to: newer.digest });
  };
  return (
    <>
      <form class="compare" onSubmit={compare}>
        <DataTable
          label="Timeline"
          columns={['Compare from', 'Compare to', 'Digest', 'From', 'To', 'Moved by', 'Ended']}
        >
          {items.map((entry, index) => (
            <PeriodRow
              key={entry.startedSeq}
              repository={repository}
              entry={entry}
              index={index}
              from={from}
              to={to}
              choose={(end, i) => (end === 'from' ? setFrom(i) : setTo(i))}
            />
          ))}
        </DataTable>
        <button type="submit">Compare layers</button>
      </form>
      {comparison && <Loaded load={diff}>{(result) => result && <DiffResult diff={result} />}</Loaded>}
    </>
  );
}

export function TimelineView({ repository, tag }: { repository: string; tag: string }) {
  const title = `Timeline of ${repository}:${tag}`;
  useTitle(title);
  const load = useLoad((signal) => fetchTimeline({ repository, tag }, signal), [repository, tag]);
  return (
    <>
      <h1>{title}</h1>
      <p>
        Now: <a href={href.image(repository, tag)}>{`${repository}:${tag}`}</a>
      </p>
      <Loaded load={load}>
        {(timeline) =>
          timeline.items.length === 0 ? <Empty>No history</Empty> : <TimelineTable timeline={timeline} />
        }
      </Loaded>
    </>
  );
}
