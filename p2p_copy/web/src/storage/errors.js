// @ts-check
// One line for each way saving can fail, in the words the person needs. A StorageError is
// a P2PError, so the core passes it on as it is and the sender reads the matching wire
// code (protocol.md §8: disk_full, exists; internal for the rest).

import { P2PError } from "../protocol/errors.js";

const WIRE = { disk_full: "disk_full", exists: "exists" };
const PEER = {
  disk_full: "The receiver's disk is full (a web page's storage).",
  exists: "A file of that name already exists where the receiver (a web page) saves; nothing was replaced. The receiver must move it away, or choose another folder.",
};

export class StorageError extends P2PError {
  /** @param {string} kind "disk_full" | "exists" | "denied" | "unavailable" | "cancelled" | "io" */
  constructor(kind, message, cause = undefined) {
    super(kind, message, {
      cause,
      wire: WIRE[kind] ?? "internal",
      peerMessage: PEER[kind] ?? "The receiver (a web page) could not save the files.",
    });
    this.name = "StorageError";
  }
}

/** A DOMException (or anything) thrown while writing, as a StorageError. */
export function storageError(error, what = "the file") {
  if (error instanceof StorageError) return error;
  const name = error && error.name;
  if (name === "QuotaExceededError") {
    return new StorageError("disk_full",
      `Not enough space to save ${what}: the disk is full or the browser's storage quota is used up. Free some space and try again.`,
      error);
  }
  if (name === "NotAllowedError" || name === "SecurityError") {
    return new StorageError("denied",
      `The browser did not allow saving ${what}: grant access to the folder, or choose another one.`, error);
  }
  if (name === "AbortError") {
    return new StorageError("cancelled", `Saving ${what} was cancelled.`, error);
  }
  if (name === "NoModificationAllowedError" || name === "InvalidStateError") {
    return new StorageError("io",
      `Could not write ${what}: another program or tab holds it. Close it and try again.`, error);
  }
  return new StorageError("io", `Could not write ${what}: ${(error && error.message) || error}`, error);
}
