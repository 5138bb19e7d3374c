// @ts-check
/**
 * Codes (protocol.md §4): normalising, the room hash the relay sees, generated codes and
 * the relay URL with the room appended (§3.1). Mirrors p2p_copy/protocol/codes.py.
 */
import { P2PError } from "./errors.js";
import { WORDS } from "./wordlist.js";

const ROOM_DOMAIN = new TextEncoder().encode("p2p-copy room v2\x00");
const ROOM_RANGES = [999, 9_999, 99_999, 999_999];
export const WORDS_PER_CODE = 3;
const CODE_FORMAT_HELP = "A code is ROOM-SECRET, e.g. 7-crossover-clockwork-puma: the relay sees only a hash "
  + "of the part before the first '-'; the rest is the secret only the two of you know.";

// Python's str.strip() set (Unicode White_Space plus the C0 separators Python counts as
// space); String.prototype.trim() differs (it strips U+FEFF, keeps U+001C-U+001F, U+0085).
const PY_SPACE = "[\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]";
const STRIP = new RegExp(`^${PY_SPACE}+|${PY_SPACE}+$`, "gu");

/**
 * The code as both peers hash it (§4.1): surrounding whitespace dropped, lower case.
 * Throws P2PError "bad_code" if the room or the secret part is empty.
 * @param {string} text
 */
export function normalizeCode(text) {
  const stripped = String(text).replace(STRIP, "");
  if (!stripped) throw new P2PError("bad_code", "The code must not be empty.");
  const code = stripped.toLowerCase();
  const dash = code.indexOf("-");
  if (dash <= 0 || dash === code.length - 1) {
    throw new P2PError("bad_code", `'${stripped}' is not a code. ${CODE_FORMAT_HELP}`);
  }
  return code;
}

/** The room part of a normalised code. */
export function roomOf(code) {
  return code.slice(0, code.indexOf("-"));
}

/**
 * code_hash_hex of the hello (§4.2): SHA-256 of the domain and the room part, lowercase hex.
 * @param {string} code
 * @returns {Promise<string>}
 */
export async function roomHash(code) {
  const room = new TextEncoder().encode(roomOf(normalizeCode(code)));
  const input = new Uint8Array(ROOM_DOMAIN.length + room.length);
  input.set(ROOM_DOMAIN);
  input.set(room, ROOM_DOMAIN.length);
  return toHex(new Uint8Array(await crypto.subtle.digest("SHA-256", input)));
}

/** @param {Uint8Array} bytes */
export function toHex(bytes) {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

/** A uniform integer in [0, n) from the CSPRNG (rejection sampling, no modulo bias). */
function randomBelow(n) {
  const limit = Math.floor(0x1_0000_0000 / n) * n;
  const word = new Uint32Array(1);
  for (;;) {
    crypto.getRandomValues(word);
    if (word[0] < limit) return word[0] % n;
  }
}

/**
 * A fresh code such as `7-crossover-clockwork-puma` (§4.3); `attempt` counts the relay's
 * refusals of earlier generated codes and widens the room range.
 */
export function generateCode(attempt = 0) {
  const top = ROOM_RANGES[Math.min(attempt, ROOM_RANGES.length - 1)];
  const words = [];
  for (let i = 0; i < WORDS_PER_CODE; i++) words.push(WORDS[randomBelow(WORDS.length)]);
  return [String(1 + randomBelow(top)), ...words].join("-");
}

/**
 * The relay URL with the room hash appended as one more path segment, query kept (§3.1).
 * @param {string} relay
 * @param {string} hash
 */
export function roomUrl(relay, hash) {
  const url = new URL(relay);
  if (!url.pathname.endsWith("/")) url.pathname += "/";
  url.pathname += hash;
  return url.toString();
}

/**
 * The relay a page served by the relay talks to: same host, ws(s) for http(s), the
 * directory of the page's path (so a prefix behind a proxy works); never the fragment.
 * @param {{protocol: string, host: string, pathname: string}} location
 */
export function relayUrlFromLocation(location) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const path = location.pathname || "/";
  return `${scheme}//${location.host}${path.slice(0, path.lastIndexOf("/") + 1) || "/"}`;
}
