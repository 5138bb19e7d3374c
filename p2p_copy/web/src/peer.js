// @ts-check
/**
 * The WebSocket side of the browser peer: the relay connection (hello on the room path,
 * `waiting`/`ready`, close codes as P2PErrors, §3.1, §5), the encryption handshake (§6.0.2)
 * and the sealed channel that carries phase 2 (§6.0.6-6.0.8).
 *
 * Sending is bounded by polling `bufferedAmount` (a WebSocket has no drain event):
 * above HIGH_MARK a sender waits until the buffer is below LOW_MARK. Receiving cannot
 * push back: the flow-control window (protocol.md §6.5, `window`/`ack`) bounds it.
 */
import { roomHash, roomUrl, toHex } from "./protocol/codes.js";
import { P2PError, violation } from "./protocol/errors.js";
import { encode, parseMessage, MAX_MESSAGE } from "./protocol/messages.js";
import { SUITE, keySchedule, Sealer, Opener, equalConstantTime } from "./protocol/secure.js";
import * as spake2 from "./protocol/spake2.js";
import { displayName } from "./protocol/paths.js";

export const HIGH_MARK = 8 * 1024 * 1024;
export const LOW_MARK = 2 * 1024 * 1024;
/** Timeouts (protocol.md §10, ours). */
export const HANDSHAKE_TIMEOUT = 60_000;
const OPEN_TIMEOUT = 20_000;
const ERROR_SEND_WAIT = 2_000;
/** How long the GET that asks why a handshake failed may take. */
const PROBE_TIMEOUT = 5_000;

/** The subprotocol a relay selects when it is offered (protocol.md §3.1). */
export const SUBPROTOCOL = "p2p-copy";
/** An offered subprotocol that presents an access token (protocol.md §5.11). */
export const BEARER_SUBPROTOCOL = "p2p-copy.bearer.";

/**
 * The subprotocols that present `token` to a private relay (protocol.md §5.11): a browser
 * cannot set `Authorization` on a WebSocket, but it can offer subprotocols. None without a
 * token, so that relays of 0.7.0 and before, which select none, still take us.
 * @param {string | undefined} token
 * @returns {string[] | undefined}
 */
export function tokenProtocols(token) {
  if (token === undefined || token === null || token === "") return undefined;
  if (typeof token !== "string" || !/^[\x21-\x7e]+$/.test(token)) {
    throw new P2PError("usage", "An access token is printable ASCII without spaces: check the token.");
  }
  const base64url = btoa(token).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  return [SUBPROTOCOL, BEARER_SUBPROTOCOL + base64url];
}

/**
 * What a handshake that failed before the WebSocket opened means. A browser is not told
 * the HTTP status, so a plain GET of the same URL asks again: same origin, or a relay of
 * ours from any origin for its 401 (protocol.md §5.11), answers readably; anything else
 * leaves the generic refusal. The GET carries no token: with one, a 401 cannot say
 * whether it was wrong or the relay takes none from a browser, so the message names both.
 * @param {string} relay @param {string} url @param {string | undefined} token @param {number} code
 */
async function refusal(relay, url, token, code) {
  let privateRelay = false;
  try {
    const answer = await fetch(url.replace(/^ws/, "http"), { cache: "no-store", redirect: "manual",
      signal: AbortSignal.timeout(PROBE_TIMEOUT) });
    privateRelay = answer.status === 401 && /realm="p2p-copy"/.test(answer.headers.get("WWW-Authenticate") ?? "");
  } catch {
    // unreachable, or another origin that does not say
  }
  const where = displayName(relay);
  if (privateRelay) {
    return new P2PError("access_denied", token
      ? `The relay at ${where} is private and did not accept our access token. Check the token (a relay of `
        + "p2p-copy 0.7.0 or before takes none from a browser)."
      : `The relay at ${where} is private: it needs an access token, and none was given.`, { closeCode: code });
  }
  // Refused before the upgrade (404, 429, 503) or unreachable: a browser is not told which.
  return new P2PError("relay_refused", `Could not connect to the relay at ${where} `
    + `(code ${code}). Check the address, or try again in a moment.`, { closeCode: code });
}

const decoder = new TextDecoder("utf-8", { fatal: true });
const encoder = new TextEncoder();

/**
 * What a close from the relay means for `role` (p2p_copy/peer/link.py `closed_error`).
 * @param {number} code @param {string} reason @param {"sender" | "receiver"} role
 */
export function closedError(code, reason, role) {
  const other = role === "sender" ? "receiver" : "sender";
  const make = (kind, message) => new P2PError(kind, message, { closeCode: code });
  switch (code) {
    case 4002: case 1013:
      return make("relay_refused", `Another ${role} is already waiting with this code on the relay. `
        + "Use a different code, or wait until that transfer has finished.");
    case 4003:
      return make("timeout", `No ${other} joined with this code in time. Check that both sides typed the same code `
        + "and the same relay address, then try again.");
    case 4004:
      return make("connection_lost", `The ${other} disconnected before the transfer finished. Run both sides again.`);
    case 1000:
      return make("connection_lost", `The ${other} closed the connection before the transfer finished. Run both sides again.`);
    case 1001:
      return make("connection_lost", "The relay is shutting down. Try again in a moment.");
    case 4005:
      return make("connection_lost", "The relay is restarting and closed the connection. Run the transfer again on both sides.");
    case 4006:
      return make("relay_refused", "The relay refused us: too many connections from this address in a short time. "
        + "Wait a minute and try again.");
    case 4007:
      return make("relay_refused", "The relay is full right now (too many waiting peers or transfers). "
        + "Try again later, or use another relay.");
    case 4008:
      return make("relay_refused", "The relay ended the transfer: it allows each pair only so many bytes or so much time "
        + `(${displayName(reason) || "limit reached"}). Use a relay without that limit.`);
    case 4009:
      return make("relay_refused", "The relay is short of memory (it holds as much data for transfers as it allows) "
        + "and closed the connection. Try again later, or use another relay.");
    case 4000: case 4001: case 1009:
      return make("protocol", `The relay refused our messages: ${displayName(reason) || code}.`);
    case 1006: case 1005:
      return make("connection_lost", "The connection to the relay was lost. Check the network and try again.");
    default:
      return make("connection_lost", `The relay closed the connection (code ${code}: ${displayName(reason)}).`);
  }
}

/** The P2PError for an `error` message the peer sent (errors.py `error_for_wire_code`). */
export function peerError(code, message) {
  const text = displayName(message) || `the other side reported '${displayName(code)}'`;
  if (code === "wrong_code") return new P2PError("wrong_code", text, { code });
  if (code === "tampered") return new P2PError("tampered", text, { code });
  return new P2PError("peer", text, { code });
}

function abortError() {
  return new P2PError("cancelled", "The transfer was cancelled.", { wire: "cancelled" });
}

/**
 * One connection to the relay, as a queue of messages: `{text}` or `{data: Uint8Array}`.
 * A close from the relay ends the queue with the P2PError it means.
 */
export class Link {
  /**
   * @param {{relay: string, code: string, role: "sender" | "receiver", fresh?: boolean,
   *   token?: string, WebSocket?: any, signal?: AbortSignal}} options
   *   token: a private relay's access token, offered as a subprotocol (protocol.md §5.11).
   */
  static async open({ relay, code, role, fresh = false, token, WebSocket = globalThis.WebSocket, signal }) {
    if (typeof crypto === "undefined" || !crypto.subtle) {
      throw new P2PError("insecure_context", "This page is not a secure context (https or localhost), so the browser "
        + "offers no cryptography. Open it over https.");
    }
    if (typeof WebSocket !== "function") {
      throw new P2PError("usage", "This JavaScript runtime has no WebSocket (Node 20 needs --experimental-websocket).");
    }
    const hash = await roomHash(code);
    let url;
    try {
      url = roomUrl(relay, hash);
    } catch {
      throw new P2PError("relay_refused", `'${displayName(String(relay))}' is not a relay address (ws://... or wss://...).`);
    }
    const link = new Link(new WebSocket(url, tokenProtocols(token)), role, signal);
    await link.opened(relay, (closeCode) => refusal(relay, url, token, closeCode));
    const hello = { type: "hello", code_hash_hex: hash, role, version: 2 };
    if (fresh) hello.fresh = true;
    link.sendText(encode(hello));
    return link;
  }

  constructor(ws, role, signal) {
    this.ws = ws;
    this.role = role;
    this.signal = signal;
    ws.binaryType = "arraybuffer";
    /** @type {({text: string} | {data: Uint8Array, mark?: number})[]} */
    this.queue = [];
    /**
     * The receiver's last `ack` (§6.6.2), stamped on each binary message as it arrives:
     * what an honest sender can have had acknowledged when it sent that message.
     */
    this.mark = 0;
    this.queuedBytes = 0;
    /** @type {P2PError | null} */
    this.ended = null;
    this.closedByUs = false;
    /** @type {(() => void) | null} */
    this.wake = null;
    ws.onmessage = (event) => {
      const item = typeof event.data === "string" ? { text: event.data } : { data: new Uint8Array(event.data), mark: this.mark };
      this.queuedBytes += "text" in item ? item.text.length : item.data.length;
      this.queue.push(item);
      this.notify();
    };
    /** @type {P2PError | null} what the relay's close means, once it came */
    this.closed = null;
    ws.onclose = (event) => {
      this.closed = closedError(event.code, event.reason ?? "", role);
      if (!this.ended) this.ended = this.closed;
      this.notify();
    };
    ws.onerror = () => {};
    this.onAbort = () => {
      if (!this.ended) this.ended = abortError();
      this.notify();
    };
    signal?.addEventListener("abort", this.onAbort);
  }

  notify() {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /**
   * Resolves once the WebSocket is open, or throws what went wrong.
   * @param {string} relay @param {(code: number) => Promise<P2PError>} refused what a close before it opened means
   */
  opened(relay, refused) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.ws.close();
        reject(new P2PError("connection_lost", `The relay at ${displayName(relay)} did not answer in time.`));
      }, OPEN_TIMEOUT);
      const done = () => { clearTimeout(timer); this.ws.removeEventListener?.("open", onOpen); };
      const onOpen = () => { done(); resolve(undefined); };
      this.ws.addEventListener("open", onOpen);
      let failed = false;
      const fail = (code) => {
        if (failed || this.openedOnce) return;
        failed = true;
        done();
        refused(code).then(reject);
      };
      this.ws.addEventListener("close", (event) => fail(event.code));
      // A refused handshake fires error, then close; Node 20's WebSocket fires error only.
      this.ws.addEventListener("error", () => fail(1006));
      this.ws.addEventListener("open", () => { this.openedOnce = true; });
      if (this.signal?.aborted) { done(); reject(abortError()); }
    });
  }

  /**
   * The next message; `timeout` in ms (0: none) ends the wait with P2PError "timeout".
   * @param {number} [timeout] @param {string} [waitingFor] for the timeout message
   * @returns {Promise<{text: string} | {data: Uint8Array}>}
   */
  async next(timeout = 0, waitingFor = "the other side") {
    const deadline = timeout ? Date.now() + timeout : 0;
    for (;;) {
      if (this.signal?.aborted) throw abortError();
      const item = this.queue.shift();
      if (item) {
        this.queuedBytes -= "text" in item ? item.text.length : item.data.length;
        if ("data" in item ? item.data.length > MAX_MESSAGE : encoder.encode(item.text).length > MAX_MESSAGE) {
          throw violation(`a message is larger than ${MAX_MESSAGE} bytes`);
        }
        return item;
      }
      if (this.ended) throw this.ended;
      let timer;
      await new Promise((resolve) => {
        this.wake = () => resolve(undefined);
        if (deadline) timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
      });
      clearTimeout(timer);
      if (deadline && Date.now() >= deadline && !this.queue.length && !this.ended) {
        throw new P2PError("timeout", `No answer from ${waitingFor} in ${Math.round(timeout / 1000)} s.`, { wire: "timeout" });
      }
    }
  }

  sendText(text) { this.checkOpen(); this.ws.send(text); }
  sendData(bytes) { this.checkOpen(); this.ws.send(bytes); }

  checkOpen() {
    if (this.closed) throw this.closed;
    if (this.ws.readyState !== 1) throw closedError(1006, "", this.role);
  }

  /** Waits while more than HIGH_MARK bytes wait in the socket, until under LOW_MARK. */
  async drain() {
    if (this.ws.bufferedAmount <= HIGH_MARK) return;
    while (this.ws.bufferedAmount > LOW_MARK) {
      if (this.ended) throw this.ended;
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  /** Close with 1000 once what we sent has left (at most ERROR_SEND_WAIT for a last word). */
  async close(wait = false) {
    this.closedByUs = true;
    this.signal?.removeEventListener("abort", this.onAbort);
    if (wait) {
      const until = Date.now() + ERROR_SEND_WAIT;
      while (this.ws.bufferedAmount > 0 && this.ws.readyState === 1 && Date.now() < until) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    }
    if (this.ws.readyState <= 1) this.ws.close(1000);
  }
}

/**
 * Phase 2 over a link: plain during the handshake, sealed after it. Every message in
 * and out goes through here, so nonces follow the order on the wire.
 */
export class Channel {
  /** @param {Link} link */
  constructor(link) {
    this.link = link;
    /** @type {Sealer | null} */
    this.sealer = null;
    /** @type {Opener | null} */
    this.opener = null;
    this.sending = Promise.resolve();
    this.failed = false;
  }

  /** Queue `inner` to be sealed and sent in order; resolves once it is handed to the socket. */
  sendInner(inner) {
    const sealer = /** @type {Sealer} */ (this.sealer);
    const sealed = sealer.seal(inner);  // the nonce is taken now, in call order
    const sent = this.sending.then(async () => {
      const bytes = await sealed;
      this.link.sendData(bytes);
    });
    this.sending = sent.catch(() => {});
    return sent;
  }

  /** A control message, sealed once the handshake is done. */
  send(message) {
    const text = encode(message);
    if (!this.sealer) { this.link.sendText(text); return Promise.resolve(); }
    return this.sendInner(encoder.encode(text));
  }

  /** A data message (kind byte included). */
  sendData(bytes) {
    return this.sendInner(bytes);
  }

  /**
   * The next phase-2 message: `{type, ...}` for control messages, `{type: "data", data}`
   * for data messages. Tampering and violations throw P2PErrors.
   */
  async receive(timeout = 0, waitingFor = undefined) {
    const item = await this.link.next(timeout, waitingFor);
    if (!this.opener) {
      if ("text" in item) return parseMessage(item.text);
      return { type: "data", data: item.data, mark: item.mark };
    }
    if ("text" in item) {
      throw new P2PError("tampered", "An unencrypted message arrived in the middle of an encrypted transfer: the relay "
        + "or the network injected it. Nothing unverified was kept.", { wire: "tampered" });
    }
    const index = this.opener.count;
    const inner = await this.opener.open(item.data);
    if (inner === null) {
      throw new P2PError("tampered", `Message ${index} from the peer failed authentication: the relay or the network `
        + "altered, dropped, reordered, replayed or injected data. Nothing unverified was kept; run both sides again, "
        + "ideally via another relay.", { wire: "tampered" });
    }
    if (inner[0] === 0x7b) {
      let text;
      try { text = decoder.decode(inner); } catch { throw violation("a control message is not valid UTF-8"); }
      return parseMessage(text);
    }
    return { type: "data", data: inner, mark: item.mark };
  }

  /**
   * When our connection broke (`error`), the peer's `error` may still wait unread behind
   * it: that one says why. Returns it as a P2PError, or `error` if none came.
   * @param {P2PError} error
   */
  async explain(error) {
    if (this.link.ws.readyState < 2 || this.failed) return error;
    try {
      for (;;) {
        const message = await this.receive();
        if (message.type === "error") return peerError(message.code, message.message);
      }
    } catch {
      return error;
    }
  }

  /**
   * Tell the peer why we stop (sealed after the handshake, plain before; §6.0.8), then
   * close with 1000. Best effort: the connection may be gone already.
   * @param {P2PError} error
   */
  async fail(error) {
    if (this.failed) return;
    this.failed = true;
    if (error.wire && !this.link.closed) {
      try {
        await this.send({ type: "error", code: error.wire, message: error.peerMessage ?? error.message });
      } catch { /* the connection is gone: nothing to tell */ }
    }
    await this.link.close(true);
  }

  /**
   * The key exchange and confirmation (§6.0.2-6.0.5) for `role`, with the normalised
   * code. Afterwards every message is sealed.
   * @param {"sender" | "receiver"} role @param {string} code
   * @param {{scalar?: bigint, first?: any}} [testing]
   */
  async handshake(role, code, testing = {}) {
    const password = encoder.encode(code);
    const side = role === "sender" ? "A" : "B";
    const run = testing.scalar === undefined ? spake2.start(side, password) : spake2.startWithScalar(side, password, testing.scalar);
    const pake = { type: "pake", suite: SUITE, msg: base64(run.message) };
    let theirPake = false;
    const expect = async (wanted, first) => {
      let message;
      try {
        // The receiver waits for the sender's first word as long as the relay lets it (§10).
        const timeout = role === "sender" || theirPake ? HANDSHAKE_TIMEOUT : 0;
        message = first ?? await this.receive(timeout, "the other side");
      } catch (error) {
        if (theirPake && error instanceof P2PError && (error.kind === "connection_lost" || error.closeCode !== undefined)) {
          throw new P2PError("wrong_code", "The other side stopped in the middle of the key exchange, which is what a "
            + `wrong code guess looks like, so p2p-copy does not retry. Check the code and run both sides again. (${error.message})`);
        }
        throw error;
      }
      if (message.type === "error") throw peerError(message.code, message.message);
      if (message.type !== wanted) {
        if (role === "receiver" && wanted === "pake" && message.type === "manifest") {
          throw new P2PError("protocol", "The sender was started with --no-encrypt, but this side encrypts. "
            + "Run both sides with encryption (the default).", { wire: "encryption_mismatch", code: "encryption_mismatch" });
        }
        throw violation(`expected '${wanted}' during the key exchange, got '${message.type}'`);
      }
      return message;
    };
    const takePake = async (message) => {
      theirPake = true;
      if (message.suite !== SUITE) {
        throw new P2PError("incompatible", `The other side encrypts with '${displayName(message.suite)}', this side with `
          + `'${SUITE}'. Install the same p2p-copy version on both sides.`, { wire: "incompatible" });
      }
      let bytes;
      try { bytes = unbase64(message.msg); } catch { throw violation("'msg' is not base64"); }
      let key;
      try { key = run.finish(bytes); } catch (error) { throw violation(/** @type {Error} */ (error).message); }
      return keySchedule(key);
    };
    let keys;
    if (role === "sender") {
      this.link.sendText(encode(pake));
      keys = await takePake(await expect("pake"));
      const confirm = await expect("confirm");
      if (!equalConstantTime(confirm.mac, toHex(keys.confirmReceiver))) throw wrongCode();
      this.link.sendText(encode({ type: "confirm", mac: toHex(keys.confirmSender) }));
    } else {
      keys = await takePake(await expect("pake", testing.first));
      this.link.sendText(encode(pake));
      this.link.sendText(encode({ type: "confirm", mac: toHex(keys.confirmReceiver) }));
      const confirm = await expect("confirm");
      if (!equalConstantTime(confirm.mac, toHex(keys.confirmSender))) throw wrongCode();
    }
    const [own, theirs] = role === "sender" ? [keys.senderKey, keys.receiverKey] : [keys.receiverKey, keys.senderKey];
    this.sealer = await Sealer.create(own);
    this.opener = await Opener.create(theirs);
  }
}

function wrongCode() {
  return new P2PError("wrong_code", "The code does not match the other side's: either one of you typed it wrong, or "
    + "someone tried to guess it. Nothing was sent. Check the code and run both sides again.", { wire: "wrong_code" });
}

/** @param {Uint8Array} bytes */
function base64(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text);
}

/** Strict base64 (standard alphabet, padding as required). */
function unbase64(text) {
  if (text.length % 4 !== 0) throw new Error("bad base64 length");
  const raw = atob(text);
  const bytes = Uint8Array.from(raw, (c) => c.charCodeAt(0));
  if (base64(bytes) !== text) throw new Error("non-canonical base64");
  return bytes;
}

