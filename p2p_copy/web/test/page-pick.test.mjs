// What the person chose, as the core's entries: folders walked, empty ones kept.
import assert from "node:assert/strict";
import { test } from "node:test";

import { countEntries, entriesFromDirectoryHandle, entriesFromDrop, entriesFromFiles, mergeEntries, topLevel } from "../src/page/pick.js";

const file = (name, text, relative = "") => Object.assign(new File([text], name, { lastModified: 1_700_000_000_000 }), relative ? { webkitRelativePath: relative } : {});

/** A FileSystemEntry tree like Chromium's, whose readEntries returns at most 100 at a time. */
function fakeEntry(name, tree) {
  if (typeof tree === "string") {
    return { name, isFile: true, isDirectory: false, file: (ok) => ok(file(name, tree)) };
  }
  const children = Object.entries(tree).map(([n, t]) => fakeEntry(n, t));
  return {
    name, isFile: false, isDirectory: true,
    createReader() {
      let at = 0;
      return {
        readEntries(ok) {
          const batch = children.slice(at, at + 100);
          at += batch.length;
          setTimeout(() => ok(batch), 0);
        },
      };
    },
  };
}

/** A FileSystemDirectoryHandle tree (showDirectoryPicker's). */
function fakeHandle(name, tree) {
  if (typeof tree === "string") return { name, kind: "file", getFile: async () => file(name, tree) };
  return {
    name, kind: "directory",
    async *values() {
      for (const [n, t] of Object.entries(tree)) yield fakeHandle(n, t);
    },
  };
}

const many = Object.fromEntries(Array.from({ length: 250 }, (_, i) => [`f${String(i).padStart(3, "0")}.txt`, "x"]));

test("a dropped folder is walked past 100 entries per read, and its empty folders are kept", async () => {
  const root = fakeEntry("proj", { "é.txt": "hé", empty: {}, big: many, "zero.bin": "" });
  const dataTransfer = { items: [{ kind: "file", webkitGetAsEntry: () => root }], files: [] };
  const entries = await entriesFromDrop(dataTransfer);
  const paths = entries.map((e) => `${e.kind}:${e.path}`);
  assert.ok(paths.includes("dir:proj"));
  assert.ok(paths.includes("dir:proj/empty"));
  assert.ok(paths.includes("file:proj/zero.bin"));
  assert.ok(paths.includes("file:proj/é.txt"));
  assert.equal(entries.filter((e) => e.path.startsWith("proj/big/")).length, 250);
  const zero = entries.find((e) => e.path === "proj/zero.bin");
  assert.equal(zero.size, 0);
  assert.equal(zero.mtime, 1_700_000_000);
  assert.deepEqual(countEntries(entries), { files: 252, dirs: 3, bytes: 3 + 250 });
});

test("a folder from showDirectoryPicker keeps empty folders; names come out in NFC", async () => {
  const decomposed = "e\u0301.txt";
  const entries = await entriesFromDirectoryHandle(fakeHandle("top", { sub: { deeper: {} }, [decomposed]: "1" }));
  assert.deepEqual(entries.map((e) => `${e.kind}:${e.path}`), ["dir:top", "file:top/\u00e9.txt", "dir:top/sub", "dir:top/sub/deeper"]);
});

test("files from <input webkitdirectory> bring their folders as dir entries", () => {
  const entries = entriesFromFiles([file("a.txt", "1", "d/a.txt"), file("b.txt", "22", "d/s/b.txt")]);
  assert.deepEqual(entries.map((e) => `${e.kind}:${e.path}`), ["dir:d", "dir:d/s", "file:d/a.txt", "file:d/s/b.txt"]);
  assert.deepEqual(topLevel(entries), [{ name: "d", kind: "dir", files: 2, bytes: 3 }]);
});

test("choosing the same path again replaces it; folders sort before their content", () => {
  const first = entriesFromFiles([file("a.txt", "1")]);
  const again = entriesFromFiles([file("a.txt", "1234"), file("b.txt", "")]);
  const merged = mergeEntries(mergeEntries([], first), again);
  assert.deepEqual(merged.map((e) => [e.path, e.size]), [["a.txt", 4], ["b.txt", 0]]);
});
