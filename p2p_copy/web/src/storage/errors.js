// @ts-check
// One line for each way saving can fail, in the words the person needs.

export class StorageError extends Error {
  /** @param {string} kind "disk_full" | "exists" | "denied" | "unavailable" | "cancelled" | "io" */
  constructor(kind, message, cause = undefined) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "StorageError";
    this.kind = kind;
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
