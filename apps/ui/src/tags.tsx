import type { TagSummary } from './api-types';
import { fetchTags } from './api';
import { formatPlatform } from './format';
import { href } from './route';
import {
  DataTable,
  DigestLink,
  Empty,
  Loaded,
  Pager,
  SearchBox,
  Size,
  Time,
  useLoad,
  usePagedSearch,
  useTitle,
} from './ui';

function TagRow({ repository, tag }: { repository: string; tag: TagSummary }) {
  return (
    <tr>
      <td>
        <a href={href.image(repository, tag.name)}>{tag.name}</a>
      </td>
      <td>
        <DigestLink repository={repository} digest={tag.digest} />
      </td>
      <td>
        <Size bytes={tag.size} />
      </td>
      <td>{tag.platforms ? tag.platforms.map(formatPlatform).join(', ') : '—'}</td>
      <td>
        <Time iso={tag.pushedAt} />
        {tag.pushedBy && ` by ${tag.pushedBy}`}
      </td>
      <td>
        <a href={href.timeline(repository, tag.name)} aria-label={`Timeline of ${tag.name}`}>
          Timeline
        </a>
      </td>
    </tr>
  );
}

export function TagsView({ repository }: { repository: string }) {
  useTitle(repository);
  const search = usePagedSearch();
  const load = useLoad(
    (signal) => fetchTags({ repository, q: search.query, after: search.after }, signal),
    [repository, search.query, search.after],
  );
  return (
    <>
      <h1>{repository}</h1>
      <p>
        <a href={href.audit({ repository })}>Events of {repository}</a>
      </p>
      <SearchBox id="tag-search" label="Search tags" search={search} />
      <Loaded load={load}>
        {(page) =>
          page.items.length === 0 ? (
            <Empty>No tags</Empty>
          ) : (
            <DataTable label="Tags" columns={['Tag', 'Digest', 'Size', 'Platforms', 'Pushed', 'History']}>
              {page.items.map((tag) => (
                <TagRow key={tag.name} repository={repository} tag={tag} />
              ))}
            </DataTable>
          )
        }
      </Loaded>
      <Pager search={search} next={load.value?.next ?? null} />
    </>
  );
}
