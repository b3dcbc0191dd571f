// workerd:unsafe (experimental flag unsafe_module) is not importable from Python's
// import_from_javascript; a JS module of the bundle can import it.
import unsafe from "workerd:unsafe";

export async function evict(stub) {
  await unsafe.evict(stub);
}
