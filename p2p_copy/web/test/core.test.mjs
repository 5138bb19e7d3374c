// send() and receive() against each other through an in-memory relay: the whole path,
// resume, the flow-control window, and the failures that each have their own kind.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { send, receive, P2PError } from "../src/index.js";
import { Channel, Link } from "../src/peer.js";
import { WINDOW } from "../src/receive.js";
import { MemoryRelay, memorySink } from "./memory-relay.mjs";

const RELAY = "ws://memory.invalid/";

function tree(big = 3 * 1024 * 1024 + 17) {
  const data = { "trip/a.txt": Buffer.from("hello\n"), "trip/empty.txt": Buffer.alloc(0), "trip/naïve ü 日本.txt": Buffer.from("ünï\n"),
    "trip/big.bin": randomBytes(big) };
  const entries = [{ path: "trip", kind: "dir" }, { path: "trip/empty", kind: "dir" }];
  for (const [path, bytes] of Object.entries(data)) entries.push({ path, kind: "file", size: bytes.length, mtime: 1700000000.5, blob: new Blob([bytes]) });
  return { data, entries };
}

async function pair({ relay = new MemoryRelay(), entries, sink, code = "5-alpha-beta-gamma", receiverCode = code,
  senderEvents = [] }) {
  const events = [];
  const received = receive({ relay: RELAY, code: receiverCode, sink, WebSocket: relay.WebSocket, onEvent: (e) => events.push(e) });
  await new Promise((resolve) => setTimeout(resolve, 5));
  const sent = send({ relay: RELAY, code, entries, fresh: false, WebSocket: relay.WebSocket, onEvent: (e) => senderEvents.push(e) });
  const [s, r] = await Promise.allSettled([sent, received]);
  return { s, r, events };
}

test("a folder with an empty file, an empty folder and a Unicode name arrives byte for byte", async () => {
  const { data, entries } = tree();
  const sink = memorySink();
  const senderEvents = [];
  const { s, r, events } = await pair({ entries, sink, senderEvents });
  assert.equal(s.status, "fulfilled", s.reason?.message);
  assert.equal(r.status, "fulfilled", r.reason?.message);
  for (const [path, bytes] of Object.entries(data)) assert.ok(sink.files.get(path)?.equals(bytes), path);
  assert.deepEqual(sink.dirs.sort(), ["trip", "trip/empty"]);
  const bytes = Object.values(data).reduce((sum, b) => sum + b.length, 0);
  assert.deepEqual(sink.summary, { files: 4, dirs: 2, bytes, names: ["trip/"], hidden: [], executables: [] });
  assert.equal(r.value.digest, "blake3");
  assert.deepEqual(events.filter((e) => e.type === "file").map((e) => e.verified), [true, true, true, true]);
  assert.deepEqual(events.slice(0, 4).map((e) => e.type), ["connecting", "waiting", "paired", "verifying"]);
  assert.deepEqual([...new Set(senderEvents.map((e) => e.type))], ["connecting", "paired", "verifying", "offer", "progress", "file", "done"]);
  assert.deepEqual(senderEvents.find((e) => e.type === "offer").summary, sink.summary);
});

test("the receiver's window bounds what is in flight towards a slow page", async () => {
  const relay = new MemoryRelay();
  const total = 48 * 1024 * 1024;
  const bytes = randomBytes(total);
  let written = 0;
  let most = 0;
  const sink = memorySink({ slow: 2, onWrite: (n) => {
    written += n;
    most = Math.max(most, relay.deliveredToReceiver - written);
  } });
  const { s, r } = await pair({ relay, entries: [{ path: "big", kind: "file", size: total, blob: new Blob([bytes]) }], sink });
  assert.equal(r.status, "fulfilled", r.reason?.message);
  assert.equal(s.status, "fulfilled", s.reason?.message);
  assert.ok(sink.files.get("big").equals(bytes));
  // At most the window, a data message and sealing overhead ahead of storage.
  assert.ok(most <= WINDOW + 2 * 1024 * 1024, `${most} bytes were ahead of storage`);
});

test("resume: a held prefix whose digest matches is not sent again; one that differs is", async () => {
  const size = 5 * 1024 * 1024 + 3;
  const bytes = randomBytes(size);
  for (const matching of [true, false]) {
    const kept = Buffer.from(bytes.subarray(0, 2 * 1024 * 1024));
    if (!matching) kept[5] ^= 1;
    const relay = new MemoryRelay();
    let delivered = 0;
    const sink = memorySink({
      held: (files) => { assert.equal(files[0].path, "f.bin"); return [[0, kept.length]]; },
      prefix: (_, offset) => kept.subarray(0, offset),
      onWrite: (n) => { delivered += n; },
    });
    const { s, r } = await pair({ relay, entries: [{ path: "f.bin", kind: "file", size, blob: new Blob([bytes]) }], sink });
    assert.equal(r.status, "fulfilled", r.reason?.message);
    assert.equal(s.status, "fulfilled", s.reason?.message);
    assert.ok(sink.files.get("f.bin").equals(bytes), `matching=${matching}`);
    assert.equal(delivered, matching ? size - kept.length : size);
  }
});

test("a wrong code fails both sides with wrong_code, before any name is sent", async () => {
  const { entries } = tree(10);
  const sink = memorySink();
  const { s, r } = await pair({ entries, sink, code: "5-alpha-beta-gamma", receiverCode: "5-alpha-beta-delta" });
  assert.equal(s.reason?.kind, "wrong_code", s.reason?.message);
  assert.equal(r.reason?.kind, "wrong_code", r.reason?.message);
  assert.equal(sink.summary, null);
});

test("a relay that alters one sealed data message: tampered on both sides, nothing kept", async () => {
  const { entries } = tree();
  const relay = new MemoryRelay({ tamper: (direction, index, bytes) => {
    if (direction !== "S>R" || index !== 3) return null;
    const copy = Uint8Array.from(bytes); copy[10] ^= 0x40; return copy;
  } });
  const sink = memorySink();
  const { s, r } = await pair({ relay, entries, sink });
  assert.equal(r.reason?.kind, "tampered", r.reason?.stack);
  assert.equal(s.reason?.kind, "tampered", s.reason?.message);
  assert.ok(!sink.files.has("trip/big.bin"));
  assert.equal(sink.aborted?.kind, "tampered");
});

test("a dropped connection: connection_lost, unverified files discarded", async () => {
  const { entries } = tree();
  const relay = new MemoryRelay({ drop: (direction, index) => direction === "S>R" && index === 4 });
  const sink = memorySink();
  const { s, r } = await pair({ relay, entries, sink });
  assert.equal(r.reason?.kind, "connection_lost", r.reason?.message);
  assert.match(r.reason.message, /sender disconnected/);
  assert.ok(s.status === "rejected");
  assert.ok(!sink.files.has("trip/big.bin"));
});

test("a declined offer: the receiver reports declined, the sender the peer's cancelled", async () => {
  const { entries } = tree(10);
  const { s, r } = await pair({ entries, sink: memorySink({ accept: false }) });
  assert.equal(r.reason?.kind, "declined");
  assert.equal(s.reason?.kind, "peer");
  assert.equal(s.reason?.code, "cancelled");
});

/** A hand-made sender: handshake, then whatever manifest the test gives. */
async function rawSender(relay, code, manifest) {
  const link = await Link.open({ relay: RELAY, code, role: "sender", WebSocket: relay.WebSocket });
  for (;;) { const item = await link.next(); if (JSON.parse(item.text).type === "ready") break; }
  const channel = new Channel(link);
  await channel.handshake("sender", code);
  await channel.send(manifest);
  const answer = await channel.receive(5000);
  await link.close();
  return answer;
}

test("hostile manifests are refused with unsafe_path / policy before the sink sees them", async () => {
  const cases = [
    [[{ path: "../evil", size: 1 }], "unsafe_path"],
    [[{ path: "/etc/passwd", size: 1 }], "unsafe_path"],
    [[{ path: "a/.x.p2p-copy-part", size: 1 }], "unsafe_path"],
    [[{ path: "Straße", size: 1 }, { path: "STRASSE", size: 1 }], "unsafe_path"],
    [[{ path: "a", size: 1 }, { path: "a/b", size: 1 }], "unsafe_path"],
    [[{ path: "x\u001b[2J", size: 1 }], "unsafe_path"],
    [[{ path: Array(65).fill("d").join("/"), size: 1 }], "policy"],
  ];
  for (const [entries, code] of cases) {
    const relay = new MemoryRelay();
    const sink = memorySink();
    const received = receive({ relay: RELAY, code: "6-a-b-c", sink, WebSocket: relay.WebSocket });
    received.catch(() => {});
    await new Promise((resolve) => setTimeout(resolve, 5));
    const answer = await rawSender(relay, "6-a-b-c", { type: "manifest", version: 1, entries });
    await assert.rejects(received, (error) => error.kind === code, JSON.stringify(entries));
    assert.equal(answer.type, "error");
    assert.equal(answer.code, code);
    assert.equal(sink.summary, null);
  }
});

test("a manifest without version is incompatible; a bad entry is protocol", async () => {
  for (const [manifest, kind, wire] of [
    [{ type: "manifest", entries: [] }, "incompatible", "incompatible"],
    [{ type: "manifest", version: 1, entries: [{ path: "a", size: -1 }] }, "protocol", "protocol"],
    [{ type: "manifest", version: 1, entries: [{ path: "a", size: 1, kind: "link" }] }, "protocol", "protocol"],
  ]) {
    const relay = new MemoryRelay();
    const received = receive({ relay: RELAY, code: "6-a-b-c", sink: memorySink(), WebSocket: relay.WebSocket });
    received.catch(() => {});
    await new Promise((resolve) => setTimeout(resolve, 5));
    const answer = await rawSender(relay, "6-a-b-c", manifest);
    await assert.rejects(received, (error) => error.kind === kind);
    assert.equal(answer.code, wire);
  }
});

test("a sender's own entries that break §7 are refused before connecting", async () => {
  await assert.rejects(send({ relay: RELAY, code: "1-a-b", entries: [{ path: "a/../b", kind: "file", size: 0, blob: new Blob([]) }],
    WebSocket: new MemoryRelay().WebSocket }), (error) => error instanceof P2PError && error.kind === "usage");
});

test("a generated code is reported and sent with fresh; a taken room draws another", async () => {
  const relay = new MemoryRelay();
  const codes = [];
  const sink = memorySink();
  const sent = send({ relay: RELAY, entries: [], WebSocket: relay.WebSocket, onEvent: (e) => { if (e.type === "code") codes.push(e.code); } });
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(codes.length, 1);
  const received = receive({ relay: RELAY, code: codes[0], sink, WebSocket: relay.WebSocket });
  const [s, r] = await Promise.all([sent, received]);
  assert.equal(s.code, codes[0]);
  assert.equal(r.files, 0);
});

test("cancelling through the signal: cancelled here, the peer's cancelled there", async () => {
  const { entries } = tree(40 * 1024 * 1024);
  const relay = new MemoryRelay();
  const controller = new AbortController();
  const sink = memorySink({ onWrite: () => controller.abort() });
  const received = receive({ relay: RELAY, code: "3-a-b-c", sink, WebSocket: relay.WebSocket, signal: controller.signal });
  await new Promise((resolve) => setTimeout(resolve, 5));
  const sent = send({ relay: RELAY, code: "3-a-b-c", entries, fresh: false, WebSocket: relay.WebSocket });
  const [s, r] = await Promise.allSettled([sent, received]);
  assert.equal(r.reason?.kind, "cancelled", r.reason?.stack ?? String(r.value));
  assert.equal(s.reason?.kind, "peer", s.reason?.stack);
  assert.equal(s.reason?.code, "cancelled");
});

test("a storage failure: kind storage with the sink's error as cause; the sender hears disk_full", async () => {
  const { entries } = tree(10);
  class StorageError extends Error { constructor(kind, message) { super(message); this.name = "StorageError"; this.kind = kind; } }
  const sink = memorySink();
  sink.open = async () => { throw new StorageError("disk_full", "Not enough space to save the file."); };
  const { s, r } = await pair({ entries, sink });
  assert.equal(r.reason?.kind, "storage", r.reason?.stack);
  assert.equal(r.reason.cause?.name, "StorageError");
  assert.equal(r.reason.message, "Not enough space to save the file.");
  assert.equal(s.reason?.kind, "peer");
  assert.equal(s.reason?.code, "disk_full");
});

test("a source that cannot be read: the sender says which, the receiver hears the sender's usage error", async () => {
  const broken = { size: 5, slice: () => ({ arrayBuffer: async () => { throw new Error("NotReadableError"); } }) };
  const { s, r } = await pair({ entries: [{ path: "gone.txt", kind: "file", size: 5, blob: broken }], sink: memorySink() });
  assert.equal(s.reason?.kind, "storage", s.reason?.stack);
  assert.match(s.reason.message, /gone\.txt/);
  assert.equal(r.reason?.kind, "peer");
  assert.equal(r.reason?.code, "usage");
});

/** A hand-made sender that, after the handshake, sends `script` (control objects or data bytes). */
async function scriptedSender(relay, code, script) {
  const link = await Link.open({ relay: RELAY, code, role: "sender", WebSocket: relay.WebSocket });
  for (;;) { const item = await link.next(); if (JSON.parse(item.text).type === "ready") break; }
  const channel = new Channel(link);
  await channel.handshake("sender", code);
  const answers = [];
  for (const step of script) {
    if (typeof step === "function") step();
    else if (step === "read") {
      let answer;
      do answer = await channel.receive(5000); while (answer.type === "ack");
      answers.push(answer);
    }
    else if (step instanceof Uint8Array) await channel.sendData(step);
    else await channel.send(step);
  }
  await link.close(true);
  return answers;
}

test("§12.3: a data message spanning a file, an empty file and the next file is taken", async () => {
  const relay = new MemoryRelay();
  const sink = memorySink();
  const received = receive({ relay: RELAY, code: "4-a-b-c", sink, WebSocket: relay.WebSocket });
  await new Promise((resolve) => setTimeout(resolve, 5));
  const answers = await scriptedSender(relay, "4-a-b-c", [
    { type: "manifest", version: 1, entries: [{ path: "d/a", size: 5 }, { path: "e", size: 0 }, { path: "d/b", size: 7 }] },
    "read",
    Uint8Array.from([0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f, 0x77, 0x6f]),
    { type: "checksums", first: 0, sha256: ["2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"] },
    Uint8Array.from([0x00, 0x72, 0x6c, 0x64, 0x21, 0x21]),
    { type: "checksums", first: 2, sha256: ["42a19f77459c45b0218f7d21a485a8a41e3bcb4e80e6e570033c49e2fb16446a"] },
    { type: "eof" },
    "read",
  ]);
  assert.deepEqual(answers.map((a) => a.type), ["accept", "done"]);
  assert.equal(answers[0].digest, null, "no digest without digests in the manifest");
  const result = await received;
  assert.equal(result.digest, "sha256");
  assert.equal(sink.files.get("d/a").toString(), "hello");
  assert.equal(sink.files.get("e").length, 0);
  assert.equal(sink.files.get("d/b").toString(), "world!!");
});

test("stream rules: a checksum before its file is complete, eof too early, a wrong digest, data past the total", async () => {
  const manifest = { type: "manifest", version: 1, entries: [{ path: "a", size: 5 }, { path: "b", size: 2 }] };
  const hello = Uint8Array.from([0x00, 0x68, 0x65, 0x6c, 0x6c, 0x6f]);
  const digestA = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
  for (const [script, kind, wire] of [
    [[{ type: "checksums", first: 0, sha256: [digestA] }], "protocol", "protocol"],
    [[hello, { type: "eof" }], "protocol", "protocol"],
    [[hello, { type: "checksums", first: 0, sha256: ["0".repeat(64)] }], "integrity", "integrity"],
    [[hello, { type: "checksums", first: 0, blake3: [digestA] }], "protocol", "protocol"],
    [[hello, { type: "checksums", first: 1, sha256: [digestA] }], "protocol", "protocol"],
    [[Uint8Array.from([0x00, 1, 2, 3, 4, 5, 6, 7, 8])], "protocol", "protocol"],
    [[Uint8Array.from([0x01, 1, 2])], "protocol", "protocol"],
    [[{ type: "resume", files: [] }], "protocol", "protocol"],
  ]) {
    const relay = new MemoryRelay();
    const sink = memorySink();
    const received = receive({ relay: RELAY, code: "4-a-b-c", sink, WebSocket: relay.WebSocket });
    received.catch(() => {});
    await new Promise((resolve) => setTimeout(resolve, 5));
    const answers = await scriptedSender(relay, "4-a-b-c", [manifest, "read", ...script, "read"]);
    await assert.rejects(received, (error) => error.kind === kind, JSON.stringify(script));
    assert.equal(answers[1].type, "error");
    assert.equal(answers[1].code, wire);
    assert.equal(sink.files.size, 0, "nothing unverified is kept");
  }
});

test("a sender that ignores the window is stopped with protocol", async () => {
  const relay = new MemoryRelay();
  const size = 12 * 1024 * 1024;
  // Storage takes nothing until the sender has sent it all: its acks cannot have come.
  let release;
  const gate = new Promise((resolve) => { release = resolve; });
  const sink = memorySink();
  const open = sink.open;
  sink.open = async (...args) => {
    const writer = await open(...args);
    return { ...writer, write: async (bytes) => { await gate; return writer.write(bytes); } };
  };
  const received = receive({ relay: RELAY, code: "4-a-b-c", sink, WebSocket: relay.WebSocket });
  received.catch(() => {});
  await new Promise((resolve) => setTimeout(resolve, 5));
  const chunk = new Uint8Array(1024 * 1024 + 1);
  const script = [{ type: "manifest", version: 1, ack: true, entries: [{ path: "a", size }] }, "read"];
  for (let i = 0; i < 12; i++) script.push(chunk);
  script.push(() => setTimeout(release, 50), "read");
  const answers = await scriptedSender(relay, "4-a-b-c", script);
  assert.equal(answers[0].window, WINDOW);
  await assert.rejects(received, (error) => error.kind === "protocol" && /window/.test(error.message));
});

test("a sender that gives up while the offer is open ends the question: the receiver hears it at once", { timeout: 10_000 }, async () => {
  const { entries } = tree(10);
  const relay = new MemoryRelay();
  const controller = new AbortController();
  const sink = memorySink();
  sink.offer = () => new Promise(() => {});  // the person never answers
  const received = receive({ relay: RELAY, code: "2-a-b-c", sink, WebSocket: relay.WebSocket });
  await new Promise((resolve) => setTimeout(resolve, 5));
  const sent = send({ relay: RELAY, code: "2-a-b-c", entries, fresh: false, WebSocket: relay.WebSocket, signal: controller.signal,
    onEvent: (e) => { if (e.type === "offer") setTimeout(() => controller.abort(), 20); } });
  const [s, r] = await Promise.allSettled([sent, received]);
  assert.equal(s.reason?.kind, "cancelled", s.reason?.stack);
  assert.equal(r.reason?.kind, "peer", r.reason?.stack);
  assert.equal(r.reason?.code, "cancelled");
});
