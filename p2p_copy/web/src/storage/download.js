// @ts-check
// Saving as ordinary downloads, where the File System Access API is missing (Firefox,
// Safari, phones). The service worker (src/sw.js) pulls each download's body from this page
// chunk by chunk, so the browser writes it to disk as it arrives, with Content-Length set
// (Safari cuts a streamed download without it). One file is one download under its own
// name (downloadTarget); several files or any folder are one .zip that keeps the folders
// (zipDownloadTarget, written by zip.js, whose length the manifest gives in advance).
// Without a service worker, a small transfer is kept in memory and saved at the end (the
// same file or zip); a big one is refused before it is accepted.
//
// A download ends (the browser shows it complete) only after the digests matched: a single
// file at its verified close, a zip at the transfer's done. Any failure aborts the stream,
// and the browser marks the download failed.

import { coalescing } from "./coalesce.js";
import { StorageError, storageError } from "./errors.js";
import { zipTarget } from "./zip.js";

/** Largest transfer kept in memory when no service worker can stream it. */
export const MEMORY_LIMIT = 256 * 1024 * 1024;
/** A browser stops an idle service worker after about 30 s; ping well within that. */
const KEEP_ALIVE_MS = 10_000;
const READY_TIMEOUT_MS = 4_000;
/** How long a started download may take to ask for its first bytes. */
const START_TIMEOUT_MS = 20_000;
/** Bytes per chunk handed to the worker (one round trip each). */
const CHUNK = 1024 * 1024;

/** The name a received path gets as a download of its own: folders flattened into it. */
export function downloadName(path) {
  return path.split("/").join("_");
}

let unloadQuietUntil = 0;

/**
 * Whether a beforeunload now comes from a download this page started (a navigation to a
 * download URL, which leaves the page in place): the "leave the page?" question must not
 * be asked then.
 */
export function startingDownload() {
  return Date.now() < unloadQuietUntil;
}

/**
 * Start a download without leaving the page. ``navigate``: a service-worker URL must be
 * opened as a navigation: Chromium fetches <a download> links without asking the worker.
 */
function startDownload(url, name, { navigate = false } = {}, doc = document) {
  const a = doc.createElement("a");
  a.href = url;
  if (navigate) unloadQuietUntil = Date.now() + 2000;
  else a.download = name;
  a.hidden = true;
  doc.body.append(a);
  a.click();
  a.remove();
}

/** The registration of static/sw.js, or null where service workers are missing. */
let registration = null;

/**
 * Registers the service worker early (at page load), so that it is ready by the time a
 * transfer is accepted. Scope: the static/ folder beside the page.
 */
export function registerServiceWorker(nav = globalThis.navigator) {
  if (!nav || !nav.serviceWorker || !globalThis.isSecureContext) return Promise.resolve(null);
  registration = nav.serviceWorker
    .register("static/sw.js", { scope: "static/" })
    .then(() => nav.serviceWorker.getRegistration("static/"))
    .catch(() => null);
  return registration;
}

/** The active worker once it answers a ping, or null. */
async function readyWorker() {
  const reg = await registration;
  if (!reg) return null;
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const worker = reg.active;
    if (worker) {
      const ok = await new Promise((resolve) => {
        const channel = new MessageChannel();
        const timer = setTimeout(() => resolve(false), 1000);
        channel.port1.onmessage = () => {
          clearTimeout(timer);
          resolve(true);
        };
        worker.postMessage({ type: "ping" }, [channel.port2]);
      });
      if (ok) return worker;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return null;
}

/** The worker, if a service-worker download can be used here (asked when the offer arrives). */
export function serviceWorkerReady() {
  return readyWorker();
}

let downloadCounter = 0;

/** One streamed download through the worker; resolves to a writer. */
async function openDownload(worker, name, size) {
  const id = `${Date.now().toString(36)}-${(downloadCounter += 1)}-${crypto.getRandomValues(new Uint32Array(1))[0].toString(36)}`;
  const channel = new MessageChannel();
  const port = channel.port1;
  const chunkSize = Math.max(1, Math.min(size, CHUNK));
  // Buffers the worker hands back once the download has taken their bytes: reused, so a
  // transfer makes no garbage per chunk (1 MiB chunks left to the garbage collector piled
  // up to ~400 MiB in Chromium before it freed them).
  /** @type {Uint8Array[]} */
  const pool = [];
  let credits = 0;
  let started = false;
  /** @type {(() => void) | null} */
  let waiting = null;
  /** @type {Error | null} */
  let cancelled = null;
  const ready = new Promise((resolve) => {
    port.onmessage = (event) => {
      const msg = event.data || {};
      if (msg.type === "ready") resolve(undefined);
      else if (msg.type === "pull") {
        credits += 1;
        started = true;
        if (msg.back instanceof ArrayBuffer && msg.back.byteLength === chunkSize) pool.push(new Uint8Array(msg.back));
      }
      else if (msg.type === "cancel") {
        cancelled = new StorageError("cancelled", `The download of ${name} was cancelled in the browser.`);
      }
      if (waiting) {
        const w = waiting;
        waiting = null;
        w();
      }
    };
  });
  worker.postMessage({ type: "download", id, name, size }, [channel.port2]);
  await ready;
  const scope = new URL("static/", document.baseURI);
  startDownload(new URL(`dl/${id}/${encodeURIComponent(name)}`, scope).href, name, { navigate: true });
  const ping = setInterval(() => worker.postMessage({ type: "ping" }), KEEP_ALIVE_MS);
  // A download the browser never starts asks for no bytes: say so rather than wait forever.
  const noStart = setTimeout(() => {
    if (credits === 0 && !started && !cancelled) {
      cancelled = new StorageError("unavailable",
        `The browser did not start the download of ${name}. Reload the page and try again, or receive with the command line.`);
      if (waiting) waiting();
    }
  }, START_TIMEOUT_MS);
  let ended = false;
  const finish = () => {
    ended = true;
    clearInterval(ping);
    clearTimeout(noStart);
  };
  // Backpressure: a chunk goes out only when the download asked for one.
  const gathered = coalescing(async (bytes) => {
    while (credits === 0 && !cancelled) await new Promise((r) => { waiting = () => r(undefined); });
    if (cancelled) throw cancelled;
    credits -= 1;
    port.postMessage({ type: "chunk", data: bytes }, [bytes.buffer]);
  }, { size: chunkSize, fresh: true, allocate: (n) => pool.pop() || new Uint8Array(n) });
  return {
    write: (chunk) => gathered.write(chunk),
    async close() {
      if (ended) return;
      await gathered.end();
      finish();
      port.postMessage({ type: "end" });
    },
    async abort() {
      if (ended) return;
      finish();
      port.postMessage({ type: "abort", reason: "the transfer stopped" });
    },
  };
}

/** Storage that saves each received file as a download streamed through the worker. */
export function downloadTarget(worker) {
  return {
    kind: "download",
    describe: (done = false) => (done ? "Saved to your downloads folder" : "Saving to your downloads folder"),
    async mkdir() {
      // Downloads have no folders; the files' names carry their folder (a_b.txt).
    },
    async open(path, size, { offset = 0 } = {}) {
      if (offset) throw new StorageError("io", "A download cannot be resumed.");
      try {
        return await openDownload(worker, downloadName(path), size);
      } catch (e) {
        throw storageError(e, path);
      }
    },
    async done() {},
    async abort() {},
  };
}

/** A writer that keeps the bytes in memory and saves them as ``name`` at close(). */
function memoryWriter(name) {
  /** @type {Uint8Array[]} */
  let parts = [];
  return {
    /** @param {Uint8Array} chunk */
    async write(chunk) {
      parts.push(chunk.slice());
    },
    async close() {
      const url = URL.createObjectURL(new Blob(parts, { type: "application/octet-stream" }));
      parts = [];
      startDownload(url, name);
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    },
    async abort() {
      parts = [];
    },
  };
}

/** Storage that keeps each file in memory and saves it when complete: the last resort. */
export function memoryTarget() {
  return {
    kind: "memory",
    describe: (done = false) => (done ? "Saved to your downloads folder" : "Saving to your downloads folder (kept in memory until complete)"),
    async mkdir() {},
    async open(path, _size, { offset = 0 } = {}) {
      if (offset) throw new StorageError("io", "A download cannot be resumed.");
      return memoryWriter(downloadName(path));
    },
    async done() {},
    async abort() {},
  };
}

/**
 * Storage that saves a whole manifest (``entries``, in its order) as one .zip download:
 * streamed through ``worker``, or, with none, kept in memory and saved at the end.
 * @param {any[]} entries
 * @param {any} worker
 */
export function zipDownloadTarget(entries, worker = null) {
  const zip = zipTarget(entries, async (name, length) => {
    if (!worker) return memoryWriter(name);
    try {
      return await openDownload(worker, name, length);
    } catch (e) {
      throw storageError(e, name);
    }
  });
  const where = `your downloads folder as ${zip.name}`;
  return {
    kind: worker ? "download" : "memory",
    name: zip.name,
    describe: (done = false) => (done ? `Saved to ${where}`
      : `Saving to ${where}${worker ? "" : " (kept in memory until complete)"}`),
    mkdir: (path) => zip.mkdir(path),
    open: (path, size, options = {}) => zip.open(path, size, options),
    done: () => zip.done(),
    abort: (error) => zip.abort(error),
  };
}
