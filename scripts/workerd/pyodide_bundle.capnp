# The module bundle format workerd reads its Pyodide runtime from: workerd's own
# src/workerd/jsg/modules.capnp, without the C++ namespace annotation (pycapnp cannot load it).
# Field numbers must stay exactly as workerd's: they fix the binary layout.
@0xc8cbb234694939d5;

struct Bundle {
  modules @0 :List(Module);
}

struct Module {
  name @0 :Text;
  union {
    src @1 :Data;
    wasm @4 :Data;
    data @5 :Data;
    json @6 :Text;
  }
  tsDeclaration @3 :Text;
  type @2 :ModuleType;
  compileCache @7 :Data;
}

enum ModuleType {
  bundle @0;
  builtin @1;
  internal @2;
}
