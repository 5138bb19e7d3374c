// @ts-check
// The QR code of the receive link, built as SVG elements (no markup string, no inline
// style: the page's Content-Security-Policy allows neither).

import { encode } from "uqr";

const SVG = "http://www.w3.org/2000/svg";

/** The dark modules as one path: "M x y h1v1h-1z" per module. */
export function qrPath(text) {
  const { data, size } = encode(text, { ecc: "M", border: 2 });
  let d = "";
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      if (data[y][x]) d += `M${x} ${y}h1v1h-1z`;
    }
  }
  return { d, size };
}

/** An <svg> element showing ``text`` as a QR code, labelled for screen readers. */
export function qrElement(text, label, doc = document) {
  const { d, size } = qrPath(text);
  const svg = doc.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  svg.setAttribute("shape-rendering", "crispEdges");
  svg.classList.add("qr");
  const background = doc.createElementNS(SVG, "rect");
  background.setAttribute("width", String(size));
  background.setAttribute("height", String(size));
  background.setAttribute("fill", "#fff");
  const path = doc.createElementNS(SVG, "path");
  path.setAttribute("d", d);
  path.setAttribute("fill", "#000");
  svg.append(background, path);
  return svg;
}
