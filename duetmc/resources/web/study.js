// The participant page. The personal token lives in the URL (/s/<token>), so a reload or a reopened
// link resumes at the first unanswered trial; the server keeps the first answer to each trial, so a
// double click or a resend never counts twice.
"use strict";

const $ = (id) => document.getElementById(id);
const token = location.pathname.startsWith("/s/") ? decodeURIComponent(location.pathname.slice(3)) : null;
let state = null;
let current = null;
const played = { A: false, B: false };
const SAVED = "duetmc-study-link";  // this browser's unfinished study link, offered again on the first page

function fail(message) { $("error").textContent = message; }

async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || "error " + response.status);
  return body;
}

function buttons(enabled) {
  document.querySelectorAll(".choices button").forEach((b) => { b.disabled = !enabled; });
}

function show(section) {
  for (const id of ["welcome", "trial", "done"]) $(id).hidden = id !== section;
}

function nextTrial() {
  const left = state.trials.filter((t) => !t.answer);
  const answered = state.trials.length - left.length;
  $("bar").max = state.trials.length;
  $("bar").value = answered;
  if (!left.length) { localStorage.removeItem(SAVED); show("done"); return; }
  current = left[0];
  $("count").textContent = "Trial " + (answered + 1) + " of " + state.trials.length;
  $("prompt").textContent = "“" + current.prompt + "”";
  played.A = played.B = false;
  for (const side of ["A", "B"]) {
    $("audio" + side).src = "/api/audio?t=" + encodeURIComponent(token) + "&trial=" + current.trial + "&side=" + side;
  }
  $("hint").textContent = "Play both clips to answer.";
  buttons(false);
  show("trial");
}

async function choose(choice) {
  buttons(false);
  try {
    await api("/api/answer", { method: "POST", headers: { "Content-Type": "application/json" },
                               body: JSON.stringify({ token: token, trial: current.trial, choice: choice }) });
    current.answer = choice;
    nextTrial();
  } catch (err) {
    fail(String(err.message || err));
    buttons(true);
  }
}

for (const side of ["A", "B"]) {
  $("audio" + side).addEventListener("play", () => {
    played[side] = true;
    if (played.A && played.B) { buttons(true); $("hint").textContent = ""; }
  });
}
document.querySelectorAll(".choices button").forEach((b) => b.addEventListener("click", () => choose(b.dataset.choice)));
$("consent").addEventListener("change", () => { $("start").disabled = !$("consent").checked; });
$("join").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const me = await api("/api/participants", { method: "POST", headers: { "Content-Type": "application/json" },
                                                body: JSON.stringify({ participant: $("label").value, consent: true }) });
    const link = "/s/" + encodeURIComponent(me.token);
    localStorage.setItem(SAVED, link);
    location.assign(link);
  } catch (err) { fail(String(err.message || err)); }
});

async function main() {
  const info = await api("/api/info");
  $("title").textContent = info.title;
  if (!token) {
    const saved = localStorage.getItem(SAVED);
    if (saved) { $("resumeLink").href = saved; $("resume").hidden = false; }
    show("welcome");
    return;
  }
  state = await api("/api/me?t=" + encodeURIComponent(token));
  $("who").textContent = "Participant " + state.participant;
  $("link").textContent = location.href;
  nextTrial();
}
main().catch((err) => fail(String(err.message || err)));
