// The layers of the JS core, as tests/test_layers.py keeps Python's: src/protocol/ is the
// protocol without I/O (it imports only itself and the crypto libraries, and touches no
// WebSocket, timer or storage); peer.js, send.js and receive.js build on it; index.js is
// the one door the page uses.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";

const src = new URL("../src/", import.meta.url);
const imports = (text) => [...text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s+"([^"]+)"/gms)].map((m) => m[1]);

test("src/protocol/ imports only itself, noble and hash-wasm, and does no I/O", () => {
  for (const name of readdirSync(new URL("protocol/", src))) {
    const text = readFileSync(new URL(`protocol/${name}`, src), "utf-8");
    for (const spec of imports(text)) {
      assert.ok(/^\.\/[a-z0-9]+\.js$/.test(spec) || /^@noble\/(curves|hashes)\//.test(spec) || spec === "hash-wasm",
        `${name} imports ${spec}`);
    }
    assert.doesNotMatch(text, /\bWebSocket\b|setTimeout|setInterval|\bfetch\(|navigator\b|node:/, name);
  }
});

test("the core never imports the page, the service worker or storage", () => {
  for (const name of ["peer.js", "send.js", "receive.js", "index.js", "hashing.js", "hash-worker.js", "hash-worker-main.js"]) {
    for (const spec of imports(readFileSync(new URL(name, src), "utf-8"))) {
      assert.ok(spec.startsWith("./protocol/") || /^\.\/(peer|send|receive|hashing|hash-worker)\.js$/.test(spec), `${name} imports ${spec}`);
    }
  }
});
