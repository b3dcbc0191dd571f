// Who this page is: a token for the rooms and the identity inside it.
//
// Tokens come from a token endpoint: `/auth/guest` by default (guest tokens, when the server
// allows them), or a deployment's own backend named by <meta name="rooms-token-endpoint">,
// which answers the same JSON. A token can also arrive in a link (#token=...), e.g. from
// `./rooms token alice`. The identity is kept per tab (sessionStorage): a reload is the same
// user, a second window is someone else (it asks for a name), as two people on one machine
// would expect. Only the last name typed is shared between tabs, to fill in the join form.

const KEY = "rooms.identity";
const NAME_KEY = "rooms.name";
const RENEW_BEFORE_MS = 5 * 60 * 1000; // renew a token this long before it expires

export class AuthError extends Error {
  constructor(code, message, retryAfterS = 0) {
    super(message);
    this.code = code;
    this.retryAfterS = retryAfterS;
  }
}

function tokenEndpoint() {
  const meta = document.querySelector('meta[name="rooms-token-endpoint"]');
  return meta?.content || "/auth/guest";
}

export function storedIdentity() {
  try {
    return JSON.parse(sessionStorage.getItem(KEY));
  } catch {
    return null;
  }
}

// The name last used in any tab (a suggestion for the join form, never an identity).
export function lastName() {
  return localStorage.getItem(NAME_KEY) ?? "";
}

function save(identity) {
  sessionStorage.setItem(KEY, JSON.stringify(identity));
  localStorage.setItem(NAME_KEY, identity.name);
  return identity;
}

export function forgetIdentity() {
  sessionStorage.removeItem(KEY);
}

// A token given in a link: its claims name the user (the server checks the signature).
export function adoptLinkToken(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return save({
      token,
      user_id: String(claims.sub),
      name: String(claims.name ?? claims.sub),
      expires_ms: Number(claims.exp) * 1000,
      source: "link",
    });
  } catch {
    throw new AuthError("token_invalid", "The token in this link is not valid.");
  }
}

async function fetchToken(name, oldToken) {
  const request = oldToken ? { name, token: oldToken } : { name };
  let response;
  try {
    response = await fetch(tokenEndpoint(), {
      method: "POST",
      headers: { "content-type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify(request),
    });
  } catch {
    throw new AuthError("unreachable", "Can't reach the server to sign in.");
  }
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    const error = answer?.error ?? {};
    const retry = Number(response.headers.get("retry-after")) || 0;
    throw new AuthError(error.code ?? `http_${response.status}`, error.message ?? "", retry);
  }
  return { ...answer, source: "endpoint" };
}

// A token for `name` with time left: the stored one, renewed (same user id), or a new one.
// Another name than this tab's is another person: a new identity, never a rename.
export async function ensureIdentity(name, { force = false } = {}) {
  let current = storedIdentity();
  if (current && current.name !== name) current = null;
  if (current?.source === "link") {
    if (current.expires_ms > Date.now()) return current;
    throw new AuthError("token_expired", "The token in your link has expired: ask for a new link.");
  }
  const fresh = current && current.expires_ms - Date.now() > RENEW_BEFORE_MS;
  if (fresh && !force) return current;
  if (current?.token) {
    try {
      return save(await fetchToken(name, current.token));
    } catch (error) {
      if (error.code !== "token_invalid" && error.code !== "token_expired") throw error;
    }
  }
  return save(await fetchToken(name));
}
