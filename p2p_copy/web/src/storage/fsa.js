// @ts-check
// Saving through the File System Access API: straight to the disk the person chose, as the
// bytes arrive. One file: the handle of showSaveFilePicker. Several files or folders: the
// handle of showDirectoryPicker, under which each received path is created.
//
// A file in a folder is written under a hidden part name (.NAME.p2p-copy-part, the name
// the CLI gives its partial files, protocol.md §11) and moved to NAME only once the core
// closes it, i.e. after its digest matched; a cut transfer leaves the parts for a resume.
// Where handles cannot move(), a file is written under NAME (the browser's createWritable
// keeps the bytes in a swap file until close()) and removed again on abort. An existing
// name is never replaced.

import { coalescing } from "./coalesce.js";
import { StorageError, storageError } from "./errors.js";

/** Bytes gathered before each write to the file (one round trip to the browser each). */
const WRITE_SIZE = 4 * 1024 * 1024;

const PART_SUFFIX = ".p2p-copy-part";

/**
 * Whether the File System Access pickers can be used here: Chromium on a desktop, in a
 * top-level page or a same-origin frame (browser-fs-access's check).
 * @param {any} win
 */
export function fsaUsable(win = globalThis) {
  if (typeof win.showSaveFilePicker !== "function" || typeof win.showDirectoryPicker !== "function") {
    return false;
  }
  try {
    return win.self === win.top || Boolean(win.top && win.top.location && win.top.location.href);
  } catch {
    return false; // a cross-origin frame: the pickers throw SecurityError there
  }
}

/** A writer over a FileSystemWritableFileStream. */
function writerOf(writable, what, size, { onClose, onAbort, keepOnAbort = false }) {
  let closed = false;
  const gathered = coalescing(async (bytes) => {
    try {
      await writable.write(bytes);
    } catch (e) {
      throw storageError(e, what);
    }
  }, { size: Math.min(size, WRITE_SIZE) });
  return {
    write: (chunk) => gathered.write(chunk),
    async close() {
      if (closed) return;
      closed = true;
      await gathered.end();
      try {
        await writable.close();
        await onClose();
      } catch (e) {
        throw storageError(e, what);
      }
    },
    async abort() {
      if (closed) return;
      closed = true;
      try {
        // A kept part holds what arrived (close() commits it); otherwise nothing is kept.
        if (keepOnAbort) {
          await gathered.end();
          await writable.close();
        } else {
          await writable.abort();
        }
      } catch {
        // already failed or closed; the clean-up below still runs
      }
      await onAbort();
    },
  };
}

/**
 * Storage for a single file chosen with showSaveFilePicker (the picker asked about
 * replacing an existing file; the person said yes).
 * @param {any} fileHandle FileSystemFileHandle
 */
export function fileTarget(fileHandle) {
  let opened = false;
  return {
    kind: "fsa-file",
    describe: (done = false) => `${done ? "Saved" : "Saving"} as ${fileHandle.name}`,
    async mkdir() {
      throw new StorageError("io", "The sender sent a folder, but a single file was expected.");
    },
    async open(path, _size, { offset = 0 } = {}) {
      if (opened) throw new StorageError("io", "The sender sent more than the one file it offered.");
      opened = true;
      let writable;
      try {
        writable = await fileHandle.createWritable({ keepExistingData: offset > 0 });
        if (offset > 0) await writable.seek(offset);
      } catch (e) {
        throw storageError(e, fileHandle.name);
      }
      return writerOf(writable, fileHandle.name, _size - offset, {
        onClose: async () => {},
        async onAbort() {
          // The picker created the file; an empty one left under the chosen name would look
          // like a received file. (A file that was there keeps its bytes: createWritable
          // wrote to a swap file, which abort() dropped.)
          try {
            if ((await fileHandle.getFile()).size === 0) await fileHandle.remove?.();
          } catch {
            // gone already, or the browser cannot remove it
          }
        },
      });
    },
    async done() {},
    async abort() {},
  };
}

async function exists(dir, name) {
  for (const get of ["getFileHandle", "getDirectoryHandle"]) {
    try {
      await dir[get](name);
      return true;
    } catch (e) {
      if (e && e.name === "TypeMismatchError") return true;
      if (!e || e.name !== "NotFoundError") throw e;
    }
  }
  return false;
}

/** Resume works in whole blocks of this size (protocol.md §6.5.1). */
const BLOCK = 1024 * 1024;
/** Failures after which the part files stay, for the next attempt to resume from. */
const RESUMABLE = new Set(["connection_lost", "timeout", "cancelled", "relay_refused"]);

/**
 * Storage for a folder chosen with showDirectoryPicker({mode: "readwrite"}).
 * Where handles can move(), a file is written as .NAME.p2p-copy-part and moved to NAME
 * once verified; parts left by a transfer that was cut are offered for resume (held)
 * when the same files are received into the same folder again.
 * @param {any} root FileSystemDirectoryHandle
 */
export function directoryTarget(root, { canMove = "move" in (globalThis.FileSystemFileHandle?.prototype ?? {}) } = {}) {
  /** @type {Map<string, any>} */
  const dirs = new Map([["", root]]);
  /** Parts written in this transfer: kept or removed when it fails. */
  const parts = new Map();
  /** Held prefixes by file number: {path, size, offset, file}. */
  const held = new Map();
  const opened = new Set();

  async function folder(parts, create = true) {
    let path = "";
    let dir = root;
    for (const part of parts) {
      path = path ? `${path}/${part}` : part;
      let next = dirs.get(path);
      if (!next) {
        try {
          next = await dir.getDirectoryHandle(part, { create });
        } catch (e) {
          if (!create && e && e.name === "NotFoundError") return null;
          if (e && e.name === "TypeMismatchError") {
            throw new StorageError("exists", `${path} already exists in ${root.name} and is not a folder: choose another folder.`);
          }
          throw storageError(e, path);
        }
        dirs.set(path, next);
      }
      dir = next;
    }
    return dir;
  }

  const split = (path) => {
    const names = path.split("/");
    const name = /** @type {string} */ (names.pop());
    return { names, name, partName: canMove ? `.${name}${PART_SUFFIX}` : name };
  };

  async function finish(dir, name, partName, path) {
    if (!canMove) return;
    if (await exists(dir, name)) {
      throw new StorageError("exists", `${path} appeared in ${root.name} during the transfer; the received copy is kept as ${partName}.`);
    }
    const handle = await dir.getFileHandle(partName);
    await handle.move(name);
  }

  return {
    kind: "fsa-dir",
    describe: (done = false) => `${done ? "Saved" : "Saving"} into the folder ${root.name}`,
    async held(files) {
      if (!canMove) return [];
      const out = [];
      for (const [index, file] of files.entries()) {
        const { names, name, partName } = split(file.path);
        try {
          const dir = await folder(names, false);
          if (!dir || (await exists(dir, name))) continue;
          const part = await (await dir.getFileHandle(partName)).getFile();
          const offset = part.size >= file.size ? file.size : Math.floor(part.size / BLOCK) * BLOCK;
          if (offset > 0) {
            held.set(index, { path: file.path, size: file.size, offset, file: part });
            out.push([index, offset]);
          }
        } catch {
          // no part of this file here
        }
      }
      return out;
    },
    async prefix(index) {
      return held.get(index).file;
    },
    async mkdir(path) {
      await folder(path.split("/"));
    },
    async open(path, _size, { offset = 0 } = {}) {
      const { names, name, partName } = split(path);
      const dir = await folder(names);
      opened.add(path);
      if (await exists(dir, name)) {
        throw new StorageError("exists",
          `${path} already exists in ${root.name}; nothing was replaced. Choose an empty folder, or move it away first.`);
      }
      let writable;
      try {
        const handle = await dir.getFileHandle(partName, { create: true });
        writable = await handle.createWritable({ keepExistingData: offset > 0 });
        if (offset > 0) {
          await writable.truncate(offset);
          await writable.seek(offset);
        }
      } catch (e) {
        throw storageError(e, path);
      }
      parts.set(path, { dir, partName });
      return writerOf(writable, path, _size - offset, {
        async onClose() {
          parts.delete(path);
          await finish(dir, name, partName, path);
        },
        // What arrived stays in the part until the transfer's end decides (sink.abort).
        keepOnAbort: canMove,
        async onAbort() {},
      });
    },
    async done() {
      // Files held whole were verified by their prefix digests and never opened.
      for (const { path, size, offset } of held.values()) {
        if (offset !== size || opened.has(path)) continue;
        const { names, name, partName } = split(path);
        await finish(await folder(names), name, partName, path);
      }
    },
    async abort(error) {
      const keep = canMove && error && RESUMABLE.has(error.kind);
      if (keep) return;
      for (const { dir, partName } of parts.values()) {
        try {
          await dir.removeEntry(partName);
        } catch {
          // nothing to remove
        }
      }
      parts.clear();
    },
  };
}
