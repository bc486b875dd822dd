export interface BatcherOptions {
  /** At most this many items go into one call of `run`. */
  readonly maxBatch: number;
  /** At most this many calls of `run` are under way at once; items that come meanwhile wait and go together. */
  readonly maxInFlight: number;
}

interface Pending<I, O> {
  readonly item: I;
  readonly resolve: (value: O) => void;
  readonly reject: (reason: unknown) => void;
}

/**
 * Natural batching, as group commit does it: an item goes at once when fewer than `maxInFlight` batches are under
 * way, and otherwise waits for one to finish and goes with every item that came meanwhile. A lone request pays no
 * delay; under load, many requests share one round trip and one commit.
 *
 * `run` answers each item in order, an `Error` for one item failing only that item's promise. A rejection of
 * `run` as a whole fails every item of that batch.
 */
export class Batcher<I, O> {
  private readonly queue: Pending<I, O>[] = [];
  private inFlight = 0;

  constructor(
    private readonly run: (items: readonly I[]) => Promise<readonly (O | Error)[]>,
    private readonly options: BatcherOptions,
  ) {}

  submit(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      this.drain();
    });
  }

  private drain(): void {
    while (this.inFlight < this.options.maxInFlight && this.queue.length > 0) {
      const batch = this.queue.splice(0, this.options.maxBatch);
      this.inFlight++;
      void this.runBatch(batch).finally(() => {
        this.inFlight--;
        this.drain();
      });
    }
  }

  private async runBatch(batch: readonly Pending<I, O>[]): Promise<void> {
    let results: readonly (O | Error)[];
    try {
      // Inside the try, so even a `run` that throws before returning its promise fails only its batch.
      results = await this.run(batch.map((p) => p.item));
      if (results.length !== batch.length)
        throw new Error(`batch of ${batch.length} items answered ${results.length} results`);
    } catch (e) {
      for (const p of batch) p.reject(e);
      return;
    }
    batch.forEach((p, i) => {
      const r = results[i] as O | Error;
      if (r instanceof Error) p.reject(r);
      else p.resolve(r);
    });
  }
}
