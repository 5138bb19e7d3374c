// Received pieces gathered into bounded buffers before each write.
import assert from "node:assert/strict";
import { test } from "node:test";

import { coalescing } from "../src/storage/coalesce.js";

test("pieces come out whole, in order, in buffers of at most the size", async () => {
  const input = new Uint8Array(10_000).map((_, i) => i % 251);
  const flushed = [];
  const writer = coalescing(async (bytes) => { flushed.push(bytes.slice()); }, { size: 4096 });
  for (let at = 0; at < input.length;) {
    const n = [1, 300, 4096, 5000, 17][at % 5];
    await writer.write(input.subarray(at, at + n));
    at += n;
  }
  await writer.end();
  assert.ok(flushed.every((b) => b.length <= 4096));
  assert.deepEqual(flushed.slice(0, -1).map((b) => b.length), flushed.slice(0, -1).map(() => 4096));
  const joined = new Uint8Array(flushed.reduce((n, b) => n + b.length, 0));
  let at = 0;
  for (const b of flushed) { joined.set(b, at); at += b.length; }
  assert.deepEqual(joined, input);
});

test("with fresh, every flush gets its own buffer (it may be transferred away)", async () => {
  const seen = [];
  const writer = coalescing(async (bytes) => { seen.push(bytes); }, { size: 8, fresh: true });
  await writer.write(new Uint8Array(20).fill(7));
  await writer.end();
  assert.deepEqual(seen.map((b) => b.length), [8, 8, 4]);
  assert.equal(new Set(seen.map((b) => b.buffer)).size, 3);
  await writer.end(); // nothing left: no empty flush
  assert.equal(seen.length, 3);
});

test("with fresh and allocate, each new buffer comes from allocate (a pool handed back)", async () => {
  const pool = [new Uint8Array(8), new Uint8Array(8)];
  const given = [...pool];
  const seen = [];
  const writer = coalescing(async (bytes) => { seen.push(bytes.slice()); },
    { size: 8, fresh: true, allocate: (n) => pool.pop() || new Uint8Array(n) });
  const input = new Uint8Array(20).map((_, i) => i);
  await writer.write(input);
  await writer.end();
  assert.equal(pool.length, 0);
  assert.deepEqual(seen.map((b) => b.length), [8, 8, 4]);
  assert.deepEqual(new Uint8Array(seen.flatMap((b) => [...b])), input);
  assert.ok(given.every((b) => b.some((x) => x !== 0)), "the pooled buffers were filled");
});

test("one buffer is gathered while the last is flushed, one flush at a time, all done by end()", async () => {
  const input = new Uint8Array(40).map((_, i) => i);
  const flushed = [];
  let running = 0;
  let most = 0;
  const writer = coalescing(async (bytes) => {
    running += 1;
    most = Math.max(most, running);
    await new Promise((resolve) => setTimeout(resolve, 5));
    flushed.push(bytes.slice());
    running -= 1;
  }, { size: 8 });
  for (let at = 0; at < input.length; at += 5) await writer.write(input.subarray(at, at + 5));
  assert.ok(flushed.length < 5, "write() did not wait for every flush");
  await writer.end();
  assert.equal(most, 1);
  assert.deepEqual(new Uint8Array(flushed.flatMap((b) => [...b])), input);
});

test("a failed flush fails the next write or end()", async () => {
  const writer = coalescing(async () => { throw new Error("disk full"); }, { size: 4 });
  await writer.write(new Uint8Array(4));
  await assert.rejects(async () => { await writer.write(new Uint8Array(4)); await writer.end(); }, /disk full/);
});
