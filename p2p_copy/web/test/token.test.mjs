// A private relay's access token (protocol.md §5.11): offered as a subprotocol beside
// "p2p-copy" (a browser cannot set Authorization), and a refused handshake that says why:
// a plain GET asks again, and our relay's 401 becomes access_denied.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { Link, tokenProtocols, SUBPROTOCOL, BEARER_SUBPROTOCOL } from "../src/peer.js";
import { P2PError } from "../src/index.js";

const CODE = "5-alpha-beta-gamma";
const hasWebSocket = typeof globalThis.WebSocket === "function";

test("the token is offered as p2p-copy.bearer.<base64url, no padding>, beside p2p-copy", () => {
  assert.equal(tokenProtocols(undefined), undefined);
  assert.equal(tokenProtocols(""), undefined); // no token: no subprotocol, as older relays expect
  // protocol.md §5.11's example, and one whose base64 has '+', '/' and padding.
  assert.deepEqual(tokenProtocols("t0k-B"), [SUBPROTOCOL, `${BEARER_SUBPROTOCOL}dDBrLUI`]);
  assert.deepEqual(tokenProtocols("?>?~>t0k"), ["p2p-copy", "p2p-copy.bearer.Pz4_fj50MGs"]);
  for (const bad of ["has space", "naïve", "tab\t", 42]) {
    assert.throws(() => tokenProtocols(/** @type {any} */ (bad)), (e) => e instanceof P2PError && e.kind === "usage");
  }
});

/**
 * A server on loopback that refuses every WebSocket handshake with `status` (and answers a
 * GET alike), remembering the subprotocols offered.
 * @param {number} status @param {Record<string, string>} headers
 */
async function refusing(status, headers) {
  const offered = [];
  const server = createServer((request, response) => {
    response.writeHead(status, { "Content-Type": "text/plain", ...headers });
    response.end("no\n");
  });
  server.on("upgrade", (request, socket) => {
    offered.push(request.headers["sec-websocket-protocol"]);
    const head = Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
    socket.end(`HTTP/1.1 ${status} No\r\nContent-Length: 0\r\nConnection: close\r\n${head}\r\n`);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());
  return { url: `ws://127.0.0.1:${port}/`, offered, close: () => new Promise((resolve) => server.close(resolve)) };
}

const OURS_401 = { "WWW-Authenticate": 'Bearer realm="p2p-copy"', "Access-Control-Allow-Origin": "*",
  "Access-Control-Expose-Headers": "WWW-Authenticate" };

test("a private relay's 401: access_denied, saying whether a token was given", { skip: !hasWebSocket, timeout: 20_000 }, async () => {
  const relay = await refusing(401, OURS_401);
  try {
    await assert.rejects(Link.open({ relay: relay.url, code: CODE, role: "receiver", token: "t0k-B" }),
      (e) => e.kind === "access_denied" && /did not accept our access token/.test(e.message));
    await assert.rejects(Link.open({ relay: relay.url, code: CODE, role: "sender" }),
      (e) => e.kind === "access_denied" && /needs an access token, and none was given/.test(e.message));
    assert.deepEqual(relay.offered, ["p2p-copy, p2p-copy.bearer.dDBrLUI", undefined]);
  } finally {
    await relay.close();
  }
});

test("another refusal (or a 401 that is not our relay's) stays relay_refused", { skip: !hasWebSocket, timeout: 20_000 }, async () => {
  for (const [status, headers] of [[404, {}], [401, { "WWW-Authenticate": 'Basic realm="proxy"' }], [503, {}]]) {
    const relay = await refusing(status, headers);
    try {
      await assert.rejects(Link.open({ relay: relay.url, code: CODE, role: "receiver", token: "t0k-B" }),
        (e) => e.kind === "relay_refused" && /Could not connect to the relay/.test(e.message), `${status}`);
    } finally {
      await relay.close();
    }
  }
});
