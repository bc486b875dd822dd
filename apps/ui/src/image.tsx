import type { ComponentChildren } from 'preact';
import { useState } from 'preact/hooks';
import type { Image, ImageConfig } from './api-types';
import { fetchImage } from './api';
import { formatCommand, formatPlatform, shortDigest } from './format';
import { href } from './route';
import { DataTable, DigestLink, Empty, Loaded, Size, Time, useLoad, useTitle } from './ui';

type Fact = readonly [term: string, value: ComponentChildren];

/** Whether a fact has something to show: `cond && <X/>` and empty strings stand for nothing. */
const present = ([, value]: Fact): boolean =>
  value !== null && value !== undefined && value !== false && value !== '';

/** A description list of the facts that have a value. */
function Facts({ facts }: { facts: Fact[] }) {
  return (
    <dl class="facts">
      {facts.filter(present).map(([term, value]) => (
        <div key={term}>
          <dt>{term}</dt>
          <dd>{value}</dd>
        </div>
      ))}
    </dl>
  );
}

function KeyValueTable({ label, entries }: { label: string; entries: Record<string, string> }) {
  return (
    <DataTable label={label} columns={['Key', 'Value']}>
      {Object.entries(entries).map(([key, value]) => (
        <tr key={key}>
          <td>
            <code>{key}</code>
          </td>
          <td class="wrap">{value}</td>
        </tr>
      ))}
    </DataTable>
  );
}

/** A command to copy; the button keeps its name, and what happened is said in a status beside it. */
function CopyLine({ command, label }: { command: string; label: string }) {
  const [status, setStatus] = useState('');
  const copy = async (): Promise<void> => {
    try {
      await navigator.clipboard.writeText(command);
      setStatus('Copied');
    } catch {
      // No clipboard outside a secure context (plain http to a host other than localhost).
      setStatus('Could not copy: select the command instead');
    }
  };
  return (
    <div class="copy-line">
      <code>{command}</code>
      <button type="button" aria-label={label} onClick={() => void copy()}>
        Copy
      </button>
      <span role="status">{status}</span>
    </div>
  );
}

/** By digest always; by tag too when the image was opened by a tag. */
function PullCommands({ image, registry, tag }: { image: Image; registry: string; tag: string | null }) {
  const name = `${registry}/${image.repository}`;
  return (
    <section>
      <h2>Pull</h2>
      {tag !== null &&
        ['docker', 'podman'].map((tool) => (
          <CopyLine
            key={`${tool}-tag`}
            command={`${tool} pull ${name}:${tag}`}
            label={`Copy ${tool} pull-by-tag command`}
          />
        ))}
      {['docker', 'podman'].map((tool) => (
        <CopyLine
          key={tool}
          command={`${tool} pull ${name}@${image.digest}`}
          label={`Copy ${tool} pull command`}
        />
      ))}
    </section>
  );
}

function ConfigFacts({ config }: { config: ImageConfig }) {
  const platform = [config.os, config.architecture].filter(Boolean).join('/');
  const code = (text: string | null): ComponentChildren => text && <code>{text}</code>;
  return (
    <>
      <Facts
        facts={[
          ['Created', config.created && <Time iso={config.created} />],
          ['Platform', platform],
          ['Entrypoint', code(formatCommand(config.entrypoint))],
          ['Command', code(formatCommand(config.cmd))],
          ['Working directory', code(config.workingDir)],
          ['User', code(config.user)],
          ['Exposed ports', config.exposedPorts.join(', ')],
          [
            'Environment',
            config.env.length > 0 && (
              <ul class="plain">
                {config.env.map((variable) => (
                  <li key={variable}>
                    <code>{variable}</code>
                  </li>
                ))}
              </ul>
            ),
          ],
        ]}
      />
      {Object.keys(config.labels).length > 0 && (
        <>
          <h3>Labels</h3>
          <KeyValueTable label="Labels" entries={config.labels} />
        </>
      )}
    </>
  );
}

function ConfigSection({ config }: { config: NonNullable<Image['config']> }) {
  return (
    <section>
      <h2>Configuration</h2>
      {config.summary ? (
        <ConfigFacts config={config.summary} />
      ) : (
        <p>
          Its config (<code>{config.mediaType}</code>) is not a container image configuration.
        </p>
      )}
    </section>
  );
}

function LayersSection({ image }: { image: Image }) {
  return (
    <section>
      <h2>Layers</h2>
      {image.layers.length === 0 ? (
        <Empty>No layers</Empty>
      ) : (
        <DataTable label="Layers" columns={['#', 'Digest', 'Media type', 'Size']}>
          {image.layers.map((layer, index) => (
            <tr key={index}>
              <td>{index + 1}</td>
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
      )}
    </section>
  );
}

function ManifestsSection({ image }: { image: Image }) {
  return (
    <section>
      <h2>Manifests</h2>
      <DataTable label="Manifests" columns={['Platform', 'Digest', 'Media type', 'Size']}>
        {image.manifests.map((child) => (
          <tr key={child.digest}>
            <td>{child.platform ? formatPlatform(child.platform) : '—'}</td>
            <td>
              <DigestLink repository={image.repository} digest={child.digest} />
            </td>
            <td class="wrap">{child.mediaType}</td>
            <td>
              <Size bytes={child.size} />
            </td>
          </tr>
        ))}
      </DataTable>
    </section>
  );
}

function ReferrersSection({ image }: { image: Image }) {
  return (
    <section>
      <h2>Referrers</h2>
      {image.referrers.length === 0 ? (
        <Empty>No referrers</Empty>
      ) : (
        <DataTable label="Referrers" columns={['Artifact type', 'Digest', 'Size', 'Annotations']}>
          {image.referrers.map((referrer) => (
            <tr key={referrer.digest}>
              <td class="wrap">{referrer.artifactType ?? referrer.mediaType}</td>
              <td>
                <DigestLink repository={image.repository} digest={referrer.digest} />
              </td>
              <td>
                <Size bytes={referrer.size} />
              </td>
              <td class="wrap">
                {Object.entries(referrer.annotations).map(([key, value]) => (
                  <div key={key}>
                    <code>{key}</code>: {value}
                  </div>
                ))}
              </td>
            </tr>
          ))}
        </DataTable>
      )}
    </section>
  );
}

function Summary({ image }: { image: Image }) {
  return (
    <Facts
      facts={[
        ['Repository', <a href={href.tags(image.repository)}>{image.repository}</a>],
        ['Digest', <code class="wrap">{image.digest}</code>],
        ['Media type', image.mediaType],
        ['Artifact type', image.artifactType],
        ['Total size', <Size bytes={image.totalSize} />],
        [
          'Pushed',
          image.pushedAt && (
            <>
              <Time iso={image.pushedAt} />
              {image.pushedBy && ` by ${image.pushedBy}`}
            </>
          ),
        ],
        [
          'Tags',
          image.tags.length === 0 ? (
            'none'
          ) : (
            <ul class="inline">
              {image.tags.map((tag) => (
                <li key={tag}>
                  <a href={href.image(image.repository, tag)}>{tag}</a>
                </li>
              ))}
            </ul>
          ),
        ],
        ['Subject', image.subject && <DigestLink repository={image.repository} digest={image.subject} />],
      ]}
    />
  );
}

function ImageDetails({ image, registry, tag }: { image: Image; registry: string; tag: string | null }) {
  return (
    <>
      <Summary image={image} />
      <PullCommands image={image} registry={registry} tag={tag} />
      {image.config && <ConfigSection config={image.config} />}
      {(image.config || image.layers.length > 0) && <LayersSection image={image} />}
      {image.manifests.length > 0 && <ManifestsSection image={image} />}
      {Object.keys(image.annotations).length > 0 && (
        <section>
          <h2>Annotations</h2>
          <KeyValueTable label="Annotations" entries={image.annotations} />
        </section>
      )}
      <ReferrersSection image={image} />
    </>
  );
}

export function ImageView({
  repository,
  reference,
  registry,
}: {
  repository: string;
  reference: string;
  registry: string;
}) {
  // A digest has its algorithm before a colon; a tag cannot hold one.
  const tag = reference.includes(':') ? null : reference;
  const title = tag === null ? `${repository}@${shortDigest(reference)}` : `${repository}:${tag}`;
  useTitle(title);
  const load = useLoad((signal) => fetchImage({ repository, reference }, signal), [repository, reference]);
  return (
    <>
      <h1>{title}</h1>
      <Loaded load={load}>{(image) => <ImageDetails image={image} registry={registry} tag={tag} />}</Loaded>
    </>
  );
}
