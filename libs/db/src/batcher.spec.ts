import { Batcher } from './batcher';

/** A batch function whose calls are recorded and finished by the test. */
function controlled<I>() {
  const calls: { items: readonly I[]; finish: (results: readonly (I | Error)[] | Error) => void }[] = [];
  const run = (items: readonly I[]): Promise<readonly (I | Error)[]> =>
    new Promise((resolve, reject) => {
      calls.push({ items, finish: (r) => (r instanceof Error ? reject(r) : resolve(r)) });
    });
  return { calls, run };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('Batcher', () => {
  it('sends a lone item at once, and items that come while a batch is under way together after it', async () => {
    const { calls, run } = controlled<number>();
    const batcher = new Batcher(run, { maxBatch: 10, maxInFlight: 1 });
    const first = batcher.submit(1);
    expect(calls.map((c) => c.items)).toEqual([[1]]);
    const rest = [2, 3, 4].map((n) => batcher.submit(n));
    expect(calls).toHaveLength(1);
    calls[0]!.finish([1]);
    expect(await first).toBe(1);
    await tick();
    expect(calls.map((c) => c.items)).toEqual([[1], [2, 3, 4]]);
    calls[1]!.finish([20, 30, 40]);
    expect(await Promise.all(rest)).toEqual([20, 30, 40]);
  });

  it('keeps up to maxInFlight batches under way and at most maxBatch items in each', async () => {
    const { calls, run } = controlled<number>();
    const batcher = new Batcher(run, { maxBatch: 2, maxInFlight: 2 });
    const all = [1, 2, 3, 4, 5, 6, 7].map((n) => batcher.submit(n));
    expect(calls.map((c) => c.items)).toEqual([[1], [2]]);
    calls[0]!.finish([1]);
    await tick();
    expect(calls.map((c) => c.items)).toEqual([[1], [2], [3, 4]]);
    calls[1]!.finish([2]);
    await tick();
    expect(calls.map((c) => c.items)).toEqual([[1], [2], [3, 4], [5, 6]]);
    calls[2]!.finish([3, 4]);
    calls[3]!.finish([5, 6]);
    await tick();
    expect(calls.map((c) => c.items)).toEqual([[1], [2], [3, 4], [5, 6], [7]]);
    calls[4]!.finish([7]);
    expect(await Promise.all(all)).toEqual([1, 2, 3, 4, 5, 6, 7]);
  });

  it('fails only the item answered with an Error, or every item of a batch that failed as a whole', async () => {
    const { calls, run } = controlled<number>();
    const batcher = new Batcher(run, { maxBatch: 10, maxInFlight: 1 });
    const first = batcher.submit(0);
    const [a, b] = [batcher.submit(1), batcher.submit(2)];
    const [c, d] = [batcher.submit(3), batcher.submit(4)];
    calls[0]!.finish(new Error('connection lost'));
    await expect(first).rejects.toThrow('connection lost');
    await tick();
    calls[1]!.finish([1, new Error('not this one'), 3, 4]);
    expect(await a).toBe(1);
    await expect(b).rejects.toThrow('not this one');
    expect([await c, await d]).toEqual([3, 4]);
  });

  it('fails a batch whose results do not match its items one for one', async () => {
    const { calls, run } = controlled<number>();
    const batcher = new Batcher(run, { maxBatch: 10, maxInFlight: 1 });
    const one = batcher.submit(1);
    calls[0]!.finish([1, 2]);
    await expect(one).rejects.toThrow('batch of 1 items answered 2 results');
  });

  it('fails the batch of a run that throws before returning a promise, and goes on with the next', async () => {
    let calls = 0;
    const batcher = new Batcher<number, number>(
      (items) => {
        if (calls++ === 0) throw new Error('thrown at once');
        return Promise.resolve(items.map((n) => n * 2));
      },
      { maxBatch: 10, maxInFlight: 1 },
    );
    await expect(batcher.submit(1)).rejects.toThrow('thrown at once');
    expect(await batcher.submit(2)).toBe(4);
  });
});
