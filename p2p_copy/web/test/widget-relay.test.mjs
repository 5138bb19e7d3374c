// The notebook panel finds the relay: the kernel's own through the Jupyter server's proxy
// at <base_url>proxy/<port>/ (ws or wss as the page), or the relay the kernel names; and
// says what is needed where neither can work.
import { test } from "node:test";
import assert from "node:assert/strict";
import { jupyterBaseUrl, kernelToken, relayFor } from "../src/widget/relay.js";

function doc({ config, bodyBase } = {}) {
  return {
    getElementById: (id) => (id === "jupyter-config-data" && config !== undefined ? { textContent: config } : null),
    body: { dataset: bodyBase === undefined ? {} : { baseUrl: bodyBase } },
  };
}

test("the base URL comes from JupyterLab's and Notebook 7's page config, else the body", () => {
  assert.equal(jupyterBaseUrl(doc({ config: JSON.stringify({ baseUrl: "/user/ann/" }) })), "/user/ann/");
  assert.equal(jupyterBaseUrl(doc({ config: JSON.stringify({ baseUrl: "/hub/x" }) })), "/hub/x/");
  assert.equal(jupyterBaseUrl(doc({ bodyBase: "/" })), "/");
  assert.equal(jupyterBaseUrl(doc({ config: "not json", bodyBase: "/b/" })), "/b/");
  assert.equal(jupyterBaseUrl(doc()), null); // VS Code, Colab: no Jupyter server page
});

test("the kernel's relay is reached through the proxy, ws or wss as the page", () => {
  const traits = { relayUrl: "", proxyPort: 41234 };
  assert.deepEqual(relayFor(traits, { protocol: "https:", host: "hub.example.org" }, "/user/ann/"),
    { relay: "wss://hub.example.org/user/ann/proxy/41234/" });
  assert.deepEqual(relayFor(traits, { protocol: "http:", host: "127.0.0.1:8888" }, "/"),
    { relay: "ws://127.0.0.1:8888/proxy/41234/" });
});

test("a relay the kernel names is used as it is; without a Jupyter page the panel says what to do", () => {
  assert.deepEqual(relayFor({ relayUrl: "wss://relay.example.org", proxyPort: 0 }, { protocol: "https:", host: "x" }, null),
    { relay: "wss://relay.example.org" });
  const none = relayFor({ relayUrl: "", proxyPort: 41234 }, { protocol: "https:", host: "x" }, null);
  assert.match(none.problem, /P2P_COPY_RELAY/);
  assert.match(relayFor({ relayUrl: "", proxyPort: 0 }, { protocol: "https:", host: "x" }, "/").problem, /not started/);
});

/** A widget model whose kernel answers `{ask: "relay_token"}` with `answer` (none: silent). */
function model(answer) {
  const listeners = new Set();
  const sent = [];
  return {
    sent,
    listeners,
    on: (name, f) => { assert.equal(name, "msg:custom"); listeners.add(f); },
    off: (name, f) => { listeners.delete(f); },
    send(content) {
      sent.push(content);
      if (answer === undefined) return;
      setTimeout(() => {
        for (const f of [...listeners]) f({ other: "message" }); // not the answer: ignored
        for (const f of [...listeners]) f(answer);
      }, 1);
    },
  };
}

test("the token of the kernel's relay comes by a custom message, not from the traits", async () => {
  const asked = model({ relay_token: "t0k-B" });
  assert.equal(await kernelToken(asked), "t0k-B");
  assert.deepEqual(asked.sent, [{ ask: "relay_token" }]);
  assert.equal(asked.listeners.size, 0); // stops listening once answered
  assert.equal(await kernelToken(model({ relay_token: "" })), undefined); // a public relay
  const silent = model(undefined); // a kernel that does not answer: null (go on without)
  assert.equal(await kernelToken(silent, 20), null);
  assert.equal(silent.listeners.size, 0);
});
