// @ts-check
/**
 * The file digests' side of `Hashing` (hashing.js): the code a dedicated worker runs in
 * the browser (hash-worker-main.js), and the same code on the other end of a
 * MessageChannel where there is no worker (Node). It takes batches of requests in order:
 *
 *   {ops: [op, ...]} with op one of
 *     {init: algorithm}            start a digest over (createHasher's names)
 *     {prefix: source, offset}     add the first `offset` bytes of a Blob (or of bytes)
 *     {bytes: Uint8Array}          add these bytes (their buffer is handed over, and back)
 *     {digest: id}                 the digest so far, answered as {id, hex} or {id, error}
 *
 * and answers each batch with {done: bytes, digests: [...], back: [...]}, handing back the
 * buffers it was given, so that a sender can fill them again. After a failure (a Blob that cannot be
 * read) every digest is answered with that error.
 */
import { createHasher } from "./protocol/digests.js";

/** @param {{postMessage: (message: any, transfer: Transferable[]) => void, onmessage: any}} port */
export function serve(port) {
  /** @type {Map<string, import("hash-wasm").IHasher>} */
  const hashers = new Map();
  /** @type {import("hash-wasm").IHasher | null} */
  let hasher = null;
  /** @type {string | null} */
  let failure = null;

  const start = async (algorithm) => {
    let made = hashers.get(algorithm);
    if (!made) {
      made = await createHasher(algorithm);
      hashers.set(algorithm, made);
    }
    made.init();
    hasher = made;
  };

  /** Hashes the first `offset` bytes of `source` (a Blob, or bytes). */
  const prefix = async (source, offset) => {
    const current = /** @type {import("hash-wasm").IHasher} */ (hasher);
    if (source instanceof Uint8Array) {
      if (source.length < offset) throw new Error("the held part is shorter than its offset");
      current.update(source.subarray(0, offset));
      return;
    }
    const reader = source.slice(0, offset).stream().getReader();
    let got = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      current.update(value);
      got += value.length;
    }
    if (got !== offset) throw new Error("it changed while it was being read");
  };

  const handle = async ({ ops }) => {
    let done = 0;
    const digests = [];
    /** @type {Set<ArrayBuffer>} */
    const back = new Set();
    for (const op of ops) {
      if ("bytes" in op) {
        done += op.bytes.length;
        back.add(op.bytes.buffer);
      }
      if (failure !== null && !("digest" in op)) continue;
      try {
        if ("init" in op) await start(op.init);
        else if ("prefix" in op) await prefix(op.prefix, op.offset);
        else if ("bytes" in op) hasher?.update(op.bytes);
        else if ("digest" in op) {
          digests.push(failure === null ? { id: op.digest, hex: hasher?.digest("hex") } : { id: op.digest, error: failure });
        }
      } catch (error) {
        failure = String(/** @type {Error} */ (error)?.message ?? error);
      }
    }
    port.postMessage({ done, digests, back: [...back] }, [...back]);
  };

  let queue = Promise.resolve();
  port.onmessage = (/** @type {MessageEvent} */ event) => {
    queue = queue.then(() => handle(event.data));
  };
}
