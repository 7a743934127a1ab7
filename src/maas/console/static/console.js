// maas console: the behaviour of the server-rendered pages.
// Every call goes to /console/api/<route>, which forwards it to the API route of the same
// name with the session's key (the key itself never reaches this script). State-changing
// calls carry the session's CSRF token from <meta name="csrf-token">.
// Text from the server is only ever set with textContent, never as HTML.
"use strict";

(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

  function flash(message, bad) {
    const box = document.getElementById("flash");
    if (!box) return;
    box.textContent = message;
    box.classList.toggle("bad", Boolean(bad));
    box.hidden = !message;
  }

  function errorText(status, data) {
    const err = data && data.error;
    const message = typeof err === "string" ? err : err && err.message;
    return `${status}: ${message || "request failed"}`;
  }

  // 401 from /console/api: the session ended (sign-out elsewhere, expiry, the key revoked).
  function signedOut(status) {
    if (status === 401) window.location.assign("/console");
  }

  // A live region refreshed after the session ended was answered with the sign-in page.
  document.addEventListener("htmx:beforeSwap", (event) => {
    const url = event.detail.xhr.responseURL || "";
    if (new URL(url, window.location.href).pathname === "/console") {
      event.detail.shouldSwap = false;
      event.preventDefault();
      window.location.assign("/console");
    }
  });

  async function api(method, url, body, headers) {
    const init = { method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf, ...headers } };
    if (body !== undefined) {
      init.body = typeof body === "string" ? body : JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    const response = await fetch(url, init);
    signedOut(response.status);
    const kind = response.headers.get("content-type") || "";
    const data = kind.startsWith("application/json") ? await response.json() : await response.text();
    return { ok: response.ok, status: response.status, data };
  }

  // ------------------------------------------------------------ forms -> JSON
  function fieldValue(el) {
    const type = el.dataset.type;
    const raw = el.value.trim();
    if (raw === "") {
      if (el.dataset.null !== undefined) return null; // clears the value
      return el.dataset.empty !== undefined ? "" : undefined; // sent empty, or left out
    }
    if (type === "int") return parseInt(raw, 10);
    if (type === "list") return raw.split(",").map((s) => s.trim()).filter(Boolean);
    if (type === "json") return JSON.parse(raw);
    if (el.type === "datetime-local") return new Date(raw).toISOString();
    return raw;
  }

  function formBody(form) {
    const body = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled || el.type === "file") continue;
      if (el.type === "checkbox") {
        body[el.name] = body[el.name] || [];
        if (el.checked) body[el.name].push(el.value);
        continue;
      }
      const value = fieldValue(el);
      if (value !== undefined) body[el.name] = value;
    }
    return body;
  }

  // "/x/{name}/y" takes (and removes) the field "name" from the body, URL-encoded.
  function fillUrl(template, body) {
    return template.replace(/\{([a-z_]+)\}/g, (_, name) => {
      const value = body[name];
      delete body[name];
      return encodeURIComponent(value === undefined ? "" : String(value));
    });
  }

  const dialog = document.getElementById("secret-dialog");
  function showSecret(secret) {
    document.getElementById("secret-value").textContent = secret;
    dialog.showModal();
  }
  if (dialog) {
    document.getElementById("secret-copy").addEventListener("click", async () => {
      const secret = document.getElementById("secret-value").textContent;
      try {
        await navigator.clipboard.writeText(secret);
        flash("Copied.");
      } catch (e) {
        window.getSelection().selectAllChildren(document.getElementById("secret-value"));
        flash("Select and copy the secret by hand.");
      }
    });
    document.getElementById("secret-close").addEventListener("click", () => dialog.close());
    // The secret leaves the page with the dialog: the reload shows the list without it.
    dialog.addEventListener("close", () => window.location.reload());
  }

  async function act(el, body) {
    if (el.dataset.confirm && !window.confirm(el.dataset.confirm)) return;
    const url = fillUrl(el.dataset.api, body);
    const method = el.dataset.method || "POST";
    const sent = el.dataset.body !== undefined ? el.dataset.body : method === "DELETE" ? undefined : body;
    el.setAttribute("aria-busy", "true");
    try {
      const reply = await api(method, url, sent);
      if (!reply.ok) {
        flash(errorText(reply.status, reply.data), true);
        return;
      }
      if (el.dataset.secret !== undefined && reply.data.key) {
        showSecret(reply.data.key);
      } else if (el.dataset.goto) {
        window.location.assign(el.dataset.goto.replace("{id}", encodeURIComponent(reply.data.id)));
      } else {
        window.location.reload();
      }
    } catch (e) {
      flash(String(e), true);
    } finally {
      el.removeAttribute("aria-busy");
    }
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.matches("form[data-api]")) {
      event.preventDefault();
      let body;
      try {
        body = formBody(form);
      } catch (e) {
        flash(`invalid input: ${e.message}`, true);
        return;
      }
      act(form, body);
    } else if (form.matches("form[data-upload]")) {
      event.preventDefault();
      upload(form);
    } else if (form.matches("form[data-chat]")) {
      event.preventDefault();
      chat(form);
    } else if (form.matches("form[data-similarity]")) {
      event.preventDefault();
      similarity(form);
    } else if (form.matches("form[data-explain]")) {
      event.preventDefault();
      explain(form);
    } else if (form.matches("form[data-v2]")) {
      event.preventDefault();
      v2(form);
    } else if (form.matches("form[data-transcribe]")) {
      event.preventDefault();
      transcribe(form);
    } else if (form.matches("form[data-speech]")) {
      event.preventDefault();
      speech(form);
    } else if (form.matches("form[data-image]")) {
      event.preventDefault();
      image(form);
    }
  });
  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-api]");
    if (button) act(button, {});
  });

  // ------------------------------------------------------------ upload
  const ARCHIVES = [
    [/\.(tar\.gz|tgz)$/i, "application/gzip"],
    [/\.tar$/i, "application/x-tar"],
    [/\.zip$/i, "application/zip"],
  ];

  function upload(form) {
    const file = form.elements.file.files[0];
    const name = form.elements.name.value.trim();
    if (!file || !name) return;
    const query = new URLSearchParams();
    const task = form.elements.task && form.elements.task.value;
    if (task) query.set("task", task);
    const archive = ARCHIVES.find(([pattern]) => pattern.test(file.name));
    if (!archive) query.set("filename", file.name);
    const bar = form.querySelector("progress");
    bar.hidden = false;
    bar.value = 0;
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/console/api/admin/v1/models/${encodeURIComponent(name)}/versions?${query}`);
    xhr.setRequestHeader("X-CSRF-Token", csrf);
    xhr.setRequestHeader("Content-Type", archive ? archive[1] : "application/octet-stream");
    xhr.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total;
    });
    xhr.addEventListener("load", () => {
      signedOut(xhr.status);
      let data = null;
      try {
        data = JSON.parse(xhr.responseText);
      } catch (e) {
        data = null;
      }
      if (xhr.status === 201) {
        bar.value = 100;
        window.location.assign(`/console/models/${encodeURIComponent(data.model)}`);
      } else {
        flash(errorText(xhr.status, data), true);
      }
    });
    xhr.addEventListener("error", () => flash("upload failed: the connection broke", true));
    xhr.send(file);
  }

  // ------------------------------------------------------------ playground
  const conversation = []; // the chat so far, sent with every turn

  function bubble(role, text) {
    const log = document.getElementById("chat-log");
    const item = document.createElement("div");
    item.className = `msg ${role}`;
    item.textContent = text;
    log.appendChild(item);
    return item;
  }

  async function chat(form) {
    const input = form.elements.content;
    const content = input.value.trim();
    if (!content) return;
    conversation.push({ role: "user", content });
    bubble("user", content);
    input.value = "";
    const out = bubble("assistant", "");
    const body = {
      model: form.elements.model.value,
      messages: conversation,
      stream: true,
      stream_options: { include_usage: true },
      temperature: parseFloat(form.elements.temperature.value),
      max_tokens: parseInt(form.elements.max_tokens.value, 10),
    };
    const response = await fetch("/console/api/v1/chat/completions", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      signedOut(response.status);
      const data = await response.json().catch(() => null);
      out.textContent = errorText(response.status, data);
      out.classList.add("bad");
      conversation.pop();
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let text = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const chunk = JSON.parse(line.slice(6));
          if (chunk.error) {
            // An error after the stream began arrives as one more event.
            out.textContent = `${text}\n${chunk.error.message || chunk.error}`;
            out.classList.add("bad");
            continue;
          }
          const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
          if (delta && delta.content) {
            text += delta.content;
            out.textContent = text;
          }
          if (chunk.usage) {
            const u = chunk.usage;
            document.getElementById("chat-usage").textContent =
              `${u.prompt_tokens} prompt + ${u.completion_tokens} completion tokens`;
          }
        }
      }
    }
    conversation.push({ role: "assistant", content: text });
  }

  async function similarity(form) {
    const result = document.getElementById("similarity-result");
    const reply = await api("POST", "/console/api/v1/embeddings", {
      model: form.elements.model.value,
      input: [form.elements.a.value, form.elements.b.value],
    });
    if (!reply.ok) {
      result.textContent = errorText(reply.status, reply.data);
      return;
    }
    const [a, b] = reply.data.data.map((d) => d.embedding);
    let dot = 0;
    let na = 0;
    let nb = 0;
    for (let i = 0; i < a.length; i++) {
      dot += a[i] * b[i];
      na += a[i] * a[i];
      nb += b[i] * b[i];
    }
    result.textContent = `cosine similarity ${(dot / Math.sqrt(na * nb)).toFixed(4)}`;
  }

  async function explain(form) {
    const result = document.getElementById("explain-result");
    const tokens = document.getElementById("explain-tokens");
    tokens.replaceChildren();
    const reply = await api("POST", "/console/api/v1/explain", {
      model: form.elements.model.value,
      input: form.elements.input.value,
    });
    if (!reply.ok) {
      result.textContent = errorText(reply.status, reply.data);
      return;
    }
    const d = reply.data;
    result.textContent = `${d.target} (p = ${d.probability.toFixed(3)}), version ${d.version}`;
    const peak = Math.max(1e-9, ...d.tokens.map((t) => Math.abs(t.attribution)));
    for (const t of d.tokens) {
      const span = document.createElement("span");
      span.className = t.attribution >= 0 ? "tok pos" : "tok neg";
      span.textContent = t.token;
      span.title = t.attribution.toFixed(4);
      span.style.opacity = String(0.35 + (0.65 * Math.abs(t.attribution)) / peak);
      tokens.appendChild(span);
    }
  }

  async function v2(form) {
    const out = document.getElementById("v2-result");
    let body;
    try {
      body = JSON.parse(form.elements.body.value);
    } catch (e) {
      out.textContent = `not JSON: ${e.message}`;
      return;
    }
    const model = encodeURIComponent(form.elements.model.value);
    const reply = await api("POST", `/console/api/v2/models/${model}/infer`, body);
    out.textContent = reply.ok ? JSON.stringify(reply.data, null, 2) : errorText(reply.status, reply.data);
  }

  // ------------------------------------------------------------ speech and images
  async function readBody(response) {
    const kind = response.headers.get("content-type") || "";
    return kind.startsWith("application/json") ? response.json() : response.text();
  }

  async function transcribe(form) {
    const out = document.getElementById("transcribe-result");
    const data = new FormData();
    data.append("model", form.elements.model.value);
    data.append("file", form.elements.file.files[0]);
    data.append("response_format", "json");
    out.textContent = "…";
    const route = form.elements.task.value === "translations" ? "translations" : "transcriptions";
    const response = await fetch(`/console/api/v1/audio/${route}`, {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": csrf },
      body: data, // multipart, as OpenAI's clients send it
    });
    signedOut(response.status);
    const body = await readBody(response);
    out.textContent = response.ok ? body.text : errorText(response.status, body);
  }

  async function speech(form) {
    const status = document.getElementById("speech-status");
    const audio = document.getElementById("speech-audio");
    status.textContent = "…";
    const response = await fetch("/console/api/v1/audio/speech", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify({
        model: form.elements.model.value,
        input: form.elements.input.value,
        speed: Number(form.elements.speed.value),
        response_format: "wav",
      }),
    });
    signedOut(response.status);
    if (!response.ok) {
      status.textContent = errorText(response.status, await readBody(response));
      return;
    }
    const blob = await response.blob();
    if (audio.src) URL.revokeObjectURL(audio.src);
    audio.src = URL.createObjectURL(blob);
    audio.hidden = false;
    status.textContent = `${(blob.size / 1024).toFixed(1)} KB of WAV`;
  }

  async function image(form) {
    const status = document.getElementById("image-status");
    const img = document.getElementById("image-result");
    status.textContent = "…";
    const reply = await api("POST", "/console/api/v1/images/generations", {
      model: form.elements.model.value,
      prompt: form.elements.prompt.value,
      seed: Number(form.elements.seed.value),
      steps: Number(form.elements.steps.value),
      response_format: "b64_json",
    });
    if (!reply.ok) {
      status.textContent = errorText(reply.status, reply.data);
      return;
    }
    img.src = `data:image/png;base64,${reply.data.data[0].b64_json}`;
    img.hidden = false;
    status.textContent = `seed ${form.elements.seed.value}`;
  }

  // ------------------------------------------------------------ charts
  function chartWidth(el) {
    return Math.max(280, el.clientWidth || 600);
  }

  function usageChart() {
    const el = document.getElementById("usage-chart");
    const source = document.getElementById("usage-data");
    if (!el || !source || !window.uPlot) return;
    const rows = JSON.parse(source.textContent);
    if (!rows.length) return;
    // One bar per group (day, month, model, key, ...), labelled with it: not a time axis.
    const x = rows.map((_, i) => i);
    const label = (_, splits) => splits.map((i) => (Number.isInteger(i) && rows[i] ? rows[i].x : ""));
    new window.uPlot(
      {
        width: chartWidth(el),
        height: 220,
        scales: { x: { time: false, range: [-0.5, rows.length - 0.5] } },
        series: [
          { label: "group", value: (_, i) => (i === null || !rows[i] ? "–" : rows[i].x) },
          {
            label: "tokens",
            stroke: "#3b82f6",
            fill: "rgba(59, 130, 246, 0.35)",
            paths: window.uPlot.paths.bars({ size: [0.6, 60] }),
          },
          { label: "requests", stroke: "#f59e0b", scale: "req", points: { size: 8 } },
        ],
        axes: [{ values: label, incrs: [1] }, {}, { scale: "req", side: 1 }],
      },
      [x, rows.map((r) => r.tokens), rows.map((r) => r.requests)],
      el,
    );
  }

  // Prometheus text: sums over every label set, per metric name.
  function parseMetrics(text) {
    const sums = new Map();
    const buckets = new Map();
    for (const line of text.split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const m = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)/);
      if (!m) continue;
      const value = parseFloat(m[3]);
      if (!Number.isFinite(value)) continue;
      sums.set(m[1], (sums.get(m[1]) || 0) + value);
      if (m[1].endsWith("_bucket")) {
        const le = (m[2] || "").match(/le="([^"]+)"/);
        if (!le) continue;
        const key = m[1];
        const perLe = buckets.get(key) || new Map();
        perLe.set(le[1], (perLe.get(le[1]) || 0) + value);
        buckets.set(key, perLe);
      }
    }
    return { sums, buckets };
  }

  function quantile(now, before, name, q) {
    const a = now.buckets.get(name);
    if (!a) return null;
    const b = (before && before.buckets.get(name)) || new Map();
    const les = [...a.keys()].sort((x, y) => parseFloat(x) - parseFloat(y));
    const counts = les.map((le) => a.get(le) - (b.get(le) || 0));
    const total = counts[counts.length - 1];
    if (!total) return null;
    for (let i = 0; i < les.length; i++) {
      if (counts[i] >= q * total) return les[i] === "+Inf" ? null : parseFloat(les[i]) * 1000;
    }
    return null;
  }

  function meanDelta(now, before, base) {
    const sum = now.sums.get(`${base}_sum`) - ((before && before.sums.get(`${base}_sum`)) || 0);
    const count = now.sums.get(`${base}_count`) - ((before && before.sums.get(`${base}_count`)) || 0);
    return count > 0 ? sum / count : null;
  }

  function liveMetrics() {
    const el = document.getElementById("live-chart");
    if (!el || !window.uPlot) return;
    const points = [[], [], [], []];
    const plot = new window.uPlot(
      {
        width: chartWidth(el),
        height: 220,
        series: [
          {},
          { label: "req/s", stroke: "#3b82f6" },
          { label: "p50 ms", stroke: "#10b981", scale: "ms" },
          { label: "p95 ms", stroke: "#ef4444", scale: "ms" },
        ],
        axes: [{}, {}, { scale: "ms", side: 1 }],
      },
      points,
      el,
    );
    const show = (name, value, digits) => {
      const dd = document.querySelector(`[data-stat="${name}"]`);
      if (dd) dd.textContent = value === null || !Number.isFinite(value) ? "–" : value.toFixed(digits);
    };
    let before = null;
    let beforeAt = 0;
    async function poll() {
      const reply = await api("GET", el.dataset.metrics);
      if (!reply.ok) {
        flash(errorText(reply.status, reply.data), true);
        return;
      }
      const now = parseMetrics(reply.data);
      const at = Date.now() / 1000;
      if (before) {
        const rate = (now.sums.get("maas_requests_total") - (before.sums.get("maas_requests_total") || 0)) / (at - beforeAt);
        const p50 = quantile(now, before, "maas_request_seconds_bucket", 0.5);
        const p95 = quantile(now, before, "maas_request_seconds_bucket", 0.95);
        const ttft = meanDelta(now, before, "maas_time_to_first_token_seconds");
        const itl = meanDelta(now, before, "maas_inter_token_latency_seconds");
        show("rate", rate, 2);
        show("p50", p50, 1);
        show("p95", p95, 1);
        show("batch", meanDelta(now, before, "maas_batch_size"), 1);
        show("ttft", ttft === null ? null : ttft * 1000, 1);
        show("itl", itl === null ? null : itl * 1000, 1);
        points[0].push(at);
        points[1].push(Number.isFinite(rate) ? rate : 0);
        points[2].push(p50);
        points[3].push(p95);
        if (points[0].length > 90) points.forEach((p) => p.shift());
        plot.setData(points);
      }
      before = now;
      beforeAt = at;
    }
    poll();
    setInterval(() => {
      if (!document.hidden) poll();
    }, 2000);
  }

  // The job form: choosing a kind puts its example spec in the (untouched) spec box.
  const kind = document.getElementById("job-kind");
  if (kind) {
    const examples = JSON.parse(kind.dataset.examples || "{}");
    const spec = document.getElementById("job-spec");
    let shown = spec.value;
    kind.addEventListener("change", () => {
      if (spec.value !== shown) return; // edited by hand: leave it
      shown = JSON.stringify(examples[kind.value] || {});
      spec.value = shown;
    });
  }

  usageChart();
  liveMetrics();
})();
