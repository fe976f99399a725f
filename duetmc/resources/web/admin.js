// The admin view: progress per participant. The admin token comes from this page's URL (?token=...)
// and goes to the API in a header; without it the API answers 403 and nothing is shown.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";

function cell(text) { const td = document.createElement("td"); td.textContent = text; return td; }

async function load() {
  const response = await fetch("/api/admin/progress", { headers: { Authorization: "Bearer " + token } });
  const body = await response.json();
  if (!response.ok) { document.getElementById("error").textContent = body.error; return; }
  document.getElementById("summary").textContent =
    body.participants.length + " participants · " + body.answers + " answers · " + body.trials + " trials";
  const rows = document.getElementById("rows");
  rows.textContent = "";
  for (const p of body.participants) {
    const tr = document.createElement("tr");
    const bar = document.createElement("progress");
    bar.max = p.assigned || 1;
    bar.value = p.answered;
    const td = document.createElement("td");
    td.appendChild(bar);
    tr.append(cell(p.label), cell(new Date(p.created * 1000).toISOString().slice(0, 16).replace("T", " ")),
              cell(p.answered), cell(p.assigned), td);
    rows.appendChild(tr);
  }
}
load();
setInterval(load, 10000);
