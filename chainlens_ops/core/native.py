"""Load a package's C (or Rust) extension module without running the package's `__init__`.

`wal push` and `wal fetch` start once per WAL segment, and some packages' `__init__`
cost more than the extension they wrap: python-zstandard's imports `platform` and
`typing` to pick a backend (~10 ms), cryptography's `cryptography`, `hazmat` and
`bindings` packages ~1 ms before its Rust binding (~3 ms) loads. The extension module
loaded here is the very object a normal import would give: it is entered in
`sys.modules` under its full name, so a later `import` of the package (an error path,
another command) finds it there and never initializes it twice.

Standard library only, and only `importlib.machinery` (already loaded at start-up).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def load_extension(name: str) -> ModuleType:
    """The extension module `name` ("zstandard.backend_c"), loaded from its package's
    folder; ImportError if it is not there as a compiled file. Callers fall back to a
    normal import on any exception (another layout, another version)."""
    if name in sys.modules:
        return sys.modules[name]
    from importlib.machinery import EXTENSION_SUFFIXES, ExtensionFileLoader, ModuleSpec, PathFinder

    top, _, rest = name.partition(".")
    package = PathFinder.find_spec(top)
    folders = list(package.submodule_search_locations or ()) if package else []
    if not folders or not rest:
        raise ImportError(f"{top} is not an installed package")
    *subfolders, stem = rest.split(".")
    for suffix in EXTENSION_SUFFIXES:
        path = os.path.join(folders[0], *subfolders, stem + suffix)
        if os.path.isfile(path):
            break
    else:
        raise ImportError(f"{name} is not a compiled extension in {folders[0]}")
    loader = ExtensionFileLoader(name, path)
    spec = ModuleSpec(name, loader, origin=path)
    module = loader.create_module(spec)
    loader.exec_module(module)
    sys.modules[name] = module
    return module
