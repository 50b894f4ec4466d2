// The studio's JSON API, as small functions. Errors carry the server's message and hint.

export class ApiError extends Error {
  constructor(status, message, hint, body) {
    super(message);
    this.status = status;
    this.hint = hint || "";
    this.body = body;
  }
}

export async function api(method, url, body) {
  const init = { method, headers: {} };
  if (body instanceof FormData || body instanceof Blob) init.body = body;
  else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(url, init);
  } catch (err) {
    throw new ApiError(0, "The studio server cannot be reached", "is 'headstart studio' still running?");
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const message = (data && data.error) || `${res.status} ${res.statusText}`;
    throw new ApiError(res.status, message, data && data.hint, data);
  }
  return data;
}

export const get = (url) => api("GET", url);
export const post = (url, body) => api("POST", url, body === undefined ? {} : body);
export const patch = (url, body) => api("PATCH", url, body);
export const del = (url) => api("DELETE", url);

export const enc = encodeURIComponent;
export const P = (project) => `/api/projects/${enc(project)}`;
export const relUrl = (rel) => rel.split("/").map(enc).join("/");
export const thumbUrl = (project, rel, v) => `${P(project)}/thumbs/${relUrl(rel)}${v ? `?v=${v}` : ""}`;
export const fileUrl = (project, rel) => `${P(project)}/files/${relUrl(rel)}`;

const BATCH_FILES = 16;
const BATCH_BYTES = 8e6;
const PARALLEL = 2;

// Upload files to a class in small batches (two at a time): a folder of thousands streams in
// without one giant request, and a file over the limit is refused here, before any byte is sent.
export async function uploadFiles(project, cls, files, { limitMb = 50, onProgress } = {}) {
  const limit = limitMb * 1e6;
  const result = { added: 0, duplicate: 0, errors: [], count: null };
  const batches = [];
  let batch = [];
  let bytes = 0;
  for (const file of files) {
    if (file.size > limit) {
      result.errors.push(`${file.name}: too large (${(file.size / 1e6).toFixed(1)} MB); the limit is ${limitMb} MB per file`);
      continue;
    }
    if (batch.length && (batch.length >= BATCH_FILES || bytes + file.size > BATCH_BYTES)) {
      batches.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(file);
    bytes += file.size;
  }
  if (batch.length) batches.push(batch);
  let done = files.length - batches.reduce((n, b) => n + b.length, 0);
  if (onProgress) onProgress(done, files.length, result);
  let next = 0;
  async function worker() {
    while (next < batches.length) {
      const mine = batches[next++];
      const form = new FormData();
      for (const f of mine) form.append("files", f, f.name || "image.jpg");
      try {
        const r = await api("POST", `${P(project)}/classes/${enc(cls)}/images`, form);
        absorb(result, r);
      } catch (err) {
        if (err.body && err.body.results) absorb(result, err.body);
        else result.errors.push(`${mine.length === 1 ? mine[0].name : `${mine.length} files`}: ${err.message}`);
      }
      done += mine.length;
      if (onProgress) onProgress(done, files.length, result);
    }
  }
  await Promise.all(Array.from({ length: PARALLEL }, worker));
  return result;
}

function absorb(result, r) {
  result.added += r.added || 0;
  result.duplicate += r.duplicate || 0;
  if (typeof r.count === "number") result.count = r.count;
  for (const row of r.results || []) if (row.status === "error") result.errors.push(row.message);
}

// Server-sent events of a job; calls on(type, data) and stops at the end of the job.
export function followJob(project, jobId, on) {
  const source = new EventSource(`${P(project)}/jobs/${enc(jobId)}/events`);
  const types = ["phase", "index", "bottlenecks", "step", "log", "result", "done", "error", "cancelled"];
  for (const type of types) {
    source.addEventListener(type, (e) => on(type, JSON.parse(e.data)));
  }
  source.addEventListener("end", () => { source.close(); on("end", {}); });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) on("lost", {});
  };
  return () => source.close();
}
