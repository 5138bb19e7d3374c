// @ts-check
// The send view: choose files and folders (drop, pickers), send, show the code, follow the
// transfer.

import { describeCounts, formatBytes, progressLine, receiveLines, receiveLink, Speedometer } from "./format.js";
import { countEntries, entriesFromDirectoryHandle, entriesFromDrop, entriesFromFiles, mergeEntries, topLevel } from "./pick.js";
import { describeError, errorKind, isCancel } from "./messages.js";
import { qrElement } from "./qr.js";
import { $, announce, fillList, setState, show, throttle } from "./ui.js";

/**
 * @param {{core: any, relay: () => {url: string, own: boolean}, busy: (on: boolean) => void,
 *   showView: (name: string) => void}} ctx
 */
export function setupSend({ core, relay: chosenRelay, busy, showView }) {
  /** @type {import("./pick.js").Entry[]} */
  let entries = [];
  /** @type {AbortController | null} */
  let running = null;

  function renderSelection() {
    const { files, dirs, bytes } = countEntries(entries);
    show("selection", entries.length > 0);
    $("selection-summary").textContent = describeCounts(files, dirs, bytes);
    fillList($("selection-list"), topLevel(entries).map((t) => ({
      name: t.kind === "dir" ? `${t.name}/` : t.name,
      size: t.kind === "dir" ? `${t.files} ${t.files === 1 ? "file" : "files"}, ${formatBytes(t.bytes)}` : formatBytes(t.bytes),
    })));
  }

  function add(more) {
    if (running) return;
    entries = mergeEntries(entries, more);
    renderSelection();
    const { files, dirs, bytes } = countEntries(entries);
    announce(`Ready to send ${describeCounts(files, dirs, bytes)}`);
  }

  function failPicking(error) {
    if (isCancel(error)) return;
    setState("send-state", describeError(error), "bad");
    show("send-progress");
  }

  // Pickers -----------------------------------------------------------------------------
  const fileInput = $("file-input");
  const folderInput = $("folder-input");
  fileInput.addEventListener("change", () => {
    add(entriesFromFiles(fileInput.files));
    fileInput.value = "";
  });
  folderInput.addEventListener("change", () => {
    add(entriesFromFiles(folderInput.files));
    folderInput.value = "";
  });
  $("choose-files").addEventListener("click", () => fileInput.click());
  $("choose-folder").addEventListener("click", async () => {
    // showDirectoryPicker keeps empty folders; <input webkitdirectory> lists files only.
    if (typeof window.showDirectoryPicker === "function") {
      try {
        const handle = await window.showDirectoryPicker({ id: "p2p-copy-send", mode: "read" });
        add(await entriesFromDirectoryHandle(handle));
      } catch (e) {
        failPicking(e);
      }
    } else {
      folderInput.click();
    }
  });

  const drop = $("drop");
  drop.addEventListener("click", () => fileInput.click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      fileInput.click();
    }
  });

  // Window-wide drag and drop: a drop anywhere on the page adds to the selection.
  let depth = 0;
  const hasFiles = (event) => Array.from(event.dataTransfer?.types || []).includes("Files");
  window.addEventListener("dragenter", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth += 1;
    document.body.classList.add("dragging");
  });
  window.addEventListener("dragover", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = running ? "none" : "copy";
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) document.body.classList.remove("dragging");
  });
  window.addEventListener("drop", (event) => {
    if (!hasFiles(event)) return;
    event.preventDefault();
    depth = 0;
    document.body.classList.remove("dragging");
    if (running || !event.dataTransfer) return;
    showView("send");
    entriesFromDrop(event.dataTransfer).then(add, failPicking);
  });

  $("clear").addEventListener("click", () => {
    entries = [];
    renderSelection();
    drop.focus();
  });

  // Sending ------------------------------------------------------------------------------
  function showShare(code, relay) {
    const link = receiveLink(window.location, code, relay.own ? "" : relay.url);
    const lines = receiveLines(relay.url, code);
    $("code").textContent = code;
    const a = $("link");
    a.href = link;
    a.textContent = link;
    $("cli-line").textContent = lines.cli;
    $("py-line").textContent = lines.python;
    $("qr").replaceChildren(qrElement(link, `QR code of the link ${link}`));
    show("share");
  }

  async function start() {
    if (running || entries.length === 0) return;
    const code = core.generateCode();
    const relay = chosenRelay();
    const controller = new AbortController();
    running = controller;
    busy(true);
    show("choose", false);
    show("selection", false);
    showShare(code, relay);
    show("send-progress");
    show("send-cancel");
    show("send-again", false);
    const bar = $("send-bar");
    bar.value = 0;
    bar.max = 1;
    $("send-detail").textContent = "";
    setState("send-state", "Waiting for the other side to enter the code…");
    $("code").focus();
    announce(`Code ${code}. Waiting for the other side.`);
    const { files, dirs, bytes } = countEntries(entries);
    const speed = new Speedometer();
    let lastShown = 0;
    let finished = false;
    const showProgress = throttle((e) => {
      if (finished) return;
      show("share", false);
      const total = e.total ?? bytes;
      const { rate, eta } = speed.update(e.bytes, total);
      bar.max = Math.max(total, 1);
      bar.value = e.bytes;
      setState("send-state", "Sending…");
      $("send-detail").textContent = progressLine(e.bytes, total, rate, eta);
      const now = performance.now();
      if (now - lastShown > 10_000) {
        lastShown = now;
        announce(`Sent ${Math.floor((100 * e.bytes) / Math.max(total, 1))} percent`);
      }
    });
    const onEvent = (e) => {
      if (e.type === "connecting") setState("send-state", "Connecting to the relay…");
      else if (e.type === "waiting") setState("send-state", "Waiting for the other side to enter the code…");
      else if (e.type === "paired" || e.type === "verifying") {
        setState("send-state", "Connected: checking the code…");
        announce("The other side is here");
      } else if (e.type === "offer") setState("send-state", "Waiting for the other side to accept…");
      else if (e.type === "progress") showProgress(e);
    };
    try {
      await core.send({ relay: relay.url, code, entries, onEvent, signal: controller.signal });
      bar.max = 1;
      bar.value = 1;
      show("share", false);
      const text = `Sent and checked by the receiver: ${describeCounts(files, dirs, bytes)}.`;
      setState("send-state", text, "ok", "done");
      $("send-detail").textContent = "";
      announce(text);
    } catch (error) {
      const text = describeError(error);
      setState("send-state", text, isCancel(error) ? "" : "bad", errorKind(error));
      announce(text, true);
    } finally {
      finished = true;
      running = null;
      busy(false);
      show("send-cancel", false);
      show("send-again");
    }
  }

  $("send").addEventListener("click", start);
  $("send-cancel").addEventListener("click", () => running?.abort());
  $("send-again").addEventListener("click", () => {
    entries = [];
    renderSelection();
    show("share", false);
    show("send-progress", false);
    show("choose");
    drop.focus();
  });

  return {
    get running() {
      return running !== null;
    },
  };
}
