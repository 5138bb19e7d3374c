// @ts-check
// Several files, or folders, saved as ONE .zip that keeps the folders, where the File System
// Access API is missing (download.js streams it through the service worker, or keeps it in
// memory). client-zip writes it: stored (uncompressed), UTF-8 names, Zip64 where a size or
// an offset needs it; and since nothing is compressed, its length follows from the manifest
// alone (names, sizes, folders): predictLength gives it before the first byte, and the
// download sends it as Content-Length (Safari cuts a streamed download without one).
//
// Entries come in manifest order, folders (empty ones too) as folder entries; each file's
// bytes go into the zip as they arrive, through a few pooled 1 MiB buffers, at the speed the
// output takes them (each write waits until the zip asked for the bytes). The zip's end (the
// central directory) is written only at done(), i.e. once every file's digest matched: a
// transfer that fails aborts the output, so a broken zip never looks complete.

import { makeZip, predictLength } from "client-zip";
import { coalescing } from "./coalesce.js";
import { StorageError } from "./errors.js";

/** Bytes gathered from the transfer before they go into the zip. */
const CHUNK = 1024 * 1024;
/** Buffers kept for reuse once the output took their bytes. */
const POOL = 4;

/**
 * The time a zip stores for a manifest's ``mtime`` (seconds, or null/absent). Zips store
 * local DOS times, 1980 to 2107 in steps of 2 s: out-of-range times are clamped, and a
 * missing one is the first DOS time, so that the same manifest always gives the same zip.
 * @param {number | null | undefined} mtime
 */
export function zipTime(mtime) {
  const earliest = new Date(1980, 0, 1);
  const latest = new Date(2107, 11, 31, 23, 59, 58);
  if (typeof mtime !== "number") return earliest;
  const time = new Date(mtime * 1000);
  if (!(time >= earliest)) return earliest;
  return time > latest ? latest : time;
}

/** client-zip's description of each manifest entry, in manifest order (no data yet). */
function describe(entries) {
  return entries.map((entry) => (entry.kind === "dir"
    ? { name: entry.path, lastModified: zipTime(entry.mtime), mode: (entry.mode ?? 0o755) & 0o777 }
    : { name: entry.path, size: entry.size, lastModified: zipTime(entry.mtime), mode: (entry.mode ?? 0o644) & 0o777 }));
}

/**
 * One file and nothing else (``summary``: the offer's counts and top names): saved as
 * itself, with the save-file picker or as one download; anything more goes into a folder
 * or one zip.
 */
export function isSingleFile(summary) {
  return summary.files === 1 && !summary.dirs && summary.names?.length === 1 && !summary.names[0].endsWith("/");
}

/**
 * The download's name: the one top folder's (``trip.zip``), else one that counts the files
 * (``p2p-copy-3-files.zip``).
 * @param {{path: string, kind?: string}[]} entries
 */
export function zipName(entries) {
  const tops = new Set(entries.map((entry) => entry.path.split("/")[0]));
  if (tops.size === 1) return `${[...tops][0]}.zip`;
  const files = entries.filter((entry) => entry.kind !== "dir").length;
  return `p2p-copy-${files}-file${files === 1 ? "" : "s"}.zip`;
}

/** The exact length of the zip of ``entries`` (the manifest's, in its order). */
export function zipLength(entries) {
  return Number(predictLength(describe(entries)));
}

function deferred() {
  /** @type {any} */
  const d = {};
  d.promise = new Promise((resolve, reject) => { d.resolve = resolve; d.reject = reject; });
  d.promise.catch(() => {});
  return d;
}

/**
 * One file's bytes on their way into the zip: a stream the zip reads, fed by give(), which
 * waits until the zip asks for bytes (its pull), so nothing piles up in between.
 */
class Pipe {
  constructor() {
    this.demand = deferred();
    /** @type {(() => void) | null} */
    this.handed = null;
    /** @type {ReadableStreamDefaultController<Uint8Array> | null} */
    this.ctrl = null;
    /** @type {any} */
    this.failed = null;
    this.stream = new ReadableStream({
      start: (controller) => { this.ctrl = controller; },
      pull: () => new Promise((resolve) => {
        this.handed = () => resolve(undefined);
        this.demand.resolve();
      }),
    }, { highWaterMark: 0 });
  }

  /** @param {Uint8Array} bytes handed over for good */
  async give(bytes) {
    await this.demand.promise;
    if (this.failed) throw this.failed;
    this.demand = deferred();
    this.ctrl?.enqueue(bytes);
    this.wake();
  }

  end() {
    if (this.failed) throw this.failed;
    this.ctrl?.close();
    this.wake();
  }

  fail(error) {
    this.failed ??= error;
    this.demand.reject(error);
    try { this.ctrl?.error(error); } catch { /* closed already */ }
    this.wake();
  }

  wake() {
    const handed = this.handed;
    this.handed = null;
    handed?.();
  }
}

/**
 * Storage (the sink's open/mkdir/done/abort) that writes ``entries`` (the whole manifest, in
 * its order) as one zip into the writer ``openOut(name, length)`` resolves to: {write,
 * close, abort}, where write(bytes) must be done with ``bytes`` when it resolves. The output
 * is opened at the first call (so an empty manifest opens none); close() comes at done().
 * @param {any[]} entries
 * @param {(name: string, length: number) => Promise<{write: (b: Uint8Array) => Promise<void>, close: () => Promise<void>, abort: () => Promise<void>}>} openOut
 */
export function zipTarget(entries, openOut) {
  const items = describe(entries);
  const name = zipName(entries);
  const length = Number(predictLength(items));
  const files = entries.filter((entry) => entry.kind !== "dir");
  /** A file's pipe by file number: made by the zip or the transfer, whichever comes first. */
  const pipes = new Map();
  const live = new Set();
  const pipeAt = (index) => {
    const pipe = pipes.get(index);
    if (pipe) {
      pipes.delete(index);
      return pipe;
    }
    const made = new Pipe();
    pipes.set(index, made);
    live.add(made);
    return made;
  };
  // Resolved at done(), when every file was verified: only then may the zip end.
  const verified = deferred();
  /** @type {Uint8Array[]} */
  const pool = [];
  const pooled = new WeakSet();
  const allocate = (n) => {
    if (n !== CHUNK) return new Uint8Array(n);
    const buffer = pool.pop() ?? new Uint8Array(CHUNK);
    pooled.add(buffer.buffer);
    return buffer;
  };
  /** @type {Error | null} */
  let failed = null;
  /** @type {Promise<any> | null} */
  let opening = null;
  /** @type {Promise<void> | null} */
  let pumping = null;
  let opened = 0;
  let written = 0;

  const fail = (error) => {
    failed ??= error;
    verified.reject(failed);
    for (const pipe of live) pipe.fail(failed);
    live.clear();
  };

  async function* feed() {
    let index = 0;
    for (const item of items) {
      if (!("size" in item)) yield item;
      else yield { ...item, input: pipeAt(index++).stream };
    }
    await verified.promise;
  }

  /** The output, opened once; the pump copies the zip into it as the zip is made. */
  function start() {
    opening ??= (async () => {
      const out = await openOut(name, length);
      const reader = makeZip(feed()).getReader();
      pumping = (async () => {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          await out.write(value);
          written += value.length;
          if (pooled.has(value.buffer) && pool.length < POOL) pool.push(new Uint8Array(value.buffer));
        }
        if (written !== length) {
          throw new StorageError("io", `The zip came out ${written} bytes long, not the ${length} announced.`);
        }
      })();
      // A failed output (the download cancelled in the browser) must free a waiting write.
      pumping.catch((error) => fail(error));
      return out;
    })();
    return opening;
  }

  return {
    name,
    length,
    async mkdir() {
      // The folders are in the zip already, where the manifest lists them.
    },
    async open(path, size, { offset = 0 } = {}) {
      if (offset) throw new StorageError("io", "A download cannot be resumed.");
      const index = opened;
      if (files[index]?.path !== path || files[index].size !== size) {
        throw new StorageError("io", `${path} is not the next file the manifest announced.`);
      }
      opened += 1;
      await start();
      if (failed) throw failed;
      const pipe = pipeAt(index);
      let got = 0;
      const gathered = coalescing((bytes) => pipe.give(bytes), { size: Math.min(size, CHUNK), fresh: true, allocate });
      const complete = async () => {
        await gathered.end();
        pipe.end();
        live.delete(pipe);
      };
      if (size === 0) await complete();
      return {
        /** @param {Uint8Array} chunk */
        async write(chunk) {
          if (got + chunk.length > size) throw new StorageError("io", `More bytes than announced for ${path}.`);
          got += chunk.length;
          await gathered.write(chunk);
          if (got === size) await complete();
        },
        async close() {
          // Verified: its bytes are in the zip already, which ends at done().
          if (got !== size) throw new StorageError("io", `${path} ended after ${got} of ${size} bytes.`);
        },
        async abort() {
          // A file that failed its check fails the whole zip.
          fail(new StorageError("io", `${path} was not received whole; the zip is incomplete.`));
        },
      };
    },
    async done() {
      if (!items.length) return; // nothing was sent: no download
      const out = await start();
      verified.resolve();
      await pumping;
      if (failed) throw failed;
      await out.close();
    },
    async abort(error) {
      fail(error ?? new StorageError("io", "The transfer stopped."));
      const out = await opening?.catch(() => null);
      await out?.abort();
    },
  };
}
