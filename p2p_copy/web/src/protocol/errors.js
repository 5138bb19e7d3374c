// @ts-check
/**
 * The one error class of the browser peer. `kind` says what happened, in words a page can
 * branch on; `message` is one line for a person, worded like the Python CLI's where it has
 * an equivalent.
 *
 * Kinds: bad_code, wrong_code, tampered, connection_lost, relay_refused, access_denied (a
 * private relay, and no or another access token), timeout, protocol, peer (the peer's
 * `error`; `.code` is its wire code), declined, cancelled, insecure_context, unsafe_path,
 * integrity, incompatible, exists, storage, usage.
 */
export class P2PError extends Error {
  /**
   * @param {string} kind
   * @param {string} message
   * @param {{code?: string, wire?: string, peerMessage?: string, closeCode?: number, cause?: unknown}} [extra]
   *   code: the wire code the peer sent (kind "peer"); wire: the wire code we send our peer
   *   for this failure (absent: nothing to send); peerMessage: what the peer's user reads
   *   instead of `message`; closeCode: the relay's close code.
   */
  constructor(kind, message, extra = {}) {
    super(message, extra.cause === undefined ? undefined : { cause: extra.cause });
    this.name = "P2PError";
    this.kind = kind;
    /** @type {string | undefined} */
    this.code = extra.code;
    /** @type {string | undefined} */
    this.wire = extra.wire;
    /** @type {number | undefined} */
    this.closeCode = extra.closeCode;
    /** @type {string | undefined} */
    this.peerMessage = extra.peerMessage;
  }
}

/** A violation by the peer (§9): we answer with `error` code `protocol`. */
export function violation(message) {
  return new P2PError("protocol", `The other side broke the protocol: ${message}`, { wire: "protocol" });
}

/** Anything thrown, as a P2PError (an unexpected one is `internal`, for us and the peer). */
export function asP2PError(error) {
  if (error instanceof P2PError) return error;
  return new P2PError("internal", `Unexpected failure: ${/** @type {Error} */ (error)?.message ?? error}`,
    { wire: "internal", cause: error });
}
