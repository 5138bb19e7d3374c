// The page's pure pieces: what the person reads, and the download headers.
import assert from "node:assert/strict";
import { test } from "node:test";

import { codeFromHash, describeCounts, parseHash, formatBytes, progressLine, receiveLines, receiveLink, shownRelay, Speedometer } from "../src/page/format.js";
import { describeError, insecureContextMessage } from "../src/page/messages.js";
import { contentDisposition } from "../src/storage/disposition.js";
import { downloadName } from "../src/storage/download.js";
import { StorageError, storageError } from "../src/storage/errors.js";

test("sizes are shown in powers of 1024, as the CLI shows them", () => {
  assert.equal(formatBytes(0), "0 bytes");
  assert.equal(formatBytes(1), "1 byte");
  assert.equal(formatBytes(1536), "1.5 KiB");
  assert.equal(formatBytes(1024 ** 3), "1.0 GiB");
  assert.equal(formatBytes(300 * 1024 ** 2), "300 MiB");
  assert.equal(describeCounts(1, 0, 5), "1 file, 5 bytes");
  assert.equal(describeCounts(3, 2, 2048), "3 files and 2 folders, 2.0 KiB");
});

test("the lines for the other side name the relay first, as receive_lines prints them", () => {
  const lines = receiveLines("wss://relay.example.org/", "7-crossover-clockwork-puma");
  assert.equal(lines.cli, "p2p-copy receive wss://relay.example.org 7-crossover-clockwork-puma");
  assert.equal(lines.python, 'await p2p_copy.receive("wss://relay.example.org", "7-crossover-clockwork-puma")');
  assert.equal(shownRelay("wss://h:8765/prefix/"), "wss://h:8765/prefix/");
  assert.equal(receiveLines("ws://h/", "a b").cli, "p2p-copy receive ws://h 'a b'");
});

test("the link carries the code in the fragment only", () => {
  const loc = { origin: "https://relay.example.org", pathname: "/p2p/" };
  const link = receiveLink(loc, "7-crossover-clockwork-puma");
  assert.equal(link, "https://relay.example.org/p2p/#7-crossover-clockwork-puma");
  assert.equal(codeFromHash(new URL(link).hash), "7-crossover-clockwork-puma");
  assert.equal(codeFromHash("#receive"), "");
  assert.equal(codeFromHash(""), "");
  assert.equal(codeFromHash("#%E2%82%AC-x"), "€-x");
  // Through another relay (--web-connect): the relay rides along in the fragment.
  const other = receiveLink(loc, "7-a-b", "wss://other.example/x/");
  assert.equal(other, "https://relay.example.org/p2p/#code=7-a-b&relay=wss%3A%2F%2Fother.example%2Fx%2F");
  assert.deepEqual(parseHash(new URL(other).hash), { code: "7-a-b", relay: "wss://other.example/x/" });
  assert.deepEqual(parseHash("#7-a-b"), { code: "7-a-b", relay: "" });
});

test("progress shows bytes, rate and time left", () => {
  let now = 0;
  const speed = new Speedometer(5, () => now);
  speed.update(0, 100 * 2 ** 20);
  now = 1;
  const { rate, eta } = speed.update(10 * 2 ** 20, 100 * 2 ** 20);
  assert.equal(rate, 10 * 2 ** 20);
  assert.equal(eta, 9);
  assert.equal(progressLine(10 * 2 ** 20, 100 * 2 ** 20, rate, eta), "10.0 MiB of 100 MiB (10%) · 10.0 MiB/s · 9 s left");
});

test("Content-Disposition keeps a Unicode name exactly (RFC 5987) with an ASCII fallback", () => {
  const header = contentDisposition('été "x"; (1).txt');
  assert.equal(header, `attachment; filename="_t_ _x__ (1).txt"; filename*=UTF-8''%C3%A9t%C3%A9%20%22x%22%3B%20%281%29.txt`);
  const encoded = header.split("filename*=UTF-8''")[1];
  assert.equal(decodeURIComponent(encoded), 'été "x"; (1).txt');
  assert.equal(downloadName("a/b/c.txt"), "a_b_c.txt");
});

test("storage failures read as one line saying what to do", () => {
  const full = storageError(Object.assign(new Error("quota"), { name: "QuotaExceededError" }), "big.iso");
  assert.equal(full.kind, "disk_full");
  assert.match(full.message, /^Not enough space to save big\.iso/);
  // A core error that wraps a storage error shows the storage's words.
  const wrapped = Object.assign(new Error("internal"), { kind: "protocol", cause: new StorageError("exists", "a.txt already exists") });
  assert.equal(describeError(wrapped), "a.txt already exists");
  assert.equal(describeError({ kind: "wrong_code" }).startsWith("The code did not match"), true);
  assert.match(insecureContextMessage({ protocol: "http:", host: "192.168.1.5:8765", port: "8765" }), /http:\/\/192\.168\.1\.5:8765.*https:\/\/.*localhost:8765/);
});
