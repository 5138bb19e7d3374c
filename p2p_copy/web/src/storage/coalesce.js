// @ts-check
// Received bytes arrive in pieces of up to 256 KiB; each write to a FileSystemWritable or
// each chunk handed to the service worker costs a round trip to another thread or
// process. Gathering pieces into one buffer of a few MiB first makes those round trips
// rare; the buffer is bounded, so memory stays bounded too.

/**
 * A writer that gathers pieces into a ``size``-byte buffer (give the file's size when it is
 * smaller) and passes each full buffer, and the rest at ``end()``, to ``flush``.
 * ``flush(bytes)`` must be done with ``bytes`` when its promise resolves. By default one
 * buffer is gathered while the last one is flushed (two buffers, one flush at a time), so
 * the caller does not wait for each round trip; with ``overlap: false`` write() waits for
 * each flush. With ``fresh``, each buffer is handed over for good (e.g. transferred to a
 * worker) and the next piece gets a new one, from ``allocate`` if given (a pool of buffers
 * handed back); then each flush is waited for.
 * @param {(bytes: Uint8Array) => Promise<void>} flush
 * @param {{size?: number, fresh?: boolean, overlap?: boolean, allocate?: (size: number) => Uint8Array}} [options]
 */
export function coalescing(flush, { size = 4 * 1024 * 1024, fresh = false, overlap = !fresh,
  allocate = (n) => new Uint8Array(n) } = {}) {
  size = Math.max(1, size);
  // Allocated on the first piece and dropped at the end: files written but not verified
  // yet (the core keeps their writers open) hold no buffer.
  /** @type {Uint8Array | null} */
  let buffer = null;
  /** @type {Uint8Array | null} the buffer of the flush under way, reused once it is done */
  let spare = null;
  /** @type {Promise<void> | null} */
  let flushing = null;
  let used = 0;
  const settle = async () => {
    const last = flushing;
    flushing = null;
    await last;
  };
  const emit = async () => {
    if (used === 0 || !buffer) return;
    const full = used === size ? buffer : buffer.subarray(0, used);
    used = 0;
    if (!overlap) {
      if (fresh) buffer = null;
      await flush(full);
      return;
    }
    await settle();
    [buffer, spare] = [spare, buffer];
    flushing = flush(full);
    flushing.catch(() => {});  // awaited by the next emit() or end()
  };
  return {
    /** @param {Uint8Array} piece */
    async write(piece) {
      let at = 0;
      while (at < piece.length) {
        if (!buffer) buffer = allocate(size);
        const n = Math.min(size - used, piece.length - at);
        buffer.set(piece.subarray(at, at + n), used);
        used += n;
        at += n;
        if (used === size) await emit();
      }
    },
    /** Pass on what is left, and wait until it is flushed. */
    async end() {
      await emit();
      await settle();
      buffer = null;
      spare = null;
    },
  };
}
