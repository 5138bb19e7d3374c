// Control messages parsed as strictly as p2p_copy/protocol/messages.py (§3.2, §6), and the
// sender's manifest parts and `held` check (src/protocol/manifest.js).
import { test } from "node:test";
import assert from "node:assert/strict";
import { parseMessage, MAX_SEND } from "../src/protocol/messages.js";
import { manifestParts, checkPrefixes } from "../src/protocol/manifest.js";

const kind = (k) => (error) => error.kind === k;

test("well-formed messages parse; unknown members are ignored", () => {
  assert.deepEqual(parseMessage('{"type":"eof","x":1}'), { type: "eof" });
  const manifest = parseMessage('{"type":"manifest","version":1,"digests":["blake3","sha256"],"ack":true,"entries":[{"path":"a","size":1},{"path":"d","kind":"dir"}],"more":true}');
  assert.equal(manifest.ack, true);
  assert.equal(manifest.more, true);
  assert.deepEqual(manifest.entries, [{ kind: "file", path: "a", size: 1, mode: 0o644, mtime: null, meta: null },
    { kind: "dir", path: "d", mode: 0o755, mtime: null }]);
  assert.deepEqual(parseMessage('{"type":"accept","digest":"blake3","window":8388608}'),
    { type: "accept", compression: null, digest: "blake3", held: null, resume: null, window: 8388608 });
  assert.deepEqual(parseMessage('{"type":"ack","bytes":5}'), { type: "ack", bytes: 5 });
  assert.deepEqual(parseMessage('{"type":"prefix_digests","files":[[0,1048576,"' + "a".repeat(64) + '"]]}').files,
    [[0, 1048576, "a".repeat(64)]]);
});

test("malformed messages are protocol violations (§9.2, §9.3)", () => {
  for (const text of [
    "not json", "[]", "{}", '{"type":5}', '{"type":"nonsense"}', '{"type":"file"}',
    '{"type":"manifest","version":1,"entries":{}}',
    '{"type":"manifest","version":1,"entries":[{"path":"a","size":-1}]}',
    '{"type":"manifest","version":1,"entries":[{"path":"a","size":9007199254740994}]}',
    '{"type":"manifest","version":1,"entries":[{"path":"a","size":true}]}',
    '{"type":"manifest","version":1,"entries":[{"path":"a","size":1,"mode":4096}]}',
    '{"type":"manifest","version":1,"entries":[{"path":"a","size":1,"kind":"link"}]}',
    '{"type":"manifest","version":1,"entries":[{"path":1,"size":1}]}',
    '{"type":"manifest","version":1,"entries":[],"more":"yes"}',
    '{"type":"manifest","version":1,"entries":[],"ack":"yes"}',
    '{"type":"manifest","version":1,"entries":[],"digests":"sha256"}',
    '{"type":"manifest","version":1,"entries":[{"path":"s","kind":"stream"},{"path":"a","size":1}]}',
    '{"type":"checksums","first":0,"sha256":[]}',
    '{"type":"checksums","first":0,"sha256":["ABC"]}',
    '{"type":"checksums","first":0}',
    '{"type":"accept","held":[[0]]}',
    '{"type":"accept","held":[[0,1]],"resume":[[0,1,"' + "a".repeat(64) + '"]]}',
    '{"type":"accept","window":1000}',
    '{"type":"accept","digest":7}',
    '{"type":"ack","bytes":-1}',
    '{"type":"error","code":"x"}',
    '{"type":"pake","suite":"s","msg":"!!"}',
    '{"type":"confirm","mac":"ABCD"}',
  ]) {
    assert.throws(() => parseMessage(text), kind("protocol"), text);
  }
  assert.throws(() => parseMessage('{"type":"manifest","entries":[]}'), kind("incompatible"));
  assert.throws(() => parseMessage('{"type":"manifest","version":2,"entries":[]}'), kind("incompatible"));
  assert.throws(() => parseMessage('{"type":"manifest","version":true,"entries":[]}'), kind("incompatible"));
});

test("manifest parts: at most the part size each, digests and ack in the first, more on all but the last", () => {
  const entries = Array.from({ length: 3000 }, (_, i) => ({ path: `folder/file-${i}.txt`, kind: "file", size: i }));
  entries.unshift({ path: "folder", kind: "dir" });
  const parts = manifestParts(entries, 16 * 1024);
  assert.ok(parts.length > 5);
  assert.deepEqual(parts[0].digests, ["blake3", "sha256"]);
  assert.equal(parts[0].ack, true);
  parts.forEach((part, i) => {
    assert.equal(part.version, 1);
    assert.equal(part.more, i < parts.length - 1 ? true : undefined);
    if (i) assert.equal(part.digests, undefined);
    assert.ok(new TextEncoder().encode(JSON.stringify(part)).length < 16 * 1024 + 200);
    assert.ok(JSON.stringify(part).length < MAX_SEND);
  });
  assert.deepEqual(parts.flatMap((p) => p.entries).map((e) => e.path), entries.map((e) => e.path));
  assert.deepEqual(parts[0].entries[0], { path: "folder", kind: "dir", mode: 0o755 });
  assert.deepEqual(parts[0].entries[1], { path: "folder/file-0.txt", size: 0, mode: 0o644 });
  assert.deepEqual(manifestParts([]), [{ type: "manifest", version: 1, digests: ["blake3", "sha256"], ack: true, entries: [] }]);
});

test("held prefixes: whole MiB blocks or the full size, of our files, once each", () => {
  const files = [{ size: 3 * 2 ** 20 + 5 }, { size: 10 }];
  assert.deepEqual(checkPrefixes([[0, 2 ** 20], [1, 10]], files), [[0, 2 ** 20], [1, 10]]);
  assert.deepEqual(checkPrefixes([[0, 3 * 2 ** 20 + 5]], files), [[0, 3 * 2 ** 20 + 5]]);
  for (const held of [[[2, 1]], [[0, 1000]], [[1, 11]], [[0, 2 ** 20], [0, 2 ** 21]]]) {
    assert.throws(() => checkPrefixes(held, files), kind("protocol"), JSON.stringify(held));
  }
});
