// @ts-check
/**
 * The sending side of a transfer (protocol.md §6.2): manifest, accept (digest, held,
 * window), prefix digests, the data stream with checksums, eof, done. Files are read by
 * slices, never whole; what waits in the socket is bounded by `Link.drain`, and by the
 * receiver's window when it announces one.
 */
import { generateCode, normalizeCode } from "./protocol/codes.js";
import { SUPPORTED } from "./protocol/digests.js";
import { asP2PError, P2PError, violation } from "./protocol/errors.js";
import { DATA_RAW } from "./protocol/messages.js";
import { checkPrefixes, manifestParts } from "./protocol/manifest.js";
import { checkEntries, summarizeOffer } from "./protocol/paths.js";
import { Hashing } from "./hashing.js";
import { Channel, Link, peerError } from "./peer.js";

/**
 * Bytes of file data per data message. Under 960 KiB so that the message, WebCrypto's copy
 * of it and the sealed result stay in Chromium's allocator's reusable size classes: at
 * 1 MiB each of them was mapped afresh and page-faulted in, message after message
 * (sending thread 5.9 -> 4.6 CPU-s per GiB; benchmarks/README.md).
 */
export const CHUNK = 896 * 1024;
/** Data messages sealed or sent but not yet handed to the socket, at most. */
const IN_FLIGHT = 4;
const ACCEPT_TIMEOUT = 360_000;
const RESUME_TIMEOUT = 60_000;
const DONE_TIMEOUT = 300_000;
const IDLE_TIMEOUT = 300_000;
const CODE_ATTEMPTS = 8;
/** Failures already given to onEvent (by the connection that saw them). */
const reported = new WeakSet();

/**
 * Send `entries` (see index.js). With no `code`, one is generated (and reported with an
 * event `{type: "code", code}`), and a new one drawn each time the relay says the room is
 * taken. `token`: a private relay's access token (Link.open).
 */
export async function send({ relay, code = undefined, entries, fresh = true, onEvent = () => {}, signal = undefined,
  token = undefined, WebSocket = globalThis.WebSocket, testing = {} }) {
  try {
    return await sendOnce({ relay, code, entries, fresh, onEvent, signal, token, WebSocket, testing });
  } catch (error) {
    const failure = asP2PError(error);
    if (!reported.has(failure)) onEvent({ type: "error", error: failure });
    throw failure;
  }
}

async function sendOnce({ relay, code, entries, fresh, onEvent, signal, token, WebSocket, testing }) {
  const files = entries.filter((entry) => entry.kind !== "dir");
  checkOwnEntries(entries);
  const generated = code === undefined || code === null;
  for (let attempt = 0; ; attempt++) {
    const theCode = generated ? generateCode(attempt) : normalizeCode(code);
    if (generated) onEvent({ type: "code", code: theCode });
    onEvent({ type: "connecting" });
    const link = await Link.open({ relay, code: theCode, role: "sender", fresh: generated || fresh, token, WebSocket, signal });
    const channel = new Channel(link);
    try {
      await waitReady(link, theCode, onEvent);
    } catch (error) {
      await link.close();
      if (generated && error instanceof P2PError && error.closeCode === 4002 && attempt + 1 < CODE_ATTEMPTS) continue;
      throw error;
    }
    try {
      onEvent({ type: "paired" });
      onEvent({ type: "verifying" });
      await channel.handshake("sender", theCode, testing);
      const result = await transfer(channel, entries, files, onEvent);
      result.code = theCode;
      await link.close();
      onEvent({ type: "done", result });
      return result;
    } catch (error) {
      const failure = asP2PError(error);
      await channel.fail(failure);
      onEvent({ type: "error", error: failure });
      reported.add(failure);
      throw failure;
    }
  }
}

/** Our own entries must pass the rules the receiver applies (§7): refuse before connecting. */
function checkOwnEntries(entries) {
  try {
    checkEntries(entries);
  } catch (error) {
    if (error instanceof P2PError) throw new P2PError("usage", error.message.replace("The sender sent", "These entries hold"));
    throw error;
  }
  for (const entry of entries) {
    if (entry.kind !== "dir" && (!Number.isSafeInteger(entry.size) || entry.size < 0)) {
      throw new P2PError("usage", `The size of '${entry.path}' is not a whole number of bytes.`);
    }
  }
}

async function waitReady(link, code, onEvent) {
  let waited = false;
  for (;;) {
    const item = await link.next();
    if (!("text" in item)) throw new P2PError("protocol", "The relay sent binary data before pairing.");
    let message;
    try { message = JSON.parse(item.text); } catch { message = null; }
    if (message?.type === "waiting" && !waited) {
      waited = true;
      onEvent({ type: "waiting", code });
      continue;
    }
    if (message?.type === "ready") return;
    throw new P2PError("protocol", "The relay sent something else than 'ready' before pairing.");
  }
}


/** A file that could not be read, for us and for the receiver. */
function readFailure(path, error) {
  if (error instanceof P2PError) return error;
  return new P2PError("storage", `Could not read '${path}': ${error?.message ?? error}`,
    { wire: "usage", peerMessage: `The sender could not read '${path}'.`, cause: error });
}

/**
 * Message buffers of CHUNK + 1 bytes (the kind byte, then the payload), at most `count`
 * of them: the reader fills one while others are sealed (WebCrypto copies its input at
 * once) and hashed (hashing.js hands them back), so a transfer allocates no buffer per
 * message and holds at most `count` of them.
 */
export class Buffers {
  constructor(count = 4, size = CHUNK + 1) {
    this.size = size;
    this.count = count;
    /** @type {ArrayBuffer[]} */
    this.free = [];
    this.made = 0;
    /** @type {(() => void)[]} */
    this.waiting = [];
  }

  /** @returns {Promise<ArrayBuffer>} */
  async take() {
    for (;;) {
      const free = this.free.pop();
      if (free) return free;
      if (this.made < this.count) {
        this.made += 1;
        return new ArrayBuffer(this.size);
      }
      await new Promise((resolve) => this.waiting.push(() => resolve(undefined)));
    }
  }

  /** @param {ArrayBuffer} buffer */
  give(buffer) {
    this.free.push(buffer);
    this.waiting.shift()?.();
  }
}

/** A read that gives nothing for this long is taken up again on a new stream (slices()). */
export const STALL = 5000;
/** What a read in slices() answers when it stalled. */
const STALLED = Symbol("stalled");

/**
 * Bytes of `blob` (the file `path`) from `start` to `end`, in CHUNK slices, each read into
 * a buffer of `buffers` after a free first byte (the data message's kind): the bytes go
 * from the file to the message without a copy in JavaScript. The next slice is read
 * while the caller seals and sends this one; the caller gives each buffer back.
 *
 * A read that settles neither way in `stall` ms is cancelled and its slice read again
 * from a new stream: in Chromium 156 a BYOB read of a Blob's stream
 * sometimes never settles (one 1 GiB transfer in ten, and within the first 500 MiB when
 * garbage is collected every 0.1 s), and without this the transfer hung for good. A
 * default reader does not stall, but costs a fresh chunk per read (benchmarks/README.md).
 * A slow disk loses nothing by it but a re-read (the new stream waits for the same bytes),
 * and each stall doubles the wait before the next.
 * @param {Blob} blob @param {number} start @param {number} end @param {Buffers} buffers
 * @param {string} path @param {{stall?: number}} [options]
 * @returns {AsyncGenerator<Uint8Array>} kind byte (unset) and payload
 */
export async function* slices(blob, start, end, buffers, path, { stall = STALL } = {}) {
  if (start >= end) return;
  const failed = (error) => readFailure(path, error);
  const changed = () => new P2PError("storage", `'${path}' changed while it was being sent.`,
    { wire: "usage", peerMessage: `'${path}' changed on the sender's side while it was being sent.` });
  /** @type {ReadableStreamBYOBReader} */
  let reader;
  /** The caller stopped: no stream is opened again. */
  let stopped = false;
  const open = (from) => {
    if (stopped) throw new P2PError("cancelled", "The transfer stopped.");
    try {
      reader = /** @type {any} */ (blob.slice(from, end).stream()).getReader({ mode: "byob" });
    } catch (error) {
      throw failed(error);
    }
  };
  open(start);
  /** One read into `view`, or STALLED (then the read is cancelled, and its buffer gone). */
  const readInto = async (view, wait) => {
    let timer;
    const pending = reader.read(view);
    pending.catch(() => {});
    try {
      const stalled = new Promise((resolve) => { timer = setTimeout(resolve, wait, STALLED); });
      const answer = await Promise.race([pending, stalled]);
      if (answer === STALLED) reader.cancel().catch(() => {});
      return answer;
    } finally {
      clearTimeout(timer);
    }
  };
  /** How long a read may give nothing: doubled at each stall, for a disk that is slow. */
  let wait = stall;
  const read = async (at, length) => {
    let buffer = await buffers.take();
    let got = 0;
    while (got < length) {
      let answer;
      try {
        answer = await readInto(new Uint8Array(buffer, 1 + got, length - got), wait);
      } catch (error) {
        throw failed(error);
      }
      if (answer === STALLED) {
        console.warn(`p2p-copy: reading '${path}' gave nothing for ${wait / 1000} s at byte ${at + got}; reading this slice again from a new stream.`);
        // A cancelled read keeps the buffer it was given: this slice starts over in a new one.
        buffer = new ArrayBuffer(buffers.size);
        got = 0;
        wait *= 2;
        open(at);
        continue;
      }
      if (answer.done) throw changed();
      buffer = answer.value.buffer;
      got += answer.value.length;
    }
    return new Uint8Array(buffer, 0, length + 1);
  };
  try {
    let next = read(start, Math.min(CHUNK, end - start));
    for (let at = start; at < end; at += CHUNK) {
      const message = await next;
      const after = at + CHUNK;
      next = after < end ? read(after, Math.min(CHUNK, end - after)) : null;
      // Awaited on the next turn; if the caller stops first, its failure is moot.
      next?.catch(() => {});
      yield message;
    }
  } finally {
    stopped = true;
    reader.cancel().catch(() => {});
  }
}

async function transfer(channel, entries, files, onEvent) {
  for (const part of manifestParts(entries)) await channel.send(part);
  onEvent({ type: "offer", summary: summarizeOffer(entries.map((e) => ({ ...e, mode: e.mode ?? (e.kind === "dir" ? 0o755 : 0o644) }))) });
  const accept = await expectMessage(channel, ACCEPT_TIMEOUT, "the receiver's answer", ["accept"]);
  const digest = accept.digest ?? "sha256";
  if (!SUPPORTED.includes(digest)) throw violation(`the receiver picked the digest '${digest}', which was not offered`);
  const buffers = new Buffers();
  const hashing = await Hashing.start(digest, { reuse: (buffer) => buffers.give(buffer) });
  try {
    return await sendFiles(channel, entries, files, accept, digest, hashing, buffers, onEvent);
  } finally {
    hashing.close();
  }
}

async function sendFiles(channel, entries, files, accept, digest, hashing, buffers, onEvent) {
  const offsets = new Array(files.length).fill(0);
  if (accept.held && accept.held.length) {
    const sent = new Map();
    for (const [file, offset] of checkPrefixes(accept.held, files)) {
      sent.set(file, offset);
    }
    const proofs = [];
    for (const [file, offset] of sent) proofs.push([file, offset, await prefixDigest(hashing, files[file], offset)]);
    await channel.send({ type: "prefix_digests", files: proofs });
    const resume = await expectMessage(channel, RESUME_TIMEOUT, "the receiver's resume", ["resume"]);
    for (const [file, offset] of resume.files) {
      if (sent.get(file) !== offset) throw violation("'resume' names a prefix we sent no digest for");
      offsets[file] = offset;
    }
  } else if (accept.resume && accept.resume.length) {
    // A receiver before `held` (§6.5.2): check its digests against ours.
    const agreed = [];
    for (const [file, offset, theirs] of accept.resume) {
      checkPrefixes([[file, offset]], files);
      if (await prefixDigest(hashing, files[file], offset) === theirs) {
        agreed.push([file, offset]);
        offsets[file] = offset;
      }
    }
    await channel.send({ type: "resume", files: agreed });
  }
  const state = { sent: 0, acked: 0, window: accept.window, eofSent: false, done: false, failure: null, wake: null };
  const reader = readWhileSending(channel, state, accept.window);
  let progress = 0;
  try {
    progress = await streamFiles(channel, files, offsets, hashing, buffers, digest, state, onEvent);
    state.eofSent = true;
    await channel.send({ type: "eof" });
  } catch (error) {
    // The relay's close often follows the receiver's `error`, which then says why: once
    // the socket is closing, let the reader take what arrived before the close.
    if (channel.link.ws.readyState >= 2) await reader;
    throw state.failure ?? error;
  }
  let timer;
  await Promise.race([reader, new Promise((resolve) => { timer = setTimeout(resolve, DONE_TIMEOUT); })]);
  clearTimeout(timer);
  if (state.failure) throw state.failure;
  if (!state.done) {
    throw new P2PError("timeout", `No confirmation from the receiver in ${DONE_TIMEOUT / 1000} s.`, { wire: "timeout" });
  }
  return { files: files.length, dirs: entries.length - files.length, bytes: progress, digest };
}

/**
 * The data stream (§6.6) from the agreed offsets, with each file's digest sent right after
 * the data message that completes it (§6.7); zero-byte files ride along with the next.
 * Returns the stream bytes sent.
 */
async function streamFiles(channel, files, offsets, hashing, buffers, digest, state, onEvent) {
  const window = state.window;
  const total = files.reduce((sum, file, i) => sum + file.size - offsets[i], 0);
  /** @type {{path: string, digest: Promise<string>}[]} files sent, their digests not yet */
  let pending = [];
  let completed = 0;
  /** @type {Promise<void>[]} data messages being sealed or sent, oldest first */
  const inFlight = [];
  const flush = async () => {
    while (inFlight.length) await inFlight.shift();
    if (state.failure) throw state.failure;
    const first = completed - pending.length;
    await hashing.flush();
    const digests = [];
    for (const { path, digest: hex } of pending) {
      try {
        digests.push(await hex);
      } catch (error) {
        throw readFailure(path, error);
      }
    }
    // 4096 digests per message at most (§6.7 rule 4).
    for (let k = 0; k < digests.length; k += 4096) {
      await channel.send({ type: "checksums", first: first + k, [digest]: digests.slice(k, k + 4096) });
    }
    pending = [];
  };
  for (let i = 0; i < files.length; i++) {
    const file = files[i];
    if (offsets[i] > 0) hashing.prefix(file.blob, offsets[i]);
    else hashing.init();
    let wrote = false;
    for await (const message of slices(file.blob, offsets[i], file.size, buffers, file.path)) {
      const length = message.length - 1;
      if (window) await waitWindow(state, window);
      if (state.failure) throw state.failure;
      await channel.link.drain();
      message[0] = DATA_RAW;
      state.sent += length;  // before the send: an ack for these bytes may come at once
      // Several messages are sealed at once; the channel takes their nonces and sends them
      // in call order. Sealing copies the message at once: its buffer is free after this.
      const sent = channel.sendData(message);
      sent.catch(() => {});  // awaited below, in order
      inFlight.push(sent);
      // Hashed in the worker, which hands the buffer back to `buffers`.
      hashing.update(message.subarray(1));
      await hashing.flush();
      if (inFlight.length >= IN_FLIGHT) await inFlight.shift();
      wrote = true;
      onEvent({ type: "progress", bytes: state.sent, total });
    }
    completed = i + 1;
    pending.push({ path: file.path, digest: hashing.digest() });
    if (wrote) await flush();
    onEvent({ type: "file", path: file.path, verified: false });
  }
  await flush();
  return state.sent;
}

/** The digest of the first `offset` bytes of `file` (§6.5.1). */
async function prefixDigest(hashing, file, offset) {
  hashing.prefix(file.blob, offset);
  const digest = hashing.digest();
  await hashing.flush();
  try {
    return await digest;
  } catch (error) {
    throw readFailure(file.path, error);
  }
}

async function expectMessage(channel, timeout, what, types) {
  const message = await channel.receive(timeout, what);
  if (message.type === "error") throw peerError(message.code, message.message);
  if (!types.includes(message.type)) throw violation(`'${message.type}' is not expected now`);
  return message;
}

/** Reads the receiver while we stream: `ack`s widen the window, `error` or `done` end it. */
async function readWhileSending(channel, state, window) {
  try {
    for (;;) {
      const message = await channel.receive();
      if (message.type === "error") throw peerError(message.code, message.message);
      if (message.type === "ack" && window) {
        if (message.bytes < state.acked || message.bytes > state.sent) throw violation("an 'ack' went back or beyond what was sent");
        state.acked = message.bytes;
      } else if (message.type === "done" && state.eofSent) {
        state.done = true;
        return;
      } else {
        throw violation(`'${message.type}' is not expected while sending`);
      }
      state.wake?.();
    }
  } catch (error) {
    // After `done` the relay's close 1000 is the normal end; before it, a failure.
    state.failure = error instanceof P2PError ? error : new P2PError("internal", String(error), { wire: "internal" });
    state.wake?.();
  }
}

/** Waits until the window has room (§6.6.2); a receiver silent for IDLE_TIMEOUT is a timeout. */
async function waitWindow(state, window) {
  while (!state.failure && state.sent - state.acked >= window) {
    let timer;
    const acked = state.acked;
    await new Promise((resolve) => {
      state.wake = resolve;
      timer = setTimeout(resolve, IDLE_TIMEOUT);
    });
    clearTimeout(timer);
    state.wake = null;
    if (!state.failure && state.acked === acked && state.sent - state.acked >= window) {
      throw new P2PError("timeout", `The receiver acknowledged nothing for ${IDLE_TIMEOUT / 1000} s.`, { wire: "timeout" });
    }
  }
}

