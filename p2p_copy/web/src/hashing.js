// @ts-check
/**
 * File digests (protocol.md §6.7) computed beside the transfer rather than in its way: in a
 * dedicated worker where the core runs in a browser, so that the page's main thread seals,
 * sends and stores while the worker hashes (BLAKE3 in WebAssembly was the largest cost
 * left on it); over a MessageChannel in the same thread where there is no worker (Node,
 * or a page whose Content-Security-Policy forbids blob: workers). Both ends run
 * hash-worker.js.
 *
 * Requests are queued (init, prefix, update, digest) and go out with flush(), in order.
 * The bytes of update() are handed over, not copied: their buffer is unusable until the
 * worker gives it back, to `reuse`. flush() waits while more than HELD bytes are with the
 * worker, so what a fast sender or receiver piles up there stays bounded.
 */
import { P2PError } from "./protocol/errors.js";

/** Bytes handed to the worker and not hashed yet, at most. */
export const HELD = 4 * 1024 * 1024;
/** Bytes gathered before they go to the worker, when the caller lets flush() wait for more. */
export const BATCH = 1024 * 1024;

/** The worker's code as a blob: URL, made once (build.mjs defines HASH_WORKER in bundles). */
let workerUrl = "";
/** Milliseconds a new worker has to answer its first message. */
const WORKER_START = 10_000;

/** @returns {Promise<{port: any, close: () => void}>} */
async function connect() {
  // @ts-ignore: replaced by the worker's bundled code in the page and the notebook panel
  if (typeof HASH_WORKER === "string") {
    const worker = await startWorker();
    if (worker) return { port: worker, close: () => worker.terminate() };
  }
  const { serve } = await import("./hash-worker.js");
  const { port1, port2 } = new MessageChannel();
  serve(port2);
  return { port: port1, close: () => { port1.close(); port2.close(); } };
}

/**
 * The digests' worker, once it answered an empty batch; null where the page may not start
 * one (a Content-Security-Policy without `worker-src blob:`, as a Jupyter server or a hub
 * may send): then the digests are computed in the page's own thread, slower but whole.
 * A blob: URL, not a file beside the page: the notebook panel is itself loaded from a blob:
 * URL, with nothing to resolve a path against (the page's CSP allows blob: workers).
 * @returns {Promise<Worker | null>}
 */
async function startWorker() {
  /** @type {Worker} */
  let worker;
  try {
    // @ts-ignore
    workerUrl ||= URL.createObjectURL(new Blob([HASH_WORKER], { type: "text/javascript" }));
    worker = new Worker(workerUrl, { name: "p2p-copy digests" });
  } catch (error) {
    return noWorker(error);
  }
  const answered = await new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), WORKER_START);
    worker.onmessage = () => { clearTimeout(timer); resolve(true); };
    worker.onerror = (event) => { event.preventDefault(); clearTimeout(timer); resolve(false); };
    worker.postMessage({ ops: [] });
  });
  worker.onmessage = null;
  worker.onerror = null;
  if (answered) return worker;
  worker.terminate();
  return noWorker("it did not start");
}

function noWorker(why) {
  console.warn(`p2p-copy: no worker for the file digests here (${why?.message ?? why}); computing them in this page.`);
  return null;
}

export class Hashing {
  /**
   * @param {string} algorithm "blake3" | "sha256" (digests.js)
   * @param {{reuse?: (buffer: ArrayBuffer) => void}} [options] takes the buffers back
   */
  static async start(algorithm, { reuse = () => {} } = {}) {
    const { port, close } = await connect();
    return new Hashing(algorithm, port, close, reuse);
  }

  constructor(algorithm, port, disconnect, reuse) {
    this.algorithm = algorithm;
    this.port = port;
    this.disconnect = disconnect;
    this.reuse = reuse;
    /** @type {any[]} */
    this.ops = [];
    /** @type {Set<ArrayBuffer>} */
    this.transfer = new Set();
    this.held = 0;
    this.queued = 0;
    /** A digest is queued: the next flush() sends at once. */
    this.urgent = false;
    this.ids = 0;
    /** @type {Map<number, {resolve: (hex: string) => void, reject: (error: Error) => void}>} */
    this.waiting = new Map();
    /** @type {P2PError | null} the worker stopped (it failed to load, or crashed) */
    this.broken = null;
    /** @type {(() => void) | null} */
    this.wake = null;
    port.onmessage = (/** @type {MessageEvent} */ event) => this.answer(event.data);
    port.onerror = (/** @type {any} */ event) => {
      this.stop(new P2PError("internal", `The worker that computes the digests stopped: ${event?.message || "it could not be started"}.`,
        { wire: "internal" }));
      event?.preventDefault?.();
    };
  }

  /** Starts a digest over. */
  init() {
    this.ops.push({ init: this.algorithm });
  }

  /**
   * Starts a digest over with the first `offset` bytes of `source` (a Blob, read by the
   * worker; or bytes, copied). A source that cannot be read fails the next digest.
   * @param {Blob | Uint8Array} source @param {number} offset
   */
  prefix(source, offset) {
    this.ops.push({ init: this.algorithm }, { prefix: source, offset });
  }

  /** Adds `bytes`; their buffer is handed over at the next flush(). @param {Uint8Array} bytes */
  update(bytes) {
    if (!bytes.length) return;
    this.ops.push({ bytes });
    this.transfer.add(/** @type {ArrayBuffer} */ (bytes.buffer));
    this.queued += bytes.length;
  }

  /**
   * The digest (hex) of what was added since the last init() or prefix(), once flushed.
   * @returns {Promise<string>}
   */
  digest() {
    const id = (this.ids += 1);
    this.ops.push({ digest: id });
    this.urgent = true;
    const answer = new Promise((resolve, reject) => this.waiting.set(id, { resolve, reject }));
    // Awaited by the caller, maybe later than a failure: never an unhandled rejection.
    answer.catch(() => {});
    if (this.broken) this.stop(this.broken);
    return /** @type {Promise<string>} */ (answer);
  }

  /**
   * Sends what is queued (with `batch`, only once that many bytes are, or a digest is);
   * waits while more than HELD bytes are with the worker.
   */
  async flush({ batch = 0 } = {}) {
    if (!this.urgent && this.queued < batch) return;
    if (this.ops.length && !this.broken) {
      this.port.postMessage({ ops: this.ops }, [...this.transfer]);
      this.held += this.queued;
    }
    this.ops = [];
    this.transfer.clear();
    this.queued = 0;
    this.urgent = false;
    while (this.held > HELD && !this.broken) {
      await new Promise((resolve) => { this.wake = () => resolve(undefined); });
    }
    if (this.broken) throw this.broken;
  }

  /** @param {{done: number, digests: {id: number, hex?: string, error?: string}[], back: ArrayBuffer[]}} data */
  answer({ done, digests, back }) {
    this.held -= done;
    for (const buffer of back) this.reuse(buffer);
    for (const { id, hex, error } of digests) {
      const waiting = this.waiting.get(id);
      this.waiting.delete(id);
      if (error === undefined) waiting?.resolve(/** @type {string} */ (hex));
      else waiting?.reject(new Error(error));
    }
    this.notify();
  }

  /** Ends the worker; digests not answered yet fail. */
  close() {
    this.disconnect();
    if (!this.broken) this.stop(new P2PError("internal", "The worker that computes the digests was closed.", { wire: "internal" }));
  }

  /** @param {P2PError} error */
  stop(error) {
    this.broken = error;
    for (const waiting of this.waiting.values()) waiting.reject(error);
    this.waiting.clear();
    this.notify();
  }

  notify() {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }
}
