// The dashboard's dead-letter panel: the newest dead letters the workers kept in Redis
// (/api/dead-letters, polled), each with its code, message, post id, source coordinates, size
// and, when it was kept inline, the original record. Uses app.js's api(), el() and $() helpers;
// text is only ever set with textContent.
"use strict";

const DEAD_EVERY_MS = 3000;
const DEAD_SHOWN = 20;
const ORIGINAL_SHOWN_CHARS = 2000;

function deadSize(n) {
  return n >= 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B";
}

function deadOriginal(d) {
  const o = d.original || {};
  if (o.data_b64) {
    try {
      const bytes = Uint8Array.from(atob(o.data_b64), (c) => c.charCodeAt(0));
      const text = new TextDecoder("utf-8").decode(bytes);
      return text.length > ORIGINAL_SHOWN_CHARS ? text.slice(0, ORIGINAL_SHOWN_CHARS) + "\u2026" : text;
    } catch (e) {
      return "(" + deadSize(o.size) + ", not text)";
    }
  }
  return o.ref ? "not kept inline (" + deadSize(o.size) + "): " + o.ref + ", sha256 " + o.sha256 : "";
}

function deadRow(d) {
  const li = el("li", "dl");
  li.dataset.code = d.error;
  li.dataset.id = d.post_id || "";
  const head = el("div", "dl-head");
  head.appendChild(el("span", "dl-code", d.error));
  head.appendChild(el("span", "dl-id", d.post_id || (d.key ? "key " + d.key : "(no post id)")));
  const src = d.source || {};
  head.appendChild(el("span", "dl-src", src.topic + "/" + src.partition + "/" + src.offset + " \u00b7 " + deadSize((d.original || {}).size || 0)));
  const seen = new Date(d.first_seen_at);
  head.appendChild(el("span", "dl-time", isNaN(seen) ? "" : seen.toTimeString().slice(0, 8)));
  li.appendChild(head);
  li.appendChild(el("p", "dl-msg", d.message));
  const orig = el("details", "dl-orig");
  orig.appendChild(el("summary", null, "original record"));
  orig.appendChild(el("pre", null, deadOriginal(d)));
  li.appendChild(orig);
  return li;
}

async function refreshDead() {
  try {
    const page = await api("/api/dead-letters?recent=" + DEAD_SHOWN);
    const list = $("dl-list");
    const sig = page.items.map((d) => d.first_seen_at + " " + d.source.topic + "/" + d.source.partition + "/" + d.source.offset).join("|");
    $("dl-note").textContent = page.kept ? "newest " + page.items.length + " of " + page.kept + " kept" : "";
    $("dl-empty").hidden = page.items.length > 0;
    if (sig === list.dataset.sig) return; // unchanged: keep the rows (and any opened original)
    list.dataset.sig = sig;
    while (list.firstChild) list.removeChild(list.firstChild);
    for (const d of page.items) list.appendChild(deadRow(d));
  } catch (err) {
    /* shown by the connection badge */
  }
}

document.addEventListener("DOMContentLoaded", () => {
  refreshDead();
  setInterval(refreshDead, DEAD_EVERY_MS);
});
