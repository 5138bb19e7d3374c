// @ts-check
// Saving through the File System Access API: straight to the disk the person chose, as the
// bytes arrive. One file: the handle of showSaveFilePicker. Several files or folders: the
// handle of showDirectoryPicker, under which each received path is created.
//
// A file in a folder is written under a hidden part name (.NAME.p2p-copy-part, the name
// the CLI gives its partial files, protocol.md §11) and moved to NAME only once the core
// closes it, i.e. after its digest matched; where handles cannot move(), it is written
// under NAME (the browser's createWritable keeps the bytes in a swap file until close())
// and removed again on abort. An existing name is never replaced.

import { StorageError, storageError } from "./errors.js";

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
function writerOf(writable, what, { onClose, onAbort }) {
  let closed = false;
  return {
    async write(chunk) {
      try {
        await writable.write(chunk);
      } catch (e) {
        throw storageError(e, what);
      }
    },
    async close() {
      if (closed) return;
      closed = true;
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
        await writable.abort();
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
    describe: () => `Saving as ${fileHandle.name}`,
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
      return writerOf(writable, fileHandle.name, { onClose: async () => {}, onAbort: async () => {} });
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

/**
 * Storage for a folder chosen with showDirectoryPicker({mode: "readwrite"}).
 * @param {any} root FileSystemDirectoryHandle
 */
export function directoryTarget(root) {
  /** @type {Map<string, any>} */
  const dirs = new Map([["", root]]);

  async function folder(parts) {
    let path = "";
    let dir = root;
    for (const part of parts) {
      path = path ? `${path}/${part}` : part;
      let next = dirs.get(path);
      if (!next) {
        try {
          next = await dir.getDirectoryHandle(part, { create: true });
        } catch (e) {
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

  return {
    kind: "fsa-dir",
    describe: () => `Saving into the folder ${root.name}`,
    async mkdir(path) {
      await folder(path.split("/"));
    },
    async open(path, _size, { offset = 0 } = {}) {
      const parts = path.split("/");
      const name = /** @type {string} */ (parts.pop());
      const dir = await folder(parts);
      if (await exists(dir, name)) {
        throw new StorageError("exists",
          `${path} already exists in ${root.name}; nothing was replaced. Choose an empty folder, or move it away first.`);
      }
      const canMove = typeof dir.getFileHandle === "function" && "move" in (globalThis.FileSystemHandle?.prototype ?? {});
      const partName = canMove ? `.${name}${PART_SUFFIX}` : name;
      let handle;
      let writable;
      try {
        handle = await dir.getFileHandle(partName, { create: true });
        writable = await handle.createWritable({ keepExistingData: offset > 0 });
        if (offset > 0) await writable.seek(offset);
      } catch (e) {
        throw storageError(e, path);
      }
      return writerOf(writable, path, {
        async onClose() {
          if (!canMove) return;
          if (await exists(dir, name)) {
            throw new StorageError("exists", `${path} appeared in ${root.name} during the transfer; the received copy is kept as ${partName}.`);
          }
          await handle.move(name);
        },
        async onAbort() {
          try {
            await dir.removeEntry(partName);
          } catch {
            // nothing to remove
          }
        },
      });
    },
    async done() {},
    async abort() {},
  };
}
