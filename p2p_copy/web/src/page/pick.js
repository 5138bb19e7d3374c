// @ts-check
// What the person chose to send, as the core's entries:
//   { path: "dir/a.txt", kind: "file", size, mtime, blob } and { path: "dir/empty", kind: "dir" }.
// Three ways in: a drop (webkitGetAsEntry, folders walked), the folder picker
// (showDirectoryPicker handles, walked), and <input type=file> (multiple or webkitdirectory).
// Every folder gets its own dir entry, so that empty ones arrive too; <input webkitdirectory>
// lists files only, which is why the folder button prefers showDirectoryPicker.

/** @typedef {{path: string, kind: "file", size: number, mtime?: number, blob: Blob}} FileEntry */
/** @typedef {{path: string, kind: "dir"}} DirEntry */
/** @typedef {FileEntry | DirEntry} Entry */

/** Paths in NFC with "/" only, as protocol.md §7 recommends a sender to send them. */
function clean(path) {
  return path.normalize("NFC");
}

/** @param {File} file @param {string} path @returns {FileEntry} */
function fileEntry(file, path) {
  return {
    path: clean(path),
    kind: "file",
    size: file.size,
    mtime: Number.isFinite(file.lastModified) ? file.lastModified / 1000 : undefined,
    blob: file,
  };
}

/** @param {string} path @returns {DirEntry} */
function dirEntry(path) {
  return { path: clean(path), kind: "dir" };
}

/** The parent folders of each file path as dir entries ("a/b/c.txt" -> "a", "a/b"). */
function parentsOf(paths) {
  const dirs = new Set();
  for (const path of paths) {
    const parts = path.split("/");
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join("/"));
  }
  return [...dirs].map(dirEntry);
}

/**
 * Files from an <input type=file>: with webkitdirectory each has a webkitRelativePath
 * ("folder/sub/a.txt"); its folders are added as dir entries (empty ones are lost there).
 * @param {ArrayLike<File>} files
 * @returns {Entry[]}
 */
export function entriesFromFiles(files) {
  const out = [];
  for (const file of Array.from(files)) {
    out.push(fileEntry(file, file.webkitRelativePath || file.name));
  }
  return [...parentsOf(out.filter((e) => e.path.includes("/")).map((e) => e.path)), ...out];
}

/** All entries of a FileSystemDirectoryReader: Chromium returns at most 100 per call. */
function readAll(reader) {
  return new Promise((resolve, reject) => {
    const all = [];
    const more = () =>
      reader.readEntries((batch) => {
        if (batch.length === 0) {
          resolve(all);
        } else {
          all.push(...batch);
          more();
        }
      }, reject);
    more();
  });
}

/** @returns {Promise<File>} */
function fileOf(entry) {
  return new Promise((resolve, reject) => entry.file(resolve, reject));
}

/**
 * Entries under a dropped item (FileSystemEntry from webkitGetAsEntry), the item first.
 * @param {any} entry
 * @param {string} path
 * @param {Entry[]} out
 */
async function walkEntry(entry, path, out) {
  if (entry.isFile) {
    out.push(fileEntry(await fileOf(entry), path));
  } else if (entry.isDirectory) {
    out.push(dirEntry(path));
    for (const child of await readAll(entry.createReader())) {
      await walkEntry(child, `${path}/${child.name}`, out);
    }
  }
}

/**
 * Entries from a drop. The DataTransfer's items are only readable during the event, so
 * this takes their FileSystemEntry objects synchronously and walks them afterwards.
 * @param {DataTransfer} dataTransfer
 * @returns {Promise<Entry[]>}
 */
export function entriesFromDrop(dataTransfer) {
  const roots = [];
  const loose = [];
  for (const item of Array.from(dataTransfer.items || [])) {
    if (item.kind !== "file") continue;
    const entry = item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    if (entry) roots.push(entry);
    else {
      const file = item.getAsFile();
      if (file) loose.push(file);
    }
  }
  if (roots.length === 0 && loose.length === 0 && dataTransfer.files) {
    loose.push(...Array.from(dataTransfer.files));
  }
  return (async () => {
    /** @type {Entry[]} */
    const out = loose.map((f) => fileEntry(f, f.name));
    for (const root of roots) await walkEntry(root, root.name, out);
    return out;
  })();
}

/**
 * Entries of a folder chosen with showDirectoryPicker: the folder itself, every
 * sub-folder (empty ones too) and every file.
 * @param {any} handle FileSystemDirectoryHandle
 * @returns {Promise<Entry[]>}
 */
export async function entriesFromDirectoryHandle(handle) {
  /** @type {Entry[]} */
  const out = [];
  async function walk(dir, path) {
    out.push(dirEntry(path));
    const children = [];
    for await (const child of dir.values()) children.push(child);
    children.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const child of children) {
      const childPath = `${path}/${child.name}`;
      if (child.kind === "directory") await walk(child, childPath);
      else out.push(fileEntry(await child.getFile(), childPath));
    }
  }
  await walk(handle, handle.name);
  return out;
}

/**
 * The selection after adding ``more``: one entry per path (a later choice replaces an
 * earlier one of the same path), folders before what they hold.
 * @param {Entry[]} current
 * @param {Entry[]} more
 * @returns {Entry[]}
 */
export function mergeEntries(current, more) {
  const byPath = new Map(current.map((e) => [e.path, e]));
  for (const e of more) byPath.set(e.path, e);
  return [...byPath.values()].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** {files, dirs, bytes} of a selection. */
export function countEntries(entries) {
  let files = 0;
  let dirs = 0;
  let bytes = 0;
  for (const e of entries) {
    if (e.kind === "file") {
      files += 1;
      bytes += e.size;
    } else dirs += 1;
  }
  return { files, dirs, bytes };
}

/**
 * The top-level items of a selection, for the list shown before sending:
 * [{name, kind, files, bytes}].
 */
export function topLevel(entries) {
  const tops = new Map();
  for (const e of entries) {
    const name = e.path.split("/")[0];
    const isRoot = !e.path.includes("/");
    let top = tops.get(name);
    if (!top) {
      top = { name, kind: isRoot ? e.kind : "dir", files: 0, bytes: 0 };
      tops.set(name, top);
    }
    if (isRoot) top.kind = e.kind;
    if (e.kind === "file") {
      top.files += 1;
      top.bytes += e.size;
    }
  }
  return [...tops.values()];
}
