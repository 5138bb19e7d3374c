// @ts-check
// The page the relay serves at its root: a send view and a receive view. #CODE in the
// address opens the receive view with that code (the fragment never reaches the server);
// #send and #receive pick a view.

import * as core from "../index.js";
import { parseHash, shownRelay } from "./format.js";
import { insecureContextMessage } from "./messages.js";
import { setupReceive } from "./receive.js";
import { setupSend } from "./send.js";
import { registerServiceWorker, startingDownload } from "../storage/download.js";
import { $, show, wireCopyButtons } from "./ui.js";

let transfers = 0;

/** Ask before leaving while bytes are on their way: closing the tab ends the transfer. */
function busy(on) {
  transfers += on ? 1 : -1;
  // A transfer keeps the relay it started with.
  $("relay-select").disabled = transfers > 0;
}
window.addEventListener("beforeunload", (event) => {
  if (transfers > 0 && !startingDownload()) {
    event.preventDefault();
    event.returnValue = "";
  }
});

function showView(name) {
  const send = name === "send";
  show("send-view", send);
  show("receive-view", !send);
  $(send ? "nav-send" : "nav-receive").setAttribute("aria-current", "page");
  $(send ? "nav-receive" : "nav-send").removeAttribute("aria-current");
  document.title = send ? "Send files · p2p-copy" : "Receive files · p2p-copy";
}

/** The page cannot work without WebCrypto: say why, plainly, and switch the buttons off. */
function secureEnough() {
  if (window.isSecureContext && globalThis.crypto && globalThis.crypto.subtle) return true;
  const problem = $("problem");
  problem.textContent = insecureContextMessage(window.location);
  problem.hidden = false;
  for (const el of document.querySelectorAll("main button, main input")) el.disabled = true;
  // Nothing to choose or type that could not work; the notice says what to do instead.
  $("choose").hidden = true;
  $("code-form").hidden = true;
  return false;
}

/** The relay's /static/config.json: its version and the other relays the page may use. */
async function loadConfig() {
  try {
    const response = await fetch("static/config.json", { cache: "no-store" });
    if (response.ok) return await response.json();
  } catch {
    // the page works without it: its own relay only
  }
  return {};
}

/**
 * The relay choice: the page's own relay, and those the relay names (--web-connect), which
 * the page's CSP lets it reach. Shown only when there is a choice.
 */
function relayChoice(own, config) {
  const others = Array.isArray(config.relays) ? config.relays.filter((r) => typeof r === "string" && r !== own) : [];
  const select = $("relay-select");
  const option = (url, label) => {
    const o = document.createElement("option");
    o.value = url;
    o.textContent = label;
    return o;
  };
  select.replaceChildren(option(own, `${shownRelay(own)} (this page's relay)`), ...others.map((r) => option(r, shownRelay(r))));
  $("relay-choice").hidden = others.length === 0;
  return {
    allowed: (url) => url === own || others.includes(url),
    choose(url) {
      select.value = url;
    },
    current: () => ({ url: select.value || own, own: (select.value || own) === own }),
  };
}

async function main() {
  const own = core.relayUrlFromLocation(window.location);
  const config = await loadConfig();
  if (typeof config.version === "string") $("version").textContent = `p2p-copy ${config.version}`;
  const relays = relayChoice(own, config);
  const send = setupSend({ core, relay: relays.current, busy, showView });
  const receive = setupReceive({ core, relay: relays.current, busy });
  wireCopyButtons();
  $("trust-link").addEventListener("click", (event) => {
    event.preventDefault();
    const more = $("trust");
    more.hidden = !more.hidden;
    $("trust-link").setAttribute("aria-expanded", String(!more.hidden));
  });
  $("trust-link").setAttribute("aria-expanded", "false");
  $("trust-link").setAttribute("aria-controls", "trust");

  const route = () => {
    const hash = window.location.hash;
    const { code, relay } = parseHash(hash);
    if (code) {
      showView("receive");
      // The code is used once: keep it out of the address (and the history) from now on.
      history.replaceState(null, "", `${window.location.pathname}${window.location.search}#receive`);
      if (relay && !relays.allowed(relay)) {
        const problem = $("problem");
        problem.textContent = `The link names the relay ${relay}, which this page may not reach. Open the page from that relay, or ask the sender for a link to this one.`;
        problem.hidden = false;
        return;
      }
      relays.choose(relay || own);
      if (secure) receive.start(code);
    } else if (hash === "#receive") {
      showView("receive");
      receive.focus();
    } else if (!send.running || hash === "#send") {
      showView("send");
    }
  };
  const secure = secureEnough();
  window.addEventListener("hashchange", route);
  route();
  if (secure) registerServiceWorker();
}

main();
