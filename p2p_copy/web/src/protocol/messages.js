// @ts-check
/**
 * Control messages (protocol.md §3.2, §6): parsed strictly into plain objects, or a
 * P2PError of kind "protocol" (wire code `protocol`) / "incompatible". Mirrors
 * p2p_copy/protocol/messages.py. Unknown members are ignored, unknown types are errors.
 *
 * Two differences JSON.parse imposes: it cannot tell `5` from `5.0` (both are the number
 * 5), so integers written with a fraction of zero pass here where Python refuses them; and
 * it rounds integers beyond 2^53 to doubles, so 2^53 + 1 reads as 2^53 (the largest size
 * allowed) where Python refuses it. Neither lets a peer past a limit.
 */
import { P2PError, violation } from "./errors.js";
import { HEX_DIGEST } from "./digests.js";

export const PROTOCOL_VERSION = 1;
export const DATA_RAW = 0x00;
export const MAX_FILE_SIZE = 2 ** 53;
export const MAX_MODE = 0o7777;
export const MAX_OFFERS = 1_000_000;
export const MAX_ALGORITHM_NAMES = 32;
export const MAX_ALGORITHM_NAME = 64;
/** Resume granularity (§6.5.1): held offsets are multiples of it or the full size. */
export const BLOCK = 2 ** 20;
/** The largest message a peer must accept, and what ours takes (§3.3). */
export const MAX_MESSAGE = 2 * 1024 * 1024 + 64 * 1024;
export const MAX_SEND = 2 * 1024 * 1024;

const BASE64 = /^[A-Za-z0-9+/]{1,1024}={0,2}$/;
const HEX = /^[0-9a-f]{2,256}$/;

/** @param {string} text */
function loadObject(text) {
  let obj;
  try {
    obj = JSON.parse(text);
  } catch (error) {
    throw violation(`a control message is not valid JSON (${/** @type {Error} */ (error).message})`);
  }
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) throw violation("a control message is not a JSON object");
  if (typeof obj.type !== "string") throw violation("a control message has no string 'type'");
  return obj;
}

/** Exactly an integer in [lo, hi] (true is not 1 on the wire). */
function int(value, key, lo, hi) {
  if (typeof value !== "number" || !Number.isInteger(value) || value < lo || value > hi) {
    throw violation(`field '${key}' must be an integer from ${lo} to ${hi}`);
  }
  return value;
}

function str(obj, key) {
  const value = obj[key];
  if (typeof value !== "string") throw violation(`field '${key}' must be a string`);
  return value;
}

function mtime(obj) {
  const value = obj.mtime;
  if (value === undefined || value === null) return null;
  if (typeof value !== "number" || !Number.isFinite(value)) throw violation("field 'mtime' must be a finite number of seconds");
  return value;
}

function meta(obj) {
  const value = obj.meta;
  if (value !== undefined && value !== null && (typeof value !== "object" || Array.isArray(value))) {
    throw violation("an entry's 'meta' must be a JSON object");
  }
  return value ?? null;
}

function parseEntry(obj) {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) throw violation("a manifest entry is not a JSON object");
  const path = str(obj, "path");
  const kind = "kind" in obj ? obj.kind : "file";
  if (kind === "file") {
    return { kind, path, size: int(obj.size, "size", 0, MAX_FILE_SIZE),
      mode: int(obj.mode ?? 0o644, "mode", 0, MAX_MODE), mtime: mtime(obj), meta: meta(obj) };
  }
  if (kind === "stream") {
    return { kind, path, mode: int(obj.mode ?? 0o644, "mode", 0, MAX_MODE), mtime: mtime(obj), meta: meta(obj) };
  }
  if (kind === "dir") {
    return { kind, path, mode: int(obj.mode ?? 0o755, "mode", 0, MAX_MODE), mtime: mtime(obj) };
  }
  throw violation(`unknown manifest entry kind ${JSON.stringify(kind)}`);
}

function names(obj, key) {
  const value = obj[key];
  if (value === undefined || value === null) return null;
  if (!Array.isArray(value) || value.length > MAX_ALGORITHM_NAMES
      || !value.every((name) => typeof name === "string" && name.length <= MAX_ALGORITHM_NAME)) {
    throw violation(`'${key}' must be a list of at most ${MAX_ALGORITHM_NAMES} strings of at most ${MAX_ALGORITHM_NAME} characters`);
  }
  return value;
}

function parseManifest(obj) {
  if (!("version" in obj)) {
    throw new P2PError("incompatible", "The sender runs an old p2p-copy (0.1.x) that this version cannot receive from. "
      + "Ask them to upgrade p2p-copy.", { wire: "incompatible" });
  }
  if (obj.version !== PROTOCOL_VERSION) {
    throw new P2PError("incompatible", `The sender speaks protocol version ${JSON.stringify(obj.version)}, this peer speaks `
      + `${PROTOCOL_VERSION}. Install the same p2p-copy version on both sides.`, { wire: "incompatible" });
  }
  if (!Array.isArray(obj.entries)) throw violation("the manifest's 'entries' must be a list");
  const more = obj.more ?? false;
  if (typeof more !== "boolean") throw violation("the manifest's 'more' must be true or false");
  const entries = obj.entries.map(parseEntry);
  entries.forEach((entry, index) => {
    if (entry.kind === "stream" && (more || index !== entries.length - 1)) {
      throw violation("a stream entry must be the manifest's last entry");
    }
  });
  // `ack` (§6.6.2): the sender honours a flow-control window; a boolean or null in any part.
  const ack = obj.ack ?? false;
  if (typeof ack !== "boolean") throw violation("the manifest's 'ack' must be true or false");
  return { type: "manifest", entries, more, digests: names(obj, "digests"), ack };
}

function parseChecksums(obj) {
  const first = int(obj.first, "first", 0, MAX_FILE_SIZE);
  const keys = ["sha256", "blake3"].filter((key) => key in obj);
  if (keys.length !== 1) throw violation("a checksums message must carry its digests under exactly one of 'sha256' or 'blake3'");
  const digests = obj[keys[0]];
  if (!Array.isArray(digests) || digests.length === 0) throw violation(`'${keys[0]}' must be a non-empty list`);
  if (!digests.every((d) => typeof d === "string" && HEX_DIGEST.test(d))) throw violation("each digest must be 64 lowercase hex digits");
  return { type: "checksums", first, digests, algorithm: keys[0] };
}

function pairs(obj, key, width) {
  const value = obj[key];
  if (!Array.isArray(value) || value.length > MAX_OFFERS
      || !value.every((item) => Array.isArray(item) && item.length === width)) {
    throw violation(`'${key}' must be a list of ${width}-element lists`);
  }
  return value;
}

function indexOffset(item) {
  return [int(item[0], "file", 0, MAX_FILE_SIZE), int(item[1], "offset", 1, MAX_FILE_SIZE)];
}

function offers(obj, key) {
  return pairs(obj, key, 3).map((item) => {
    const [file, offset] = indexOffset(item);
    if (typeof item[2] !== "string" || !HEX_DIGEST.test(item[2])) throw violation("a prefix digest must be 64 lowercase hex digits");
    return [file, offset, item[2]];
  });
}

function parseAccept(obj) {
  const compression = names(obj, "compression");
  const digest = obj.digest ?? null;
  if (digest !== null && (typeof digest !== "string" || digest.length > MAX_ALGORITHM_NAME)) {
    throw violation(`'digest' must be a string of at most ${MAX_ALGORITHM_NAME} characters`);
  }
  const held = obj.held === undefined || obj.held === null ? null : pairs(obj, "held", 2).map(indexOffset);
  let resume = null;
  if (obj.resume !== undefined && obj.resume !== null) {
    if (held !== null) throw violation("an accept carries 'held' or 'resume', not both");
    resume = offers(obj, "resume");
  }
  let window = null;
  if (obj.window !== undefined && obj.window !== null) window = int(obj.window, "window", 262144, 2 ** 31);
  return { type: "accept", compression, digest, held, resume, window };
}

/**
 * A peer's control message as a plain object with its `type`.
 * @param {string} text
 */
export function parseMessage(text) {
  const obj = loadObject(text);
  switch (obj.type) {
    case "manifest": return parseManifest(obj);
    case "checksums": return parseChecksums(obj);
    case "accept": return parseAccept(obj);
    case "resume": return { type: "resume", files: pairs(obj, "files", 2).map(indexOffset) };
    case "prefix_digests": return { type: "prefix_digests", files: offers(obj, "files") };
    case "error": return { type: "error", code: str(obj, "code"), message: str(obj, "message") };
    case "ack": return { type: "ack", bytes: int(obj.bytes, "bytes", 0, MAX_FILE_SIZE) };
    case "pake": {
      const suite = str(obj, "suite");
      if (suite.length > 100) throw violation("'suite' is too long");
      const msg = str(obj, "msg");
      if (!BASE64.test(msg)) throw violation("'msg' must be base64, at most 1024 characters");
      return { type: "pake", suite, msg };
    }
    case "confirm": {
      const mac = str(obj, "mac");
      if (!HEX.test(mac)) throw violation("'mac' must be lowercase hex, at most 256 digits");
      return { type: "confirm", mac };
    }
    case "ready": case "waiting": case "eof": case "done": case "hello":
      return { type: obj.type };
    default:
      throw violation(`unknown message type ${JSON.stringify(obj.type)}`);
  }
}

/** Compact JSON of a control message, non-ASCII as raw UTF-8 (as ours emits). */
export function encode(message) {
  return JSON.stringify(message);
}

/** The wire codes a peer may send (§8). */
export const WIRE_CODES = new Set(["internal", "usage", "timeout", "peer_gone", "protocol", "integrity", "unsafe_path",
  "exists", "disk_full", "incompatible", "wrong_code", "encryption_mismatch", "tampered", "policy", "cancelled"]);
