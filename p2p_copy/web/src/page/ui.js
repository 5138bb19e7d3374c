// @ts-check
// Small DOM helpers shared by the two views.

/** @returns {any} the element with this id (the page's own markup; a missing id is a bug) */
export function $(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`page bug: no element #${id}`);
  return el;
}

export function show(id, visible = true) {
  $(id).hidden = !visible;
}

/** Tell screen readers (politely: progress; assertively: errors). */
export function announce(text, urgent = false) {
  const region = $(urgent ? "alert" : "live");
  region.textContent = "";
  // A new text node each time, so that the same words twice are read twice.
  requestAnimationFrame(() => { region.textContent = text; });
}

/** Replace the children of ``list`` with one <li> per item: name and size. */
export function fillList(list, items) {
  const doc = list.ownerDocument;
  list.replaceChildren(...items.map(({ name, size }) => {
    const li = doc.createElement("li");
    const n = doc.createElement("span");
    n.className = "name";
    n.textContent = name;
    const s = doc.createElement("span");
    s.className = "size";
    s.textContent = size;
    li.append(n, s);
    return li;
  }));
}

/** Copy text to the clipboard; where that is refused, select it so that Ctrl+C works. */
export async function copyText(text, source) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const range = document.createRange();
    range.selectNodeContents(source);
    const sel = window.getSelection();
    sel?.removeAllRanges();
    sel?.addRange(range);
    return false;
  }
}

/** Copy buttons: data-copy="ID" copies the text of #ID. */
export function wireCopyButtons(root = document) {
  for (const button of root.querySelectorAll("button[data-copy]")) {
    const label = button.textContent;
    button.addEventListener("click", async () => {
      const source = $(button.dataset.copy);
      const text = source.href && source.tagName === "A" ? source.href : source.textContent;
      const copied = await copyText(text, source);
      button.textContent = copied ? "Copied" : "Press Ctrl+C";
      button.classList.toggle("copied", copied);
      announce(copied ? `${label.replace(/^Copy /, "")} copied` : "Selected: press Control C to copy");
      setTimeout(() => {
        button.textContent = label;
        button.classList.remove("copied");
      }, 2000);
    });
  }
}

/**
 * Set a status heading's text and its ok/bad colour; ``kind`` (an error's kind, or "done")
 * goes to data-kind for scripts and tests.
 */
export function setState(id, text, tone = "", kind = "") {
  const el = $(id);
  el.textContent = text;
  if (kind) el.dataset.kind = kind;
  else delete el.dataset.kind;
  el.classList.toggle("state-ok", tone === "ok");
  el.classList.toggle("state-bad", tone === "bad");
}

/**
 * A function that runs ``fn`` with the latest arguments at most every ``ms``: progress
 * comes per 256 KiB message, thousands a second, and the page must not spend its time
 * redrawing.
 */
export function throttle(fn, ms = 100) {
  let latest = null;
  let timer = null;
  return (...args) => {
    latest = args;
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      fn(...latest);
    }, ms);
  };
}
