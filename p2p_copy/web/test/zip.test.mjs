// The .zip a browser without File System Access saves several files or a folder as
// (src/storage/zip.js, written by client-zip): its length is known from the manifest before
// the first byte (the download's Content-Length) and equals what comes out, it reads back
// with Python's zipfile as the same tree and bytes, it ends only at done() (after every
// digest matched), and any failure aborts it. Driven as the receive core drives storage.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";

import { zipLength, zipName, zipTarget, zipTime } from "../src/storage/zip.js";

const MiB = 1024 * 1024;
const PYTHON = process.env.PYTHON || "python3";

// Reads a zip with Python's zipfile: every entry with its bytes' SHA-256, then testzip().
const READ_ZIP = `
import hashlib, json, sys, zipfile
skip = set(sys.argv[2:])
with zipfile.ZipFile(sys.argv[1]) as z:
    out = []
    for i in z.infolist():
        e = {"name": i.filename, "dir": i.is_dir(), "size": i.file_size, "date": list(i.date_time),
             "mode": i.external_attr >> 16, "method": i.compress_type, "utf8": bool(i.flag_bits & 0x800)}
        if not i.is_dir():
            if i.filename in skip:
                with z.open(i) as f:
                    e["head"] = f.read(16).hex()
            else:
                e["sha256"] = hashlib.sha256(z.read(i)).hexdigest()
        out.append(e)
    print(json.dumps({"entries": out, "bad": None if skip else z.testzip()}))
`;

function readZip(path, skip = []) {
  const run = spawnSync(PYTHON, ["-c", READ_ZIP, path, ...skip], { encoding: "utf-8", timeout: 120_000 });
  assert.equal(run.status, 0, run.stderr);
  return JSON.parse(run.stdout);
}

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");

function bytesOf(size, seed) {
  const out = new Uint8Array(size);
  for (let i = 0; i < size; i++) out[i] = (i * 131 + seed * 7 + (i >> 9)) & 255;
  return out;
}

/** An output that keeps what it is given (copied: write() must be done with the bytes). */
function memoryOut() {
  const out = { name: "", length: -1, parts: [], buffers: new Set(), closed: 0, aborted: 0, written: 0 };
  out.open = async (name, length) => {
    out.name = name;
    out.length = length;
    return {
      async write(bytes) {
        if (bytes.length === MiB) out.buffers.add(bytes.buffer);
        out.parts.push(bytes.slice());
        out.written += bytes.length;
      },
      async close() { out.closed += 1; },
      async abort() { out.aborted += 1; },
    };
  };
  out.bytes = () => Buffer.concat(out.parts);
  return out;
}

/**
 * Drives ``target`` as src/receive.js does: empty files opened first, each file's bytes in
 * pieces of mixed sizes, a file closed (verified) only later, the folders at the end, done.
 * ``contents`` maps a file's path to its bytes.
 */
async function receiveInto(target, entries, contents, { pieces = [1, 1000, 65536, 262144, 7] } = {}) {
  const files = entries.filter((e) => e.kind !== "dir");
  const open = [];
  let turn = 0;
  for (const file of files) {
    const writer = await target.open(file.path, file.size, { offset: 0 });
    const bytes = contents.get(file.path);
    for (let at = 0; at < bytes.length;) {
      const n = Math.min(pieces[turn++ % pieces.length], bytes.length - at);
      await writer.write(bytes.subarray(at, at + n));
      at += n;
    }
    open.push(writer);
    // Checksums come a file late: the previous file is verified while this one is open.
    if (open.length > 1) await open.shift().close();
  }
  for (const writer of open) await writer.close();
  for (const dir of entries.filter((e) => e.kind === "dir").reverse()) await target.mkdir(dir.path, dir);
  await target.done();
}

function tempDir() {
  return mkdtempSync(join(tmpdir(), "p2p-zip-"));
}

const LOCAL_2021 = new Date(2021, 4, 6, 7, 8, 10).getTime() / 1000;

const TREE = [
  { path: "trip", kind: "dir", mode: 0o755, mtime: LOCAL_2021 },
  { path: "trip/a.txt", size: 14, mode: 0o644, mtime: LOCAL_2021 + 1.5 },
  { path: "trip/empty.txt", size: 0, mode: 0o600 },
  { path: "trip/名前 é.bin", size: 100_003, mode: 0o755, mtime: LOCAL_2021 },
  { path: "trip/empty folder", kind: "dir", mode: 0o700 },
  { path: "trip/sub", kind: "dir" },
  { path: "trip/sub/big.bin", size: 3 * MiB + 17, mtime: 0 },
  { path: "trip/sub/deeper/ü", size: 1 },
];

function contentsOf(entries) {
  return new Map(entries.filter((e) => e.kind !== "dir").map((e, i) => [e.path, bytesOf(e.size, i)]));
}

test("the zip's predicted length is its length, and zipfile reads back the same tree and bytes", async () => {
  const contents = contentsOf(TREE);
  const out = memoryOut();
  const target = zipTarget(TREE, out.open);
  assert.equal(target.name, "trip.zip");
  assert.equal(target.length, zipLength(TREE));
  await receiveInto(target, TREE, contents);
  const bytes = out.bytes();
  assert.equal(out.name, "trip.zip");
  assert.equal(out.length, target.length, "Content-Length is the predicted length");
  assert.equal(bytes.length, target.length, "the bytes are exactly that long");
  assert.equal(out.closed, 1);
  assert.equal(out.aborted, 0);
  const dir = tempDir();
  try {
    writeFileSync(join(dir, "t.zip"), bytes);
    const { entries, bad } = readZip(join(dir, "t.zip"));
    assert.equal(bad, null, "every CRC matches");
    // Manifest order, folders with a trailing slash, every name flagged UTF-8, stored.
    assert.deepEqual(entries.map((e) => e.name), TREE.map((e) => (e.kind === "dir" ? `${e.path}/` : e.path)));
    for (const [entry, want] of entries.map((e, i) => [e, TREE[i]])) {
      assert.equal(entry.dir, want.kind === "dir");
      assert.equal(entry.method, 0, "stored");
      assert.ok(entry.utf8);
      assert.equal(entry.mode & 0o777, want.mode ?? (want.kind === "dir" ? 0o755 : 0o644));
      if (want.kind !== "dir") {
        assert.equal(entry.size, want.size);
        assert.equal(entry.sha256, sha256(contents.get(want.path)));
      }
    }
    // Local times to the 2 s of a DOS time; none (or before 1980) is 1980-01-01 00:00.
    assert.deepEqual(entries[0].date, [2021, 5, 6, 7, 8, 10]);
    assert.deepEqual(entries[1].date, [2021, 5, 6, 7, 8, 10]);
    assert.deepEqual(entries[2].date, [1980, 1, 1, 0, 0, 0]);
    assert.deepEqual(entries[6].date, [1980, 1, 1, 0, 0, 0]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the same manifest always gives the same zip; the data go through a few reused buffers", async () => {
  const entries = [{ path: "d", kind: "dir" }, { path: "d/x.bin", size: 20 * MiB + 5 }];
  const contents = contentsOf(entries);
  const runs = [];
  for (let i = 0; i < 2; i++) {
    const out = memoryOut();
    await receiveInto(zipTarget(entries, out.open), entries, contents, { pieces: [256 * 1024] });
    runs.push(out);
  }
  assert.ok(runs[0].bytes().equals(runs[1].bytes()));
  assert.equal(runs[0].bytes().length, zipLength(entries));
  // 21 MiB in 1 MiB buffers: a handful of distinct ones, handed back and refilled.
  assert.ok(runs[0].buffers.size <= 6, `${runs[0].buffers.size} distinct 1 MiB buffers`);
});

test("folders only, several tops, a single file: lengths and names", async () => {
  const cases = [
    [[{ path: "empty", kind: "dir" }], "empty.zip"],
    [[{ path: "a", size: 0 }, { path: "b", kind: "dir" }, { path: "c", size: 3 }], "p2p-copy-2-files.zip"],
    [[{ path: "x/1", size: 1 }, { path: "y", size: 0 }], "p2p-copy-2-files.zip"],
    [[{ path: "x", kind: "dir" }, { path: "y", kind: "dir" }], "p2p-copy-0-files.zip"],
    [[{ path: "one", size: 5 }, { path: "two", kind: "dir" }], "p2p-copy-1-file.zip"],
  ];
  for (const [entries, name] of cases) {
    assert.equal(zipName(entries), name);
    const out = memoryOut();
    await receiveInto(zipTarget(entries, out.open), entries, contentsOf(entries));
    assert.equal(out.bytes().length, zipLength(entries), name);
    assert.equal(out.closed, 1);
  }
});

test("an empty manifest opens no download", async () => {
  const out = memoryOut();
  const target = zipTarget([], out.open);
  await target.done();
  assert.equal(out.length, -1);
});

test("zip times: clamped to what a zip can store, none is 1980", () => {
  assert.equal(zipTime(null).getTime(), new Date(1980, 0, 1).getTime());
  assert.equal(zipTime(undefined).getTime(), new Date(1980, 0, 1).getTime());
  assert.equal(zipTime(-5).getTime(), new Date(1980, 0, 1).getTime());
  assert.equal(zipTime(1e12).getTime(), new Date(2107, 11, 31, 23, 59, 58).getTime());
  assert.equal(zipTime(1_700_000_000.5).getTime(), 1_700_000_000_500);
});

test("the zip ends only at done(): the last file's bytes in are not the end", async () => {
  const entries = [{ path: "t/a", size: 10 }];
  const out = memoryOut();
  const target = zipTarget(entries, out.open);
  const writer = await target.open("t/a", 10);
  await writer.write(new Uint8Array(10));
  await writer.close();
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(out.closed, 0);
  assert.ok(out.written < target.length, "the central directory waits for done()");
  await target.done();
  assert.equal(out.written, target.length);
  assert.equal(out.closed, 1);
});

test("a file that fails its digest aborts the zip: never closed, the download fails", async () => {
  const entries = [{ path: "t/a", size: 3 * MiB }, { path: "t/b", size: 5 }];
  const out = memoryOut();
  const target = zipTarget(entries, out.open);
  const a = await target.open("t/a", 3 * MiB);
  await a.write(new Uint8Array(3 * MiB));
  const b = await target.open("t/b", 5);
  await a.abort(); // the core: a's digest did not match
  await assert.rejects(b.write(new Uint8Array(5)));
  await target.abort(new Error("integrity"));
  assert.equal(out.aborted, 1);
  assert.equal(out.closed, 0);
  assert.ok(out.written < target.length);
});

test("a transfer cut in the middle of a file aborts the zip without waiting", async () => {
  const entries = [{ path: "t/a", size: 5 * MiB }];
  const out = memoryOut();
  const target = zipTarget(entries, out.open);
  const a = await target.open("t/a", 5 * MiB);
  await a.write(new Uint8Array(2 * MiB));
  await a.abort();
  await target.abort(new Error("connection lost"));
  assert.equal(out.aborted, 1);
  assert.equal(out.closed, 0);
});

test("an output that fails (the download cancelled) fails the waiting write, no hang", async () => {
  const entries = [{ path: "t/a", size: 8 * MiB }];
  let writes = 0;
  const cancelled = new Error("cancelled in the browser");
  const target = zipTarget(entries, async () => ({
    async write() {
      writes += 1;
      if (writes > 2) throw cancelled;
    },
    async close() {},
    async abort() {},
  }));
  const a = await target.open("t/a", 8 * MiB);
  await assert.rejects(async () => {
    for (let i = 0; i < 8; i++) await a.write(new Uint8Array(MiB));
  }, (error) => error === cancelled);
});

test("a file out of manifest order, or sizes that disagree, are refused", async () => {
  const entries = [{ path: "t/a", size: 1 }, { path: "t/b", size: 1 }];
  const target = zipTarget(entries, memoryOut().open);
  await assert.rejects(target.open("t/b", 1), /not the next file/);
  await assert.rejects(target.open("t/a", 2), /not the next file/);
  const a = await target.open("t/a", 1);
  await assert.rejects(a.write(new Uint8Array(2)), /More bytes/);
});

test("above 4 GiB: Zip64 where needed, predicted length exact, zipfile reads it (sparse file)", async () => {
  // 2^32 - 1 bytes of zeros (the first size that needs Zip64 in client-zip), then a small
  // file whose offset needs it, then an empty folder. Written sparse: 1 MiB data chunks are
  // zeros and skipped, the rest (headers, the small file) written where it belongs.
  const huge = 2 ** 32 - 1;
  const entries = [
    { path: "big", kind: "dir" },
    { path: "big/huge.bin", size: huge },
    { path: "big/after.txt", size: 5, mtime: LOCAL_2021 },
    { path: "big/empty", kind: "dir" },
  ];
  const dir = tempDir();
  const path = join(dir, "big.zip");
  const fd = openSync(path, "w");
  let at = 0;
  let length = -1;
  const target = zipTarget(entries, async (_name, n) => {
    length = n;
    return {
      async write(bytes) {
        if (bytes.length !== MiB || bytes[0] !== 0 || bytes[MiB - 1] !== 0) writeSync(fd, bytes, 0, bytes.length, at);
        at += bytes.length;
      },
      async close() { ftruncateSync(fd, at); },
      async abort() {},
    };
  });
  try {
    assert.equal(length, -1);
    assert.ok(target.length > 2 ** 32, "the predicted length is known before any byte");
    const zeros = new Uint8Array(4 * MiB);
    const writer = await target.open("big/huge.bin", huge);
    for (let left = huge; left > 0; left -= Math.min(left, zeros.length)) {
      await writer.write(zeros.subarray(0, Math.min(left, zeros.length)));
    }
    await writer.close();
    const after = await target.open("big/after.txt", 5);
    await after.write(new TextEncoder().encode("after"));
    await after.close();
    await target.done();
    closeSync(fd);
    assert.equal(at, length);
    assert.equal(at, target.length);
    const { entries: read } = readZip(path, ["big/huge.bin"]);
    assert.deepEqual(read.map((e) => [e.name, e.size]),
      [["big/", 0], ["big/huge.bin", huge], ["big/after.txt", 5], ["big/empty/", 0]]);
    assert.equal(read[1].head, "00".repeat(16), "the huge file's local header is where the directory says");
    assert.equal(read[2].sha256, sha256(new TextEncoder().encode("after")), "the offset past 4 GiB is right (Zip64)");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
