// @ts-check
/**
 * The receiving side of a transfer (protocol.md §6.3): manifest parts checked against
 * §7 and the default limits, the offer put to the sink, accept (digest, held, window),
 * prefix digests, the data stream written through the sink as it arrives, each file
 * verified before the sink may keep it, eof, done.
 *
 * Flow control: when the manifest says `"ack": true` we announce WINDOW in accept and
 * send `ack`s once what storage took since the last one reaches WINDOW / 4, so the
 * sender never has more than WINDOW bytes in flight towards this page.
 *
 * The sink: offer(summary) -> bool, held(files) -> [[file, offset]] (optional),
 * prefix(file, offset) -> a Blob or bytes, mkdir(path, entry), open(path, size, {offset})
 * -> a writer {write(bytes), close(), abort()}, done(), abort(error). A writer keeps
 * nothing of `bytes` once write() resolves: their buffer goes to the hashing worker next.
 */
import { normalizeCode } from "./protocol/codes.js";
import { pickDigest } from "./protocol/digests.js";
import { asP2PError, P2PError, violation } from "./protocol/errors.js";
import { BLOCK, DATA_RAW } from "./protocol/messages.js";
import { checkManifest, displayName, ManifestLimits, summarizeOffer } from "./protocol/paths.js";
import { equalConstantTime } from "./protocol/secure.js";
import { ReceiverStream } from "./protocol/stream.js";
import { BATCH, Hashing } from "./hashing.js";
import { Channel, Link, peerError } from "./peer.js";

export const WINDOW = 8 * 1024 * 1024;
const MESSAGE_TIMEOUT = 300_000;

/**
 * Receive into `sink` (see index.js for its methods).
 * @param {{relay: string, code: string, sink: any, onEvent?: (e: any) => void, signal?: AbortSignal,
 *   token?: string, WebSocket?: any, windowsNames?: boolean, testing?: any}} options
 *   token: a private relay's access token (Link.open).
 */
export async function receive({ relay, code, sink, onEvent = () => {}, signal = undefined, token = undefined,
  WebSocket = globalThis.WebSocket, windowsNames = defaultWindowsNames(), testing = {} }) {
  let link;
  let theCode;
  try {
    theCode = normalizeCode(code);
    onEvent({ type: "connecting" });
    link = await Link.open({ relay, code: theCode, role: "receiver", token, WebSocket, signal });
  } catch (error) {
    const failure = asP2PError(error);
    onEvent({ type: "error", error: failure });
    throw failure;
  }
  const channel = new Channel(link);
  const run = new Receiving(channel, sink, onEvent, windowsNames);
  try {
    let first = await channel.receive();
    if (first.type === "waiting") {
      onEvent({ type: "waiting", code: theCode });
      first = await channel.receive();
    }
    onEvent({ type: "paired" });
    onEvent({ type: "verifying" });
    await channel.handshake("receiver", theCode, { ...testing, first });
    const result = await run.transfer();
    await link.close(true);
    onEvent({ type: "done", result });
    return result;
  } catch (error) {
    let failure = asP2PError(error);
    if (failure.kind === "connection_lost") failure = await channel.explain(failure);
    await run.abort(failure);
    await channel.fail(failure);
    onEvent({ type: "error", error: failure });
    throw failure;
  } finally {
    run.hashing?.close();
  }
}

/** What the sender reads when our storage fails, by the storage error's kind. */
const STORAGE_WIRE = {
  disk_full: ["disk_full", "The receiver does not have enough space for the files."],
  exists: ["exists", "A file of that name already exists on the receiver's side."],
  cancelled: ["cancelled", "The receiver cancelled."],
};

/**
 * A failure of the sink (the page's storage) as a P2PError of kind "storage" that keeps
 * the sink's own error as `cause` (its words are for the person on this side).
 */
export function storageFailure(error) {
  if (error instanceof P2PError) return error;
  const [wire, peerMessage] = STORAGE_WIRE[error?.kind] ?? ["internal", "The receiver could not save the files."];
  return new P2PError("storage", String(error?.message ?? error), { wire, peerMessage, cause: error });
}

/** `await`s a call into the sink, turning its failures into storageFailure()s. */
async function sinkCall(promise) {
  try {
    return await promise;
  } catch (error) {
    throw storageFailure(error);
  }
}

/** Names Windows cannot store are refused where the page runs on Windows (policy.py's default). */
function defaultWindowsNames() {
  const nav = /** @type {any} */ (globalThis.navigator);
  const platform = nav?.userAgentData?.platform ?? nav?.platform ?? "";
  return /^win/i.test(platform);
}

class Receiving {
  constructor(channel, sink, onEvent, windowsNames) {
    this.channel = channel;
    this.sink = sink;
    this.onEvent = onEvent;
    this.windowsNames = windowsNames;
    /** Writers of files received but not verified yet: aborted if the transfer fails. */
    this.open = new Map();
    this.aborted = false;
    /** A receive() started while the offer was open: the next message. */
    this.pending = null;
    /** @type {Hashing | null} once the digest is agreed */
    this.hashing = null;
  }

  async next() {
    const pending = this.pending;
    this.pending = null;
    const message = pending ? await pending : await this.channel.receive(MESSAGE_TIMEOUT, "the sender");
    if (message.type === "error") throw peerError(message.code, message.message);
    return message;
  }

  async transfer() {
    const { entries, digests, ack } = await this.manifest();
    const files = [];
    const dirs = [];
    for (const entry of entries) (entry.kind === "dir" ? dirs : files).push(entry);
    if (files.some((entry) => entry.kind === "stream")) {
      throw new P2PError("policy", "The sender sends a stream of unknown length, which this receiver does not take.",
        { wire: "policy", peerMessage: "The receiver (a web page) does not take streams of unknown length." });
    }
    const summary = summarizeOffer(entries);
    this.onEvent({ type: "offer", summary });
    // While the person decides, keep reading: the sender may give up (an `error`, or its
    // connection ends), and the question must not outlive it. Nothing else may come yet.
    const watching = this.channel.receive();
    watching.catch(() => {});
    const answer = await Promise.race([
      sinkCall(this.sink.offer(summary, entries)).then((taken) => ({ taken })),
      watching.then((message) => ({ message })),
    ]);
    if ("message" in answer) {
      const message = answer.message;
      if (message.type === "error") throw peerError(message.code, message.message);
      throw violation(`'${message.type}' before the receiver's answer`);
    }
    this.pending = watching;
    const taken = answer.taken;
    if (!taken) {
      throw new P2PError("declined", "The offer was declined.", { wire: "cancelled", peerMessage: "The receiver declined the offer." });
    }
    const digest = pickDigest(digests);
    const accept = { type: "accept" };
    if (digests !== null) accept.digest = digest;
    const held = await this.heldPrefixes(files);
    if (held.length) accept.held = held;
    const window = ack ? WINDOW : 0;
    if (window) accept.window = window;
    await this.channel.send(accept);
    this.hashing = await Hashing.start(digest);
    this.digest = digest;
    const offsets = new Array(files.length).fill(0);
    let first = null;
    if (held.length) {
      first = await this.next();
      if (first.type === "prefix_digests") {
        const agreed = await this.comparePrefixes(files, held, first.files);
        for (const [file, offset] of agreed) offsets[file] = offset;
        await this.channel.send({ type: "resume", files: agreed });
        first = null;
      }
    }
    return this.stream(files, dirs, offsets, window, first);
  }

  /** Manifest parts until the last; limits per part, the path rules on the whole (§6.4, §7). */
  async manifest() {
    const limits = new ManifestLimits();
    const entries = [];
    let digests = null;
    let ack = false;
    for (let part = 0; ; part++) {
      const message = await this.next();
      if (message.type !== "manifest") throw violation(`expected the manifest, got '${message.type}'`);
      if (part === 0) { digests = message.digests; ack = message.ack; }
      limits.add(message.entries, message.more);
      entries.push(...message.entries);
      if (!message.more) break;
    }
    checkManifest(entries, { windowsNames: this.windowsNames, limits });
    return { entries, digests, ack };
  }

  /** The sink's held prefixes, filtered to what §6.5.1 allows. */
  async heldPrefixes(files) {
    if (!this.sink.held) return [];
    const seen = new Set();
    const held = [];
    for (const [file, offset] of await sinkCall(this.sink.held(files.map((f) => ({ path: f.path, size: f.size, mtime: f.mtime }))))) {
      const entry = files[file];
      if (!entry || seen.has(file) || offset <= 0 || offset > entry.size || (offset % BLOCK !== 0 && offset !== entry.size)) continue;
      seen.add(file);
      held.push([file, offset]);
    }
    return held;
  }

  async comparePrefixes(files, held, proofs) {
    const offered = new Map(held);
    const seen = new Set();
    const agreed = [];
    for (const [file, offset, theirs] of proofs) {
      if (offered.get(file) !== offset || seen.has(file)) throw violation("'prefix_digests' names a prefix that was not held, or one twice");
      seen.add(file);
      const ours = await this.prefixDigest(file, offset);
      if (equalConstantTime(ours, theirs)) {
        agreed.push([file, offset]);
      } else if (offset === files[file].size) {
        const name = displayName(files[file].path);
        throw new P2PError("exists", `'${name}' already exists here and differs from the sender's.`, { wire: "exists",
          peerMessage: `'${name}' already exists on the receiver's side and differs from the sender's. The receiver `
            + "must remove it, or receive into another folder." });
      }
    }
    return agreed;
  }

  /** The digest of the first `offset` bytes the sink holds of file `file`. */
  async prefixDigest(file, offset) {
    this.hashing.prefix(await sinkCall(this.sink.prefix(file, offset)), offset);
    return this.digestOf(this.hashing.digest());
  }

  /** A digest from the hashing worker; a held part it could not read is the sink's failure. */
  async digestOf(digest) {
    await this.hashing.flush();
    return sinkCall(digest);
  }

  /** The data stream, checksums, eof (§6.6-6.8); `first` is a message already read. */
  async stream(files, dirs, offsets, window, first) {
    const stream = new ReceiverStream(files.map((file) => file.size), offsets, window);
    /** @type {Promise<string>[]} the digest of each complete file, by file number */
    const digests = [];
    const hashing = this.hashing;
    let writer = null;
    /**
     * Does what the stream's pieces say: open, write, then hash (the worker takes the
     * payload's buffer, so every write is done first), finish.
     */
    const handle = async (pieces, payload) => {
      /** @type {Map<number, Blob | Uint8Array>} what a resumed file starts from */
      const prefixes = new Map();
      for (const piece of pieces) {
        const file = files[piece.file];
        const offset = offsets[piece.file];
        if (piece.opens) {
          // The held part, taken before a writer opens the file again.
          if (offset > 0) prefixes.set(piece.file, await sinkCall(this.sink.prefix(piece.file, offset)));
          // A file held whole (§6.5.1) is verified where it lies: nothing to open.
          writer = offset === 0 || offset < file.size
            ? await sinkCall(this.sink.open(file.path, file.size, { offset })) : null;
          if (writer) this.open.set(piece.file, writer);
        }
        if (piece.end > piece.start) await sinkCall(writer.write(payload.subarray(piece.start, piece.end)));
      }
      for (const piece of pieces) {
        const prefix = prefixes.get(piece.file);
        if (piece.opens && prefix) hashing.prefix(prefix, offsets[piece.file]);
        else if (piece.opens) hashing.init();
        if (piece.end > piece.start) hashing.update(payload.subarray(piece.start, piece.end));
        if (piece.completes) digests[piece.file] = hashing.digest();
      }
      // A message at a time would be one round trip to the worker per 256 KiB.
      await hashing.flush({ batch: BATCH });
    };
    await handle(stream.takeEmpty(), null);
    for (;;) {
      const message = first ?? await this.next();
      first = null;
      if (message.type === "data") {
        const data = message.data;
        if (data.length < 2 || data[0] !== DATA_RAW) throw violation("a data message must be kind 0x00 with at least one byte");
        await handle(stream.take(data.length - 1, message.mark), data.subarray(1));
        this.onEvent({ type: "progress", bytes: stream.received, total: stream.total });
        const ack = stream.ackDue();
        if (ack !== null) {
          await this.channel.send({ type: "ack", bytes: ack });
          this.channel.link.mark = ack;
        }
      } else if (message.type === "checksums") {
        for (const index of stream.checksums(message, this.digest)) {
          const file = files[index];
          const own = this.open.get(index);
          this.open.delete(index);
          if (!equalConstantTime(message.digests[index - message.first], await this.digestOf(digests[index]))) {
            await own?.abort();
            const name = displayName(file.path);
            throw new P2PError("integrity", `'${name}' arrived damaged: its digest does not match the sender's. Nothing of it was kept.`,
              { wire: "integrity", peerMessage: `'${name}' did not match its digest on the receiver's side.` });
          }
          await sinkCall(own?.close());
          this.onEvent({ type: "file", path: file.path, verified: true });
        }
      } else if (message.type === "eof") {
        stream.eof();
        break;
      } else {
        throw violation(`'${message.type}' is not expected while receiving`);
      }
    }
    // Deepest first, as the Python receiver does, so a folder's own time is set last.
    for (const dir of [...dirs].sort((a, b) => b.path.split("/").length - a.path.split("/").length)) await sinkCall(this.sink.mkdir(dir.path, dir));
    await sinkCall(this.sink.done?.());
    await this.channel.send({ type: "done" });
    return { files: files.length, dirs: dirs.length, bytes: stream.received, digest: this.digest, window };
  }

  /** Discard every unverified file; tell the sink why. */
  async abort(error) {
    if (this.aborted) return;
    this.aborted = true;
    for (const writer of this.open.values()) {
      try { await writer.abort(); } catch { /* already gone */ }
    }
    this.open.clear();
    try { await this.sink.abort?.(error); } catch { /* the sink's own trouble */ }
  }
}
