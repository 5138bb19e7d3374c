// The test vectors of docs/protocol.md (§3.1, §4.2, §6.0.4-6.0.6) and python-spake2's own,
// run against the JS core.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex, concatBytes, hexToBytes, utf8ToBytes } from "@noble/hashes/utils.js";
import * as spake2 from "../src/protocol/spake2.js";
import { keySchedule, Sealer, Opener } from "../src/protocol/secure.js";
import { normalizeCode, roomHash, roomUrl, generateCode, relayUrlFromLocation } from "../src/protocol/codes.js";
import { WORDS } from "../src/protocol/wordlist.js";
import { wordlistModule } from "../build.mjs";

const b64 = (bytes) => Buffer.from(bytes).toString("base64");
const bigEndian = (bytes) => BigInt("0x" + bytesToHex(bytes));

test("§6.0.4: the SPAKE2 vector with fixed scalars gives both messages and K", () => {
  const pw = utf8ToBytes("purple-sausages-42");
  const a = spake2.startWithScalar("A", pw, 0x092983bda3a34651acf940b9ba68dbcc90c26551783bcc35c7c8064641a73224n);
  const b = spake2.startWithScalar("B", pw, 0x0e4004fe6963de212c1e016c7ac2c982b7b6a14c025f7bfa736be4674b501eben);
  assert.equal(b64(a.message), "QcxVsDVE+v5iq8/VwK9NwM5qNDNGkwfE6irxlqs9hTRY");
  assert.equal(b64(b.message), "QsKxpAM+EKEPNPyMjqPh7UrpshACtdT08v2zlhEKUaJK");
  const k = "0a3967d03f3c6f67ace911cb92d55347933e6314b69a64956223d6bd83b6021b";
  assert.equal(bytesToHex(a.finish(b.message)), k);
  assert.equal(bytesToHex(b.finish(a.message)), k);
});

test("§6.0.4: M and N are python-spake2's arbitrary elements for seeds M and N", () => {
  assert.equal(bytesToHex(spake2.arbitraryElement(utf8ToBytes("M")).toBytes()), spake2.M_HEX);
  assert.equal(bytesToHex(spake2.arbitraryElement(utf8ToBytes("N")).toBytes()), spake2.N_HEX);
});

// python-spake2 0.9 src/spake2/test/test_compat.py and common.py (its deterministic PRG).
function prg(seed) {
  const blocks = [];
  let counter = 0;
  return (n) => {
    while (blocks.length < n) {
      blocks.push(...sha256(concatBytes(utf8ToBytes(`prng-${counter++}-`), seed)));
    }
    return Uint8Array.from(blocks.splice(0, n));
  };
}

test("python-spake2: the PRG of its tests", () => {
  assert.equal(bytesToHex(prg(utf8ToBytes("A"))(16)), "c1d59d78903e9d7874d9064e12d36c58");
  assert.equal(bytesToHex(prg(utf8ToBytes("B"))(16)), "2af6d4b843a9e6cd1d185eb5de870f77");
});

test("python-spake2 0.9: the asymmetric vector (SPAKE2_A / SPAKE2_B, password 'password', empty identities)", () => {
  const pw = utf8ToBytes("password");
  const ids = { idA: new Uint8Array(0), idB: new Uint8Array(0) };
  // The package draws 64 bytes and reads them big-endian, mod L; its test also states the scalars.
  const x = bigEndian(prg(utf8ToBytes("A"))(64)) % spake2.L;
  const y = bigEndian(prg(utf8ToBytes("B"))(64)) % spake2.L;
  assert.equal(x, 2611694063369306139794446498317402240796898290761098242657700742213257926693n);
  assert.equal(y, 7002393159576182977806091886122272758628412261510164356026361256515836884383n);
  assert.equal(spake2.passwordScalar(pw), 3515301705789368674385125653994241092664323519848410154015274772661223168839n);
  const a = spake2.startWithScalar("A", pw, x, ids);
  const b = spake2.startWithScalar("B", pw, y, ids);
  assert.equal(bytesToHex(a.message), "416fc960df73c9cf8ed7198b0c9534e2e96a5984bfc5edc023fd24dacf371f2af9");
  assert.equal(bytesToHex(b.message), "42354e97b88406922b1df4bea1d7870f17aed3dba7c720b313edae315b00959309");
  const k = "a480bca13fa04464bb644f10e340125e96c9494f7399fef7c2bda67eb0fdf06d";
  assert.equal(bytesToHex(a.finish(b.message)), k);
  assert.equal(bytesToHex(b.finish(a.message)), k);
});

test("python-spake2 0.9: password-to-scalar and arbitrary-element vectors (Ed25519)", () => {
  const le32 = (n) => { const out = new Uint8Array(32); for (let i = 0; i < 32; i++) { out[i] = Number(n & 0xffn); n >>= 8n; } return out; };
  assert.equal(bytesToHex(le32(spake2.passwordScalar(hexToBytes("7077")))), "cf090b60384cb818b12c8d972dfbaf910c0c7295c5cfe560e508f5f062f3960f");
  assert.equal(bytesToHex(le32(spake2.passwordScalar(hexToBytes("0001feff")))), "e86622bb57ea0f6f9f963354f2973a43a9e981901a478e6478682374441b0c04");
  assert.equal(bytesToHex(spake2.arbitraryElement(hexToBytes("41")).toBytes()), "4637592ae2914247de5804be805867266ccac99c635df8077dcdc1d72becf354");
  assert.equal(bytesToHex(spake2.arbitraryElement(hexToBytes("42")).toBytes()), "88228ee4046ba5d5fa2f23a0480a99efb1a9554ce50153d69330928215d50775");
});

test("§6.0.4: a message from the wrong side, reflected, off the curve or the identity is refused", () => {
  const pw = utf8ToBytes("7-a-b-c");
  const a = spake2.start("A", pw);
  const b = spake2.start("B", pw);
  assert.throws(() => a.finish(a.message), /wrong side/);
  const reflected = Uint8Array.from(a.message); reflected[0] = 0x42;
  assert.throws(() => a.finish(reflected), /reflected/);
  const identity = new Uint8Array(33); identity[0] = 0x42; identity[1] = 1;
  assert.throws(() => a.finish(identity), /not in the group/);
  // A point of small order (order 2: y = -1) is on the curve but not in the subgroup.
  const small = concatBytes(new Uint8Array([0x42]), hexToBytes("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"));
  assert.throws(() => a.finish(small), /not in the group|not a point/);
  assert.throws(() => a.finish(b.message.subarray(0, 20)), /33 bytes/);
  assert.equal(bytesToHex(a.finish(b.message)), bytesToHex(b.finish(a.message)));
});

const K = hexToBytes("0a3967d03f3c6f67ace911cb92d55347933e6314b69a64956223d6bd83b6021b");

test("§6.0.5: the key schedule from K", async () => {
  const keys = await keySchedule(K);
  assert.equal(bytesToHex(keys.confirmSender), "beed50f67d54222abe173fbcddf78d841627310e02c9c1d8ce3d2de7ea826249");
  assert.equal(bytesToHex(keys.confirmReceiver), "203f61dbd5a4c8d5081abf26be67dbc8bb3f99027bfc3546e4ef86b75072bbcf");
  assert.equal(bytesToHex(keys.senderKey), "dcf228d693084cc3a0da3337c94bec71d6339382ddbde9eb11dc77431c1d8221");
  assert.equal(bytesToHex(keys.receiverKey), "b67e50949a77cebf8a03234612cd2afa5c7534e601fdc308c5ab2fecb4e52250");
});

test("§6.0.6: sealed-message vectors, and a changed byte or a skipped nonce fails to open", async () => {
  const keys = await keySchedule(K);
  const sender = await Sealer.create(keys.senderKey);
  const receiver = await Sealer.create(keys.receiverKey);
  const first = await sender.seal(utf8ToBytes('{"type":"eof"}'));
  assert.equal(bytesToHex(first), "e967b4dab0790d98725968a7899fbe6c695909c92e726c44505e2be7e309");
  const second = await sender.seal(hexToBytes("007032700a"));
  assert.equal(bytesToHex(second), "8d40ca41bcdd0e8e9d894a45bc0b92bf5865fdd8e4");
  assert.equal(bytesToHex(await receiver.seal(utf8ToBytes('{"type":"accept"}'))),
    "5ccb8398e9c33c1ba215ff9e487f28cc9e7744c0abb3d135b88cc76cf1a348783d");
  const opener = await Opener.create(keys.senderKey);
  assert.equal(new TextDecoder().decode(await opener.open(first)), '{"type":"eof"}');
  assert.equal(bytesToHex(await opener.open(second)), "007032700a");
  const replay = await Opener.create(keys.senderKey);
  assert.equal(await replay.open(second), null, "nonce 0 does not open the second message");
  const altered = Uint8Array.from(first); altered[3] ^= 1;
  assert.equal(await (await Opener.create(keys.senderKey)).open(altered), null);
  assert.equal(await (await Opener.create(keys.senderKey)).open(first.subarray(0, 15)), null);
});

test("§4.2: room hashes of the examples, and normalised codes hash alike", async () => {
  assert.equal(await roomHash("purple-sausages-42"), "4db57ad8f4f2ce91aca47e419715faf52e952b614d41f7cb6d28cb7684bceac0");
  assert.equal(await roomHash("7-crossover-clockwork-puma"), "fbd75a258d7ea7f8295e73b2f3f580b2d5c08ae14ab2cf422f5908c26bd96022");
  assert.equal(await roomHash(" 7-Crossover-clockwork-puma\u2003"), await roomHash("7-crossover-clockwork-puma"));
});

test("§4.1: normalising, and the codes refused with bad_code", () => {
  assert.equal(normalizeCode("  7-Crossover-Clockwork-PUMA\n"), "7-crossover-clockwork-puma");
  assert.equal(normalizeCode("a-b-c"), "a-b-c");
  assert.equal(normalizeCode("\x1c7-a\x85"), "7-a", "Python's strip() removes U+001C and U+0085");
  assert.equal(normalizeCode("\ufeff7-a"), "\ufeff7-a", "Python's strip() keeps U+FEFF");
  for (const bad of ["", "   ", "nodash", "-secret", "room-", "\t-\t"]) {
    assert.throws(() => normalizeCode(bad), (error) => error.kind === "bad_code", bad);
  }
});

test("§3.1: the room is appended to the relay URL as one segment, the query kept", () => {
  const h = "f".repeat(64);
  assert.equal(roomUrl("wss://relay.example.org", h), `wss://relay.example.org/${h}`);
  assert.equal(roomUrl("wss://relay.example.org/", h), `wss://relay.example.org/${h}`);
  assert.equal(roomUrl("wss://relay.example.org/p2p", h), `wss://relay.example.org/p2p/${h}`);
  assert.equal(roomUrl("wss://relay.example.org/p2p/", h), `wss://relay.example.org/p2p/${h}`);
  assert.equal(roomUrl("wss://relay.example.org/p2p?x=1", h), `wss://relay.example.org/p2p/${h}?x=1`);
});

test("the page's relay URL: same host, ws(s), the page's directory, never the fragment", () => {
  assert.equal(relayUrlFromLocation({ protocol: "https:", host: "r.example.org", pathname: "/" }), "wss://r.example.org/");
  assert.equal(relayUrlFromLocation({ protocol: "http:", host: "127.0.0.1:8765", pathname: "/index.html" }), "ws://127.0.0.1:8765/");
  assert.equal(relayUrlFromLocation({ protocol: "https:", host: "h", pathname: "/proxy/8765/" }), "wss://h/proxy/8765/");
});

test("§4.3: the word list is p2p_copy/protocol/wordlist.txt, and generated codes are made of it", () => {
  assert.equal(readFileSync(new URL("../src/protocol/wordlist.js", import.meta.url), "utf-8"), wordlistModule(),
    "src/protocol/wordlist.js is stale: run npm run build");
  assert.equal(WORDS.length, 512);
  assert.equal(new Set(WORDS).size, 512);
  for (let i = 0; i < 50; i++) {
    const [room, ...words] = generateCode().split("-");
    assert.match(room, /^[1-9][0-9]{0,2}$/);
    assert.equal(words.length, 3);
    for (const word of words) assert.ok(WORDS.includes(word));
  }
  assert.ok(Number(generateCode(3).split("-")[0]) <= 999_999);
});
