// What survives a reload of this tab: the session and the replies already sent.
// sessionStorage only (it dies with the tab); never localStorage, never the URL.

const KEY = "operator-console";

function read() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY) || "null");
  } catch {
    return null;
  }
}

export const stored = {
  session() {
    return read();
  },
  save(session) {
    sessionStorage.setItem(KEY, JSON.stringify({ replies: {}, seen: {}, ...session }));
  },
  update(change) {
    const current = read();
    if (current) {
      change(current);
      sessionStorage.setItem(KEY, JSON.stringify(current));
    }
  },
  clear() {
    sessionStorage.removeItem(KEY);
  },
};
