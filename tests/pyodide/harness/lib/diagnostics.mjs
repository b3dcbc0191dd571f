// What the fakes noticed that production would do silently: FFI coercions (bytes sent as the text
// "b'...'", a bool bound as 'true'), blocked outbound fetches. Tests fail on any they did not expect.
const warnings = [];

export function recordWarning(kind, message) {
  warnings.push({ kind, message });
}

export function takeWarnings() {
  return warnings.splice(0, warnings.length);
}
