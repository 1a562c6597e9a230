"""A model's code/inference.py, imported as SageMaker's images import it, or in a
namespace of its own (multi-model endpoints):

    load_shared(model_dir)      code/ at the front of sys.path, the module named
                                "inference", as the inference toolkit does (one model)
    ModelCode(model_dir, tag)   inference.py and the modules beside it (`import utils`,
                                `from helpers import f`, packages) as submodules of a
                                package of their own, _byoc_model_<tag>: two models with
                                a utils.py each get each their own. .unload() takes the
                                package's modules out of sys.modules; sys.path is never touched.

How: each of the model's modules gets its own `__builtins__` whose `__import__`
maps a top-level name found in code/ (foo.py, or foo/ with __init__.py) to
_byoc_model_<tag>.foo; every other import is Python's own. Python looks `__import__` up in
the importing function's builtins, so this holds for imports inside functions at request
time too, and in any thread: nothing process-wide changes but sys.modules entries under
the model's unique package name and one finder in sys.meta_path (installed once) that
finds modules under such packages. Two threads loading two models at once share nothing.

Limits: importlib.import_module("utils") and pickles (torch.load of a whole model whose
class lives in code/) ask for the plain name and do not find it (weights_only loads, the
default in torch >= 2.6, are unaffected); code/ modules see their own names as
_byoc_model_<tag>.foo in __name__; only source files (.py) are found.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

from contract.spec.artifact import CODE_DIR

ENTRY_MODULE = "inference"
PACKAGE_PREFIX = "_byoc_model_"


def entry_point(model_dir) -> Path:
    return Path(model_dir) / CODE_DIR / f"{ENTRY_MODULE}.py"


def load_shared(model_dir) -> ModuleType | None:
    """model_dir/code/inference.py as the module "inference", code/ on sys.path (one model per process)."""
    path = entry_point(model_dir)
    if not path.is_file():
        return None
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(ENTRY_MODULE, path)
    if spec is None or spec.loader is None:  # not for a .py file: no loader would say so
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[ENTRY_MODULE] = module
    spec.loader.exec_module(module)
    return module


class _ModelLoader(importlib.machinery.SourceFileLoader):
    """A source file of a model's code/, run with that model's builtins."""

    def __init__(self, fullname: str, path: str, model_builtins: dict):
        super().__init__(fullname, path)
        self.model_builtins = model_builtins

    def exec_module(self, module: ModuleType) -> None:
        module.__dict__["__builtins__"] = self.model_builtins
        super().exec_module(module)


class _ModelFinder(importlib.abc.MetaPathFinder):
    """Finds _byoc_model_<tag>.foo in its parent package's code/ folder, with that model's loader."""

    def __init__(self):
        self.models: dict[str, ModelCode] = {}  # package name -> its model; dict operations are atomic

    def find_spec(self, fullname, path, target=None):
        code = self.models.get(fullname.partition(".")[0])
        if code is None or path is None:
            return None
        loader = functools.partial(_ModelLoader, model_builtins=code.builtins)
        for folder in path:
            # FileFinder calls what it is given as loader(fullname, path): a partial serves (typeshed wants a class)
            finder = importlib.machinery.FileFinder(folder, (loader, importlib.machinery.SOURCE_SUFFIXES))  # type: ignore[arg-type]
            spec = finder.find_spec(fullname)
            if spec is not None and spec.loader is not None:
                return spec
        return None


_FINDER = _ModelFinder()
_FINDER_LOCK = threading.Lock()


def _install_finder() -> None:
    with _FINDER_LOCK:
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)


class ModelCode:
    """One model's code/ in a package of its own; `.module` is its inference.py (None if it has none)."""

    def __init__(self, model_dir, tag: str):
        self.folder = entry_point(model_dir).parent
        self.package = f"{PACKAGE_PREFIX}{tag}"
        self.own = self._top_level_names()
        self.builtins = dict(vars(builtins), __import__=self._import)
        self.module = None
        if ENTRY_MODULE not in self.own:
            return
        _install_finder()
        root = ModuleType(self.package)
        root.__path__ = [str(self.folder)]
        root.__spec__ = importlib.machinery.ModuleSpec(self.package, None, is_package=True)
        root.__spec__.submodule_search_locations = root.__path__
        _FINDER.models[self.package] = self
        sys.modules[self.package] = root
        try:
            self.module = importlib.import_module(f"{self.package}.{ENTRY_MODULE}")
        except BaseException:
            self.unload()
            raise

    def _top_level_names(self) -> frozenset[str]:
        if not self.folder.is_dir():
            return frozenset()
        modules = {path.stem for path in self.folder.glob("*.py") if path.stem.isidentifier()}
        packages = {path.parent.name for path in self.folder.glob("*/__init__.py") if path.parent.name.isidentifier()}
        return frozenset(modules | packages)

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        top = name.partition(".")[0]
        if level != 0 or top not in self.own:
            return builtins.__import__(name, globals, locals, fromlist, level)
        module = importlib.import_module(f"{self.package}.{name}")
        if fromlist:  # from utils import f / from pkg import submodule
            for item in fromlist:
                if item != "*" and hasattr(module, "__path__") and not hasattr(module, item):
                    try:
                        importlib.import_module(f"{module.__name__}.{item}")
                    except ModuleNotFoundError:
                        pass  # a missing name: the import statement raises ImportError itself
            return module
        return sys.modules[f"{self.package}.{top}"]  # import pkg.sub binds pkg

    def unload(self) -> None:
        """The package and its modules out of sys.modules (they go once nothing else holds them)."""
        _FINDER.models.pop(self.package, None)
        for name in [name for name in list(sys.modules) if name == self.package or name.startswith(self.package + ".")]:
            sys.modules.pop(name, None)
        self.module = None
