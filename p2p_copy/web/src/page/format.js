// @ts-check
// What the person reads: sizes, rates, times and the lines for the other side. Pure, so
// that Node tests it (test/page-format.test.mjs).

const UNITS = ["bytes", "KiB", "MiB", "GiB", "TiB"];

/** "1.5 GiB", "512 bytes" (powers of 1024, as the CLI prints them). */
export function formatBytes(n) {
  if (!Number.isFinite(n) || n < 0) return "?";
  if (n < 1024) return `${n} ${n === 1 ? "byte" : "bytes"}`;
  let unit = 0;
  let value = n;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value >= 100 ? value.toFixed(0) : value.toFixed(1)} ${UNITS[unit]}`;
}

/** "3 min 5 s", "42 s", "2 h 3 min". */
export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/** "2 files and 1 folder, 3.0 MiB". */
export function describeCounts(files, dirs, bytes) {
  const parts = [`${files} ${files === 1 ? "file" : "files"}`];
  if (dirs) parts.push(`${dirs} ${dirs === 1 ? "folder" : "folders"}`);
  return `${parts.join(" and ")}, ${formatBytes(bytes)}`;
}

/**
 * Rate and time left from progress samples, smoothed over the last few seconds so that
 * the figures do not jump with every message.
 */
export class Speedometer {
  /** @param {number} window seconds of history used for the rate */
  constructor(window = 5, now = () => performance.now() / 1000) {
    this.window = window;
    this.now = now;
    /** @type {Array<[number, number]>} */
    this.samples = [];
  }

  /** @returns {{rate: number, eta: number}} bytes per second, seconds left (NaN if unknown) */
  update(bytes, total) {
    const t = this.now();
    this.samples.push([t, bytes]);
    while (this.samples.length > 2 && t - this.samples[0][0] > this.window) this.samples.shift();
    const [t0, b0] = this.samples[0];
    const rate = t > t0 ? (bytes - b0) / (t - t0) : NaN;
    const eta = rate > 0 ? (total - bytes) / rate : NaN;
    return { rate, eta };
  }
}

/** "512 MiB of 1.0 GiB (50%) · 120 MiB/s · 4 s left" */
export function progressLine(bytes, total, rate, eta) {
  const pct = total > 0 ? Math.floor((100 * bytes) / total) : 100;
  let line = `${formatBytes(bytes)} of ${formatBytes(total)} (${pct}%)`;
  if (Number.isFinite(rate) && rate > 0) line += ` · ${formatBytes(rate)}/s`;
  if (Number.isFinite(eta) && bytes < total) line += ` · ${formatDuration(eta)} left`;
  return line;
}

/** The relay URL as a person types it: "wss://host" without a lone trailing slash. */
export function shownRelay(relay) {
  return relay.replace(/^(wss?:\/\/[^/]+)\/$/, "$1");
}

/** A string as a Python literal (the code and URL hold no quotes or backslashes, but be exact). */
function pyStr(s) {
  return JSON.stringify(s);
}

/** A word for a POSIX shell: quoted only when it needs to be. */
function shWord(s) {
  return /^[A-Za-z0-9_./:@%+=,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * What the other side runs, in the forms the CLI and the notebook panel print
 * (p2p_copy/display/progress.py receive_lines): server first, then the code.
 */
export function receiveLines(relay, code) {
  const server = shownRelay(relay);
  return {
    cli: `p2p-copy receive ${shWord(server)} ${shWord(code)}`,
    python: `await p2p_copy.receive(${pyStr(server)}, ${pyStr(code)})`,
  };
}

/**
 * The page's link that opens the receive view with the code: https://RELAY/#CODE, or
 * #code=CODE&relay=URL when the transfer goes through another relay than the page's.
 */
export function receiveLink(location, code, relay = "") {
  const base = `${location.origin}${location.pathname}`;
  if (!relay) return `${base}#${encodeURIComponent(code)}`;
  return `${base}#code=${encodeURIComponent(code)}&relay=${encodeURIComponent(relay)}`;
}

/** {code, relay} from a location's fragment ("" where absent); never sent to the server. */
export function parseHash(hash) {
  const raw = hash.replace(/^#/, "");
  if (!raw || raw === "send" || raw === "receive") return { code: "", relay: "" };
  if (raw.startsWith("code=")) {
    const params = new URLSearchParams(raw);
    return { code: (params.get("code") || "").trim(), relay: params.get("relay") || "" };
  }
  try {
    return { code: decodeURIComponent(raw).trim(), relay: "" };
  } catch {
    return { code: raw.trim(), relay: "" };
  }
}

/** The code from a location's fragment ("" if none). */
export function codeFromHash(hash) {
  return parseHash(hash).code;
}
