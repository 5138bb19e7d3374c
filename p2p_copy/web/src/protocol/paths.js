// @ts-check
/**
 * The receiver's rules for names that arrive from the network (protocol.md §7), and the
 * default limits of a receiver's policy. A faithful mirror of p2p_copy/protocol/paths.py
 * and policy.py (same rules, same order, same refusals): test/paths.test.mjs compares
 * the verdicts of both on one list of hostile names (tests/test_web_paths_dump.py writes
 * Python's). Nothing here touches storage.
 */
import { P2PError } from "./errors.js";

export const MAX_PATH_CHARS = 4096;
export const MAX_COMPONENT_BYTES = 255;
export const DEFAULT_MAX_DEPTH = 64;
export const DEFAULT_MAX_ENTRIES = 1_000_000;
export const DEFAULT_MAX_PATH_BYTES = 4096;

const encoder = new TextEncoder();
const utf8Length = (text) => encoder.encode(text).length;

// Escaped when shown: controls, lone surrogates, invisible format characters (bidi
// overrides, zero-width characters) and the line/paragraph separators (Python's Cc, Cs,
// Cf, Zl, Zp).
const HIDDEN = /[\p{Cc}\p{Cs}\p{Cf}\p{Zl}\p{Zp}]/gu;

/** `name` with control, invisible-format and separator characters escaped, safe to show. */
export function displayName(name) {
  return name.replace(HIDDEN, (c) => {
    const code = /** @type {number} */ (c.codePointAt(0));
    if (code < 0x100) return `\\x${code.toString(16).padStart(2, "0")}`;
    return code < 0x10000 ? `\\u${code.toString(16).padStart(4, "0")}` : `\\U${code.toString(16).padStart(8, "0")}`;
  });
}

function unsafe(message, peerMessage) {
  return new P2PError("unsafe_path", message, { wire: "unsafe_path", peerMessage });
}

// Every rule a non-empty path of at most MAX_PATH_CHARS characters must pass, in
// paths.py's order (the first rule broken names the refusal).
const RULES = [
  [/[\x00-\x1f\x7f-\x9f]/gu, "a name with control characters"],
  [/[\ud800-\udfff]/gu, "a name that is not valid Unicode"],
  [/\\/gu, "a name with a backslash"],
  [/^\//gu, "an absolute path"],
  [/^[A-Za-z]:/gu, "a path with a drive letter"],
  [/(?:^|\/)\.{0,2}(?:\/|$)/gu, "a path with an empty, '.' or '..' component"],
  // The names a receiver gives its partial data and resume sidecars. Case-insensitive
  // as Python's re.IGNORECASE on str (Unicode simple folding: "ſ" matches "s").
  [/\.p2p-copy-(part|resume)(\.new)?(\/|$)/giu, "a name that p2p-copy keeps for its own partial files"],
  [/[^/]{64,}/gu, "a name longer than 255 bytes", (matched) => utf8Length(matched) > MAX_COMPONENT_BYTES],
];

function shownPath(path) {
  const points = [...path];
  return displayName(points.slice(0, 200).join("")) + (points.length > 200 ? "..." : "");
}

/**
 * The components of a manifest path, or P2PError "unsafe_path".
 * @param {string} path
 * @returns {string[]}
 */
export function splitSafePath(path) {
  if (!path) throw unsafe("The sender sent an empty file name.");
  if ([...path].length > MAX_PATH_CHARS) throw unsafe(`The sender sent a path longer than ${MAX_PATH_CHARS} characters.`);
  for (const [pattern, what, breaks] of RULES) {
    for (const match of path.matchAll(/** @type {RegExp} */ (pattern))) {
      if (!breaks || /** @type {(m: string) => boolean} */ (breaks)(match[0])) {
        throw unsafe(`The sender sent ${what}: '${shownPath(path)}'`);
      }
    }
  }
  return path.split("/");
}

// Code points HFS+ ignores when it compares names.
const IGNORED_BY_HFS = /[\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]/gu;

/**
 * Full case folding of a string (Python's str.casefold()), which JavaScript lacks:
 * upper- then lower-casing twice reaches the folded form of every cased letter ("ẞ" needs
 * the second round) but two: the final sigma, which toLowerCase() keeps by context, folds
 * to the plain sigma, and the dotless ı, which upper-cases to I, folds to itself.
 * test/paths.test.mjs checks this against Python for every code point Python cases.
 */
function casefold(text) {
  const round = (run) => run.toUpperCase().toLowerCase().toUpperCase().toLowerCase();
  return text.split("ı").map(round).join("ı").replace(/ς/gu, "σ");
}

/**
 * The key under which a case-insensitive, normalising file system stores `path`
 * (paths.py `fold`): decompose, drop what HFS+ ignores, case-fold, compose.
 * @param {string} path
 */
export function fold(path) {
  // eslint-disable-next-line no-control-regex
  if (/^[\x00-\x7f]*$/.test(path)) return path.toLowerCase();
  return casefold(path.replace(IGNORED_BY_HFS, "").normalize("NFD")).normalize("NFC");
}

/**
 * Check every path and that no two entries collide (§7 rules 1-12); P2PError otherwise.
 * Returns each entry's components, in order (paths.py `check_entries`).
 * @param {{path: string, kind: string}[]} entries
 */
export function checkEntries(entries) {
  const allParts = entries.map((entry) => splitSafePath(entry.path));
  const nodes = new Map(); // "parent node\0folded name" -> node; the root is 0
  const folders = new Map([["", 0]]);
  const names = new Map(); // node of an entry -> the entry's path as sent
  const files = new Set();
  const parents = new Set([0]);
  const node = (parent, key) => {
    const id = `${parent}\0${key}`;
    let found = nodes.get(id);
    if (found === undefined) { found = nodes.size + 1; nodes.set(id, found); }
    return found;
  };
  for (const entry of entries) {
    const slash = entry.path.lastIndexOf("/");
    const folder = slash < 0 ? "" : entry.path.slice(0, slash);
    const name = entry.path.slice(slash + 1);
    let parent = folders.get(folder);
    if (parent === undefined) {
      parent = 0;
      for (const key of fold(folder).split("/")) {
        parent = node(parent, key);
        parents.add(parent);
      }
      folders.set(folder, parent);
    }
    const own = node(parent, fold(name));
    if (names.has(own)) {
      throw unsafe(`The sender sent two names that would be the same file here: '${displayName(names.get(own))}' and '${displayName(entry.path)}'`);
    }
    names.set(own, entry.path);
    if (entry.kind !== "dir") files.add(own);
  }
  const clash = [...files].filter((id) => parents.has(id));
  if (clash.length) {
    throw unsafe(`The sender sent '${displayName(names.get(Math.min(...clash)))}' both as a file and as a folder.`);
  }
  return allParts;
}

// --- policy.py: the limits of a default ReceivePolicy and Windows names --------------

const WINDOWS_DEVICES = new Set(["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]);
for (const port of ["COM", "LPT"]) for (const n of "0123456789\u00b9\u00b2\u00b3") WINDOWS_DEVICES.add(port + n);
const WINDOWS_CHARS = /[<>:"|?*]/u;
const SHORT_NAME = /^[^.~]{1,7}~[0-9]{1,7}(?:\.[^.]{0,3})?$/u;
const SEPARATORS = /[/\\]/u;

function shown(name) {
  const points = [...name];
  return `'${displayName(points.length <= 120 ? name : points.slice(0, 120).join("") + "...")}'`;
}

function windowsProblem(name, given) {
  if (name.endsWith(".") || name.endsWith(" ")) return "ends in a dot or a space, which Windows drops (it would become another name)";
  const found = WINDOWS_CHARS.exec(given);
  if (found) return `holds '${found[0]}', a character Windows does not allow in names`;
  const stem = name.split(".")[0];
  if (WINDOWS_DEVICES.has(stem.replace(/ +$/u, "").toUpperCase())) return "is a device name on Windows (CON, PRN, AUX, NUL, COM1-9, LPT1-9)";
  if ([...stem].length <= 8 && SHORT_NAME.test(name)) {
    return "has the form of a Windows short (8.3) name, which can stand for another file's long name (GIT~1 is .git)";
  }
  return null;
}

/** Why Windows cannot store the component `name` safely, or null (policy.py `windows_name_problem`). */
export function windowsNameProblem(name) {
  const problem = windowsProblem(name, name);
  if (problem || /^[\x00-\x7f]*$/.test(name)) return problem;
  const folded = name.normalize("NFKC");
  if (folded === name) return null;
  if (SEPARATORS.test(folded)) {
    return `reads as '${displayName(folded)}' to Windows programs that convert names to their code page: a path with a separator`;
  }
  const again = windowsProblem(folded, name);
  return again && `reads as '${displayName(folded)}' to Windows programs that convert names to their code page; that name ${again}`;
}

function policyError(message) {
  return new P2PError("policy", message, { wire: "policy" });
}

/**
 * Counts of a manifest arriving in parts (policy.py `ManifestLimits` with a default
 * policy): the part that crosses a limit is refused before the next one is read.
 */
export class ManifestLimits {
  constructor({ maxEntries = DEFAULT_MAX_ENTRIES, maxDepth = DEFAULT_MAX_DEPTH } = {}) {
    this.maxEntries = maxEntries;
    this.maxDepth = maxDepth;
    this.entries = 0;
  }
  /** @param {{path: string}[]} entries @param {boolean} more */
  add(entries, more = false) {
    this.entries += entries.length;
    if (this.entries > this.maxEntries) {
      throw policyError(`The sender offers ${more ? "at least " : ""}${this.entries.toLocaleString("en")} files and folders, `
        + `more than this receiver accepts (${this.maxEntries.toLocaleString("en")}).`);
    }
    for (const entry of entries) {
      const depth = entry.path.split("/").length;
      if (depth > this.maxDepth) {
        throw policyError(`The sender offers ${shown(entry.path)}, ${depth} levels deep; this receiver accepts at most ${this.maxDepth}.`);
      }
    }
  }
}

/**
 * Refuse the whole manifest if a path breaks §7 or a default limit (policy.py
 * `check_policy` with ReceivePolicy(windows_names=windowsNames)).
 * @param {{path: string, kind: string}[]} entries
 * @param {{windowsNames?: boolean, limits?: ManifestLimits}} [options]
 */
export function checkManifest(entries, { windowsNames = false, limits } = {}) {
  if (!limits) new ManifestLimits().add(entries);
  const allParts = checkEntries(entries);
  const checked = new Set();
  entries.forEach((entry, index) => {
    const parts = allParts[index];
    const slash = entry.path.lastIndexOf("/");
    const folder = slash < 0 ? "" : entry.path.slice(0, slash);
    const names = checked.has(folder) ? parts.slice(-1) : parts;
    checked.add(folder);
    const pathBytes = utf8Length(entry.path);
    if (pathBytes > DEFAULT_MAX_PATH_BYTES) {
      throw unsafe(`The sender offers a path of ${pathBytes.toLocaleString("en")} bytes, ${shown(entry.path)}; this receiver `
        + `accepts at most ${DEFAULT_MAX_PATH_BYTES.toLocaleString("en")}. Ask the sender to shorten it.`,
      `The receiver accepts paths of at most ${DEFAULT_MAX_PATH_BYTES.toLocaleString("en")} bytes; ${shown(entry.path)} has `
        + `${pathBytes.toLocaleString("en")}: shorten it.`);
    }
    for (const part of names) {
      if (!windowsNames) continue;
      const problem = windowsNameProblem(part);
      if (problem) {
        throw unsafe(`The sender offers ${shown(entry.path)}, whose name ${shown(part)} ${problem}. Ask the sender to rename it.`,
          `${shown(entry.path)} cannot be stored on the receiver's side: its name ${shown(part)} ${problem}. Rename it.`);
      }
    }
  });
  return allParts;
}

/**
 * What a manifest offers, for the person deciding (policy.py `summarize_offer`, short):
 * counts, bytes, top-level names (a folder's with "/"), the hidden ones among them, and
 * files with an execute bit.
 * @param {{path: string, kind: string, size?: number, mode: number}[]} entries
 */
export function summarizeOffer(entries) {
  const tops = new Map();
  let files = 0;
  let dirs = 0;
  let bytes = 0;
  const executables = [];
  for (const entry of entries) {
    const parts = entry.path.split("/");
    const isDir = entry.kind === "dir";
    tops.set(parts[0], (tops.get(parts[0]) ?? false) || isDir || parts.length > 1);
    if (isDir) dirs += 1;
    else {
      files += 1;
      bytes += entry.size ?? 0;
      if (entry.mode & 0o111) executables.push(entry.path);
    }
  }
  const names = [...tops].map(([name, folder]) => (folder ? `${name}/` : name));
  return { files, dirs, bytes, names, hidden: names.filter((name) => fold(name).startsWith(".")), executables };
}
