// The receiver's data stream without I/O (src/protocol/stream.js): §6.6's byte positions,
// §6.7's checksum rules, §6.8's eof, §6.6.2's window and acks.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ReceiverStream } from "../src/protocol/stream.js";

const protocolError = (error) => error.kind === "protocol" && error.wire === "protocol";
const files = (pieces) => pieces.map((p) => [p.file, p.start, p.end, p.opens, p.completes]);
const checksums = (first, count, algorithm = "sha256") => ({ first, digests: Array(count).fill("0".repeat(64)), algorithm });

test("§12.3: one message ends a file, carries an empty one and starts the next", () => {
  const stream = new ReceiverStream([5, 0, 7], [0, 0, 0]);
  assert.deepEqual(stream.takeEmpty(), []);
  assert.deepEqual(files(stream.take(7)), [[0, 0, 5, true, true], [1, 5, 5, true, true], [2, 5, 7, true, false]]);
  assert.throws(() => stream.checksums(checksums(0, 3), "sha256"), protocolError, "file 2 is not complete");
  assert.deepEqual(stream.checksums(checksums(0, 2), "sha256"), [0, 1]);
  assert.throws(() => stream.eof(), protocolError);
  assert.deepEqual(files(stream.take(5)), [[2, 0, 5, false, true]]);
  assert.throws(() => stream.checksums(checksums(1, 1), "sha256"), protocolError, "a repeat");
  assert.throws(() => stream.checksums(checksums(2, 1, "blake3"), "sha256"), protocolError, "the other algorithm");
  assert.deepEqual(stream.checksums(checksums(2, 1), "sha256"), [2]);
  stream.eof();
});

test("empty files at the start are complete before any data; at the end, with the last byte", () => {
  const stream = new ReceiverStream([0, 0, 3, 0], [0, 0, 0, 0]);
  assert.deepEqual(files(stream.takeEmpty()), [[0, 0, 0, true, true], [1, 0, 0, true, true]]);
  assert.deepEqual(stream.checksums(checksums(0, 2), "sha256"), [0, 1]);
  assert.deepEqual(files(stream.take(3)), [[2, 0, 3, true, true], [3, 3, 3, true, true]]);
  stream.checksums(checksums(2, 2), "sha256");
  stream.eof();
});

test("an empty transfer: eof at once", () => {
  const stream = new ReceiverStream([], []);
  assert.deepEqual(stream.takeEmpty(), []);
  stream.eof();
});

test("resume offsets: a file held whole gets an empty piece, a partial one only its rest", () => {
  const stream = new ReceiverStream([4, 10, 2], [4, 6, 0]);
  assert.equal(stream.total, 6);
  assert.deepEqual(files(stream.takeEmpty()), [[0, 0, 0, true, true]]);
  assert.deepEqual(files(stream.take(6)), [[1, 0, 4, true, true], [2, 4, 6, true, true]]);
  stream.checksums(checksums(0, 3), "sha256");
  stream.eof();
});

test("data past the announced total is a violation", () => {
  const stream = new ReceiverStream([3], [0]);
  stream.take(2);
  assert.throws(() => stream.take(2), protocolError);
});

test("the window: an ack per quarter window; data sent with the window full is a violation", () => {
  const w = 262144;
  const stream = new ReceiverStream([10 * w], [0], w);
  const acks = [];
  for (let i = 0; i < 16; i++) {
    stream.take(w / 8, stream.acked);
    const ack = stream.ackDue();
    if (ack !== null) acks.push(ack);
  }
  assert.deepEqual(acks, [w / 4, w / 2, (3 * w) / 4, w, (5 * w) / 4, (3 * w) / 2, (7 * w) / 4, 2 * w]);
  // A message that arrived when our last ack was 0, with 2W received before it.
  assert.throws(() => stream.take(1, 0), protocolError);
  // Without a window nothing is acknowledged.
  const plain = new ReceiverStream([w], [0]);
  plain.take(w);
  assert.equal(plain.ackDue(), null);
});
