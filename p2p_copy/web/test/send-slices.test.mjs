// The sender's file reads (src/send.js slices()): by slices into reused buffers, and on
// from a new stream when a read never settles (Chromium 156 does that now and then).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Buffers, CHUNK, slices } from "../src/send.js";

/** A Blob-like file whose streams give `step` bytes a pull; `stallAt`: the first stream
 * stops for good once it has given that many bytes. */
function fakeFile(bytes, { step = 100_000, stallAt = -1 } = {}) {
  let streams = 0;
  const opened = [];
  const file = {
    size: bytes.length,
    slice(from, end) {
      return {
        stream() {
          const first = streams++ === 0;
          opened.push(from);
          let at = from;
          return new ReadableStream({
            type: "bytes",
            pull(controller) {
              if (first && stallAt >= 0 && at - from >= stallAt) return new Promise(() => {});
              if (at >= end) { controller.close(); controller.byobRequest?.respond(0); return; }
              const request = controller.byobRequest;
              const n = Math.min(step, end - at, request.view.byteLength);
              request.view.set(bytes.subarray(at, at + n));
              request.respond(n);
              at += n;
            },
          });
        },
      };
    },
  };
  return { file, opened };
}

async function readAll(file, start, options) {
  const buffers = new Buffers(4);
  const parts = [];
  for await (const message of slices(file, start, file.size, buffers, "f.bin", options)) {
    parts.push(message.slice(1));
    buffers.give(message.buffer);
  }
  return Buffer.concat(parts);
}

test("a file is read whole, in CHUNK slices, from an offset", async () => {
  const bytes = new Uint8Array(2 * CHUNK + 12345).map((_, i) => (i * 7) % 251);
  const { file, opened } = fakeFile(bytes);
  assert.deepEqual(await readAll(file, 0), Buffer.from(bytes));
  assert.deepEqual(await readAll(file, 1000), Buffer.from(bytes.subarray(1000)));
  assert.deepEqual(opened, [0, 1000]);
});

test("a read that never settles is taken up on a new stream where it stopped", async (t) => {
  const warned = [];
  t.mock.method(console, "warn", (line) => warned.push(line));
  const bytes = new Uint8Array(3 * CHUNK).map((_, i) => (i * 13) % 253);
  const stallAt = CHUNK + 300_000;  // in the middle of the second slice (pulls of 100,000)
  const { file, opened } = fakeFile(bytes, { stallAt });
  assert.deepEqual(await readAll(file, 0, { stall: 50 }), Buffer.from(bytes));
  assert.deepEqual(opened, [0, CHUNK]);  // the second slice again, from its start
  assert.equal(warned.length, 1);
  assert.match(warned[0], new RegExp(`gave nothing for 0.05 s at byte ${stallAt}`));
});
