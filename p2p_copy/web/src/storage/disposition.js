// @ts-check

/**
 * Content-Disposition for a download: an ASCII fallback for old clients and the exact
 * name in RFC 5987 / RFC 6266 form (filename*=UTF-8''...), which browsers prefer.
 * @param {string} name
 */
export function contentDisposition(name) {
  const ascii = name.replace(/[^\x20-\x7e]|["\\%/;]/g, "_") || "download";
  const encoded = encodeURIComponent(name).replace(
    /['()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
  return `attachment; filename="${ascii}"; filename*=UTF-8''${encoded}`;
}
