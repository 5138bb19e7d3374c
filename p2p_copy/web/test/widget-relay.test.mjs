// The notebook panel finds the relay: the kernel's own through the Jupyter server's proxy
// at <base_url>proxy/<port>/ (ws or wss as the page), or the relay the kernel names; and
// says what is needed where neither can work.
import { test } from "node:test";
import assert from "node:assert/strict";
import { jupyterBaseUrl, kernelSecrets, relayFor } from "../src/widget/relay.js";

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

/** A widget model whose kernel answers `{ask: "secrets"}` with `answer` (none: silent). */
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

test("the code and the relay's token come by custom messages, not from the traits", async () => {
  const asked = model({ code: "7-a-b-c", relay_token: "t0k-B" });
  const secrets = kernelSecrets(asked);
  assert.deepEqual(await secrets.get(), { code: "7-a-b-c", token: "t0k-B" });
  // Asked when the view showed, and again by get() before the answer came.
  assert.deepEqual(asked.sent, [{ ask: "secrets" }, { ask: "secrets" }]);
  assert.deepEqual(await secrets.get(), { code: "7-a-b-c", token: "t0k-B" }); // kept, not asked again
  assert.equal(asked.sent.length, 2);
  secrets.close();
  assert.equal(asked.listeners.size, 0);
  const open = kernelSecrets(model({ code: "7-d-e-f", relay_token: "" }));
  assert.deepEqual(await open.get(), { code: "7-d-e-f", token: undefined }); // a public relay
  open.close();
});

test("a kernel that says nothing: null after the wait; what it sends later is taken", async () => {
  const silent = model(undefined);
  const secrets = kernelSecrets(silent);
  assert.equal(await secrets.get(20), null);
  assert.deepEqual(silent.sent, [{ ask: "secrets" }, { ask: "secrets" }]);
  const later = secrets.get(1000);
  // The kernel's message every second, here while a cell runs that it could not hear us in.
  for (const f of [...silent.listeners]) f({ code: "7-g-h-i", relay_token: "" });
  assert.deepEqual(await later, { code: "7-g-h-i", token: undefined });
  secrets.close();
});
