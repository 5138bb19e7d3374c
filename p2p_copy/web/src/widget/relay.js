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

/** Milliseconds the kernel has to answer for the token before the transfer goes on without. */
export const TOKEN_WAIT = 10_000;

/** What to say when a private relay refused the browser and the kernel never answered for its token. */
export const UNHEARD = "The relay needs the kernel's access token, but the kernel did not answer this panel: "
  + "ipykernel older than 7.4 hears nothing while a cell runs (one that awaits this transfer, say). "
  + "Use ipykernel 7.4 or later, or run the panel's cell again without awaiting its handle.";

/**
 * The access token of the relay the kernel named: the string, undefined if it needs none,
 * or null if the kernel did not answer within ``wait`` ms (the transfer goes on without;
 * a public relay needs none). Asked for with a custom message (panel.py answers
 * `{relay_token}`): custom messages reach the kernel while a cell awaits drop(), where
 * trait changes may not (the widget manager holds them back until the kernel reports idle
 * for the last one, and ipykernel 7.4 reports nothing for a comm message it handles during
 * a cell). Used for one transfer and kept nowhere else. Not a trait: traits are widget
 * state, which a notebook may save.
 * @param {{send: (content: any) => void, on: (name: string, f: (m: any) => void) => void,
 *   off: (name: string, f: (m: any) => void) => void}} model
 * @param {number} [wait]
 * @returns {Promise<string | undefined | null>}
 */
export function kernelToken(model, wait = TOKEN_WAIT) {
  return new Promise((resolve) => {
    const finish = (token) => {
      clearTimeout(timer);
      model.off("msg:custom", onMessage);
      resolve(token);
    };
    const onMessage = (message) => {
      if (message && typeof message.relay_token === "string") finish(message.relay_token || undefined);
    };
    const timer = setTimeout(() => finish(null), wait);
    model.on("msg:custom", onMessage);
    model.send({ ask: "relay_token" });
  });
}
