// @ts-check
/**
 * The sender's side of the manifest and of `held` (protocol.md §6.4, §6.5.1), without I/O:
 * the manifest parts for a list of entries, and the check of the prefixes a receiver holds.
 */
import { violation } from "./errors.js";
import { SUPPORTED } from "./digests.js";
import { BLOCK } from "./messages.js";

/** Most bytes of JSON per manifest part (ours, §3.3). */
export const MANIFEST_PART = 256 * 1024;
const encoder = new TextEncoder();

function entryJson(entry) {
  if (entry.kind === "dir") {
    const out = { path: entry.path, kind: "dir", mode: entry.mode ?? 0o755 };
    if (entry.mtime != null) out.mtime = entry.mtime;
    return out;
  }
  const out = { path: entry.path, size: entry.size, mode: entry.mode ?? 0o644 };
  if (entry.mtime != null) out.mtime = entry.mtime;
  return out;
}

/** The manifest parts (§6.4): at most MANIFEST_PART bytes of JSON each, the first with `digests` and `ack`. */
export function manifestParts(entries, partBytes = MANIFEST_PART) {
  const parts = [];
  let current = [];
  let size = 0;
  for (const entry of entries) {
    const json = entryJson(entry);
    const bytes = encoder.encode(JSON.stringify(json)).length + 1;
    if (current.length && size + bytes > partBytes) {
      parts.push(current);
      current = [];
      size = 0;
    }
    current.push(json);
    size += bytes;
  }
  parts.push(current);
  return parts.map((part, index) => {
    const message = { type: "manifest", version: 1 };
    if (index === 0) { message.digests = [...SUPPORTED]; message.ack = true; }
    message.entries = part;
    if (index < parts.length - 1) message.more = true;
    return message;
  });
}

/** Validates held prefixes (§6.5.1) against our files; a violation otherwise. */
export function checkPrefixes(held, files) {
  const seen = new Set();
  for (const [file, offset] of held) {
    const entry = files[file];
    if (!entry || seen.has(file) || offset > entry.size || (offset % BLOCK !== 0 && offset !== entry.size)) {
      throw violation("the receiver's 'held' names no file of ours, a file twice, or an offset that is not a multiple of 1 MiB or the size");
    }
    seen.add(file);
  }
  return held;
}

