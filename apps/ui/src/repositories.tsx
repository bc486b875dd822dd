import type { RepositorySummary } from './api-types';
import { fetchRepositories } from './api';
import { href } from './route';
import {
  DataTable,
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

function RepositoryRow({ repository }: { repository: RepositorySummary }) {
  return (
    <tr>
      <td>
        <a href={href.tags(repository.name)}>{repository.name}</a>
      </td>
      <td>{repository.tags}</td>
      <td>
        <Size bytes={repository.size} />
      </td>
      <td>{repository.lastPush ? <Time iso={repository.lastPush} /> : '—'}</td>
    </tr>
  );
}

export function RepositoriesView() {
  useTitle('Repositories');
  const search = usePagedSearch();
  const load = useLoad(
    (signal) => fetchRepositories({ q: search.query, after: search.after }, signal),
    [search.query, search.after],
  );
  return (
    <>
      <h1>Repositories</h1>
      <SearchBox id="repository-search" label="Search repositories" search={search} />
      <Loaded load={load}>
        {(page) =>
          page.items.length === 0 ? (
            <Empty>No repositories</Empty>
          ) : (
            <DataTable label="Repositories" columns={['Name', 'Tags', 'Size', 'Last push']}>
              {page.items.map((repository) => (
                <RepositoryRow key={repository.name} repository={repository} />
              ))}
            </DataTable>
          )
        }
      </Loaded>
      <Pager search={search} next={load.value?.next ?? null} />
    </>
  );
}
