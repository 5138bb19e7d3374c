// @ts-check
// Where the notebook's browser finds the relay: the one the kernel names (the user's
// configured relay, with its access token if it is private), or the kernel's own relay on
// 127.0.0.1 through the Jupyter server that serves this page (jupyter-server-proxy:
// <base_url>proxy/<port>/, authenticated by the Jupyter session's cookie). Pure (the
// widget model passed in), so that Node tests it.

/**
 * The Jupyter server's base URL ("/", "/user/ann/"), or null in a front end that is not
 * served by a Jupyter server (VS Code, Colab): JupyterLab and Notebook 7 put it in
 * #jupyter-config-data, the classic notebook in the body's data-base-url.
 * @param {Document} doc
 * @returns {string | null}
 */
export function jupyterBaseUrl(doc) {
  const data = doc.getElementById("jupyter-config-data");
  if (data && data.textContent) {
    try {
      const base = JSON.parse(data.textContent).baseUrl;
      if (typeof base === "string" && base.startsWith("/")) return base.endsWith("/") ? base : `${base}/`;
    } catch {
      // not JSON: fall through to the other places
    }
  }
  const fromBody = doc.body?.dataset?.baseUrl;
  if (typeof fromBody === "string" && fromBody.startsWith("/")) return fromBody.endsWith("/") ? fromBody : `${fromBody}/`;
  return null;
}

/**
 * The relay URL for this page, or an explanation of why there is none.
 * @param {{relayUrl: string, proxyPort: number}} traits
 * @param {{protocol: string, host: string}} location
 * @param {string | null} baseUrl
 * @returns {{relay: string} | {problem: string}}
 */
export function relayFor({ relayUrl, proxyPort }, location, baseUrl) {
  if (relayUrl) return { relay: relayUrl };
  if (!proxyPort) return { problem: "The kernel has not started its relay yet." };
  if (baseUrl === null) {
    return {
      problem: "This front end is not a Jupyter server's page, so the browser cannot reach the relay in the kernel. "
        + "Set P2P_COPY_RELAY=wss://HOST in the kernel's environment (a relay both can reach), or open the notebook in JupyterLab or Notebook 7.",
    };
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return { relay: `${scheme}//${location.host}${baseUrl}proxy/${proxyPort}/` };
}

/** What to say when the proxied relay cannot be reached (jupyter-server-proxy missing or refusing). */
export const NO_PROXY = "The Jupyter server did not let this page through to the kernel's relay: "
  + "install jupyter-server-proxy (4.2 or later) in the Jupyter server's environment and restart it, "
  + "or set P2P_COPY_RELAY=wss://HOST in the kernel's environment.";

/** Milliseconds a view waits for the kernel's code before it says the kernel is not heard. */
export const SECRETS_WAIT = 10_000;

/** What to say when the kernel sent no code in SECRETS_WAIT. */
export const UNHEARD = "The kernel did not send this panel its code: it seems busy (a cell that computes "
  + "rather than awaits, say). Try again when the kernel is idle.";

/**
 * The code and a private relay's token, as the kernel sends them to the panel's views
 * in custom messages (panel.py `send_secrets`, `{code, relay_token}`): when a view asks, and
 * every second until the transfer ends. Not traits: traits are widget state,
 * which a notebook may save, and while the panel waits its code is live in the relay.
 * Custom messages also reach the view while a cell awaits drop(), where trait changes may
 * not (the widget manager holds them back until the kernel reports idle for the last one).
 * Kept in this view's memory only.
 * @param {{send: (content: any) => void, on: (name: string, f: (m: any) => void) => void,
 *   off: (name: string, f: (m: any) => void) => void}} model
 */
export function kernelSecrets(model) {
  /** @type {{code: string, token: string | undefined} | null} */
  let latest = null;
  /** @type {((secrets: {code: string, token: string | undefined}) => void)[]} */
  let waiting = [];
  const onMessage = (/** @type {any} */ message) => {
    if (!message || typeof message.code !== "string" || !message.code) return;
    latest = { code: message.code, token: message.relay_token || undefined };
    for (const resolve of waiting.splice(0)) resolve(latest);
  };
  model.on("msg:custom", onMessage);
  model.send({ ask: "secrets" });
  return {
    /**
     * The code and token (token undefined: the relay needs none), or null if the kernel
     * sent none within ``wait`` ms.
     * @param {number} [wait]
     * @returns {Promise<{code: string, token: string | undefined} | null>}
     */
    get(wait = SECRETS_WAIT) {
      if (latest) return Promise.resolve(latest);
      model.send({ ask: "secrets" });
      return new Promise((resolve) => {
        const done = (/** @type {any} */ secrets) => {
          clearTimeout(timer);
          waiting = waiting.filter((f) => f !== done);
          resolve(secrets);
        };
        const timer = setTimeout(() => done(null), wait);
        waiting.push(done);
      });
    },
    close() {
      model.off("msg:custom", onMessage);
      waiting.splice(0).forEach((resolve) => resolve(null));
    },
  };
}
