// The search page: reads ?q= (text search) or ?like= (more like this clip) and &k= from its own URL,
// so every results page can be shared; asks the JSON API and lists the ranked clips with a player each.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmtSeconds(x) { return x === null || x === undefined ? "" : Number(x).toFixed(1) + " s"; }

function tagList(tags) {
  const box = el("div", { class: "tags" });
  for (const [category, values] of Object.entries(tags || {})) {
    for (const v of [].concat(values)) box.appendChild(el("span", { class: "tag", title: category }, v));
  }
  return box;
}

function resultItem(r, rank, k) {
  const li = el("li", { class: "result", "data-id": r.id });
  const row = el("div", { class: "row1" });
  row.append(el("span", { class: "rank" }, "#" + rank), el("span", { class: "cid" }, r.id),
             el("span", { class: "score" }, "score " + Number(r.score).toFixed(3)),
             el("span", { class: "split" }, r.split ? "split " + r.split : ""));
  if (r.start !== null && r.start !== undefined) {
    row.append(el("span", { class: "seg" }, fmtSeconds(r.start) + " – " + fmtSeconds(r.end)));
  }
  const actions = el("div", { class: "actions" });
  const audio = el("audio", { controls: "", preload: "none", src: "/api/audio?id=" + encodeURIComponent(r.id) });
  const more = el("a", { class: "more", href: "/?like=" + encodeURIComponent(r.id) + "&k=" + k }, "more like this");
  actions.append(audio, more);
  li.append(row, tagList(r.tags), actions);
  return li;
}

async function run() {
  const params = new URLSearchParams(location.search);
  const q = params.get("q"), like = params.get("like"), k = params.get("k") || "10";
  $("k").value = k;
  if (q) $("q").value = q;
  if (!q && !like) return;
  const url = like ? "/api/similar?id=" + encodeURIComponent(like) + "&k=" + encodeURIComponent(k)
                   : "/api/search?q=" + encodeURIComponent(q) + "&k=" + encodeURIComponent(k);
  $("status").textContent = "Searching…";
  const response = await fetch(url);
  const body = await response.json();
  if (!response.ok) {
    $("status").textContent = body.error || ("error " + response.status);
    $("status").className = "status error";
    return;
  }
  $("status").textContent = (like ? "Clips like " + like : "Results for “" + q + "”") +
                            " (" + body.results.length + ")";
  body.results.forEach((r, i) => $("results").appendChild(resultItem(r, i + 1, body.k)));
}

fetch("/api/health").then((r) => r.json()).then((h) => {
  $("about").textContent = "Describe the music you want to hear · " + h.clips + " clips in this index.";
}).catch(() => {});
run().catch((err) => { $("status").textContent = String(err); $("status").className = "status error"; });
