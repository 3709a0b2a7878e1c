// The daemon's HTTP API, as the console uses it.  Errors come back as
// {"error": {"code", "message"}}; they are thrown as ApiError with both.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// A missing or refused credential, said in terms of the "API key" field of
// Sign in (which takes an API key, the bootstrap api_token or a JWT) rather
// than the HTTP header the server's message names.
export function apiKeyProblem(sent, code = "") {
  if (!sent) return 'this server needs an API key: enter it in the "API key" field of Sign in';
  if (code === "key_expired" || code === "token_expired") {
    return 'this API key has expired: enter a current one in the "API key" field of Sign in';
  }
  if (code === "key_revoked") {
    return 'this API key was revoked: enter another in the "API key" field of Sign in';
  }
  return 'the server did not accept this API key: check the "API key" field of Sign in';
}

async function call(method, path, options = {}) {
  return (await exchange(method, path, options)).data;
}

// The answer's body and headers (a task list says where its event stream starts).
// `withApiToken`: the call carries the API key field's credential (when there
// is one) as its bearer.
async function exchange(method, path, { bearer, body, withApiToken = false } = {}) {
  if (withApiToken) bearer = api.apiToken;
  const headers = {};
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (err) {
    throw new ApiError(0, "unreachable", `cannot reach the server: ${err.message}`);
  }
  if (resp.status === 204) return { data: null, headers: resp.headers };
  let data = null;
  try {
    data = await resp.json();
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const error = (data && data.error) || {};
    if (withApiToken && resp.status === 401) throw new ApiError(401, error.code || "unauthorized", apiKeyProblem(bearer, error.code));
    throw new ApiError(resp.status, error.code || "http_error", error.message || `HTTP ${resp.status}`);
  }
  return { data, headers: resp.headers };
}

export const api = {
  // The "API key" field's credential (an API key, the api_token or a JWT),
  // set at sign-in; kept in sessionStorage only.
  apiToken: "",

  config: () => call("GET", "/console/config.json"),
  whoami: () => call("GET", "/v1/whoami", { withApiToken: true }),
  mint: (roles, desc) =>
    call("POST", "/v1/operators", { withApiToken: true, body: { roles, desc } }),
  operator: (sid, token) => call("GET", `/v1/operators/${encodeURIComponent(sid)}`, { bearer: token }),
  leave: (sid, token) => call("DELETE", `/v1/operators/${encodeURIComponent(sid)}`, { bearer: token }),

  // Every page, oldest first, as the route lists them; and the id of the newest
  // event published before the first page was read: the event stream resumes
  // there, so no change falls between the list and the stream.
  tasks: async (status) => {
    const all = [];
    let after = null;
    let lastEventId = null;
    for (let page = 0; page < 20; page++) {
      const q = new URLSearchParams({ limit: "500" });
      if (status) q.set("status", status);
      if (after) q.set("after", after);
      const { data, headers } = await exchange("GET", `/v1/tasks?${q}`, { withApiToken: true });
      if (lastEventId === null) {
        const seen = headers.get("X-Last-Event-Id");
        lastEventId = seen && /^\d+$/.test(seen) ? Number(seen) : 0;
      }
      all.push(...data.tasks);
      if (!data.next) break;
      after = data.next;
    }
    return { tasks: all, lastEventId };
  },
  task: (id) => call("GET", `/v1/tasks/${encodeURIComponent(id)}`, { withApiToken: true }),
  createTask: (body) => call("POST", "/v1/tasks", { withApiToken: true, body }),
  cancelTask: (id, reason) =>
    call("POST", `/v1/tasks/${encodeURIComponent(id)}/cancel`, {
      withApiToken: true,
      body: reason ? { reason } : {},
    }),

  // Admin (a principal holding admin; with no api_token configured, the console on loopback).
  // A task's audit trail, every page, oldest first: who decided what.
  audit: async (taskId, { pageSize = 1000 } = {}) => {
    const all = [];
    let after = null;
    for (let page = 0; page < 20; page++) {
      const q = new URLSearchParams({ task_id: taskId, limit: String(pageSize) });
      if (after) q.set("after", after);
      const body = await call("GET", `/v1/audit?${q}`, { withApiToken: true });
      all.push(...body.entries);
      if (!body.next) break;
      after = body.next;
    }
    return all;
  },
  operators: async () => {
    const all = [];
    let after = null;
    for (let page = 0; page < 20; page++) {
      const q = new URLSearchParams({ limit: "500" });
      if (after) q.set("after", after);
      const body = await call("GET", `/v1/operators?${q}`, { withApiToken: true });
      all.push(...body.operators);
      if (!body.next) break;
      after = body.next;
    }
    return all;
  },
  // Several replies in one call, each answered on its own: {results: [{req_id, status, error?}]}
  // in the order sent.  The API key field's credential decides what it may answer.
  replyBatch: (replies) =>
    call("POST", "/v1/requests/reply", { withApiToken: true, body: { replies } }),
  pendingOf: (sid, bearer) =>
    call("GET", `/v1/operators/${encodeURIComponent(sid)}/pending`, { bearer }),
  forceLeave: (sid) =>
    call("DELETE", `/v1/operators/${encodeURIComponent(sid)}`, { withApiToken: true }),

  // A spawn's worker handle is the bearer: the person does the sub-agent's part.
  workerPrompt: (handle) => call("GET", "/v1/worker/prompt", { bearer: handle }),
  workerResult: (handle, value, ok) =>
    call("POST", "/v1/worker/result", { bearer: handle, body: { value, ok } }),
};
