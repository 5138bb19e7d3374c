// @ts-check
// One clear line for each way a transfer can end badly. The core's P2PError already
// carries the CLI's wording in .message; these are the words where it has none, and the
// storage errors (disk full, an existing file) come from src/storage/errors.js.

const FALLBACK = {
  bad_code: "That is not a code of the form 7-crossover-clockwork-puma: check it and try again.",
  wrong_code: "The code did not match on the two sides: check it with the sender and try again with a new code.",
  tampered: "The data was changed on the way (a faulty or hostile relay or network): nothing was kept. Try again, perhaps through another relay.",
  connection_lost: "The connection was lost before the transfer finished. Try again.",
  relay_refused: "The relay refused the connection.",
  access_denied: "The relay is private: it needs an access token.",
  timeout: "Nobody came with this code in time. Check the code, or ask the other side to start again.",
  protocol: "The other side sent something this page does not understand: update both sides and try again.",
  peer: "The other side stopped the transfer.",
  declined: "The receiver declined the files.",
  cancelled: "Cancelled.",
  insecure_context: "This page needs a secure (https://) connection for its cryptography.",
  integrity: "A file arrived damaged (its digest did not match the sender's): nothing of it was kept. Try again.",
  unsafe_path: "The sender offered a name this page will not save (outside the folder, or not allowed here).",
  exists: "A file of that name is already there; nothing was replaced.",
  incompatible: "The other side runs a version of p2p-copy this page cannot talk to: update it.",
  storage: "The file could not be saved.",
  disk_full: "Not enough space on the disk: free some space and try again.",
};

/** The one line shown for ``error`` (a P2PError, a StorageError or anything thrown). */
export function describeError(error) {
  if (!error) return "Something went wrong.";
  // A storage failure the core wrapped keeps the storage's own words.
  const cause = error.cause;
  if (cause && cause.name === "StorageError" && cause.message) return cause.message;
  if (typeof error.message === "string" && error.message) return firstLine(error.message);
  if (error.kind && FALLBACK[error.kind]) return FALLBACK[error.kind];
  return firstLine(String(error));
}

function firstLine(text) {
  return text.split("\n")[0];
}

/** The kind of an error: the core's P2PError.kind, a storage error's kind, or "error". */
export function errorKind(error) {
  if (error && error.cause && error.cause.name === "StorageError") return error.cause.kind;
  return (error && typeof error.kind === "string" && error.kind) || "error";
}

/** Whether ``error`` is the person's own cancel (shown quietly, not as a failure). */
export function isCancel(error) {
  return Boolean(error) && (error.kind === "cancelled" || error.name === "AbortError");
}

/**
 * What to say when the browser withholds WebCrypto: pages served over http:// from
 * anything but localhost are not a "secure context".
 */
export function insecureContextMessage(loc) {
  const opened = `${loc.protocol}//${loc.host}`;
  return `This page was opened as ${opened}, which the browser does not treat as secure, so it withholds the cryptography the transfer needs (WebCrypto). Open the page over https:// (run the relay with TLS), or as http://localhost:${loc.port || "80"}/ on the relay's own machine. Nothing was sent.`;
}
