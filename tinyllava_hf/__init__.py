"""tinyllava-hf: TinyLLaVA vision- and audio-language models as a transformers-native plugin.

Importing the package registers `tinyllava` with the transformers Auto classes, so `AutoConfig`, `AutoModel`,
`AutoModelForImageTextToText`, `AutoModelForCausalLM`, `AutoModelForMultimodalLM` and `AutoProcessor` resolve it
without remote code.

Importing it is cheap: torch and transformers load only when something needs them. The public classes load on first
access (as transformers' own lazy package does), and the Auto registration runs as soon as transformers' auto
modules exist: at once when they are already imported, otherwise right after transformers imports them. So the
command line starts fast (`tinyllava-hf --help` imports neither), and `import tinyllava_hf` followed by
`AutoModelForImageTextToText.from_pretrained(...)` still finds the classes.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
from typing import Any

__version__ = "0.1.0"

# Public name -> defining submodule, resolved on first access.
_LAZY_ATTRIBUTES = {
    "TinyLlavaConfig": "configuration_tinyllava",
    "TinyLlavaModel": "modeling_tinyllava",
    "TinyLlavaPreTrainedModel": "modeling_tinyllava",
    "TinyLlavaForConditionalGeneration": "modeling_tinyllava",
    "TinyLlavaProcessor": "processing_tinyllava",
    "TinyLlavaAudioProcessor": "processing_tinyllava",
    "build_connector": "connectors_tinyllava",
    "list_connectors": "connectors_tinyllava",
}
__all__ = sorted(_LAZY_ATTRIBUTES)

_registered: set[str] = set()


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(f".{_LAZY_ATTRIBUTES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY_ATTRIBUTES})


def _register_config() -> None:
    from transformers.models.auto.configuration_auto import AutoConfig

    from .configuration_tinyllava import TinyLlavaConfig

    AutoConfig.register(TinyLlavaConfig.model_type, TinyLlavaConfig, exist_ok=True)


def _register_models() -> None:
    from transformers.models.auto.modeling_auto import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoModelForMultimodalLM,
    )

    from .configuration_tinyllava import TinyLlavaConfig
    from .modeling_tinyllava import TinyLlavaForConditionalGeneration, TinyLlavaModel

    AutoModel.register(TinyLlavaConfig, TinyLlavaModel, exist_ok=True)
    for auto_class in (AutoModelForImageTextToText, AutoModelForCausalLM, AutoModelForMultimodalLM):
        auto_class.register(TinyLlavaConfig, TinyLlavaForConditionalGeneration, exist_ok=True)


def _register_processors() -> None:
    from transformers.models.auto.processing_auto import AutoProcessor

    from .configuration_tinyllava import TinyLlavaConfig
    from .processing_tinyllava import TinyLlavaAudioProcessor, TinyLlavaProcessor

    AutoProcessor.register(TinyLlavaConfig, TinyLlavaProcessor, exist_ok=True)
    # Saved processors carry their own copy of the code for `trust_remote_code=True` users.
    TinyLlavaProcessor.register_for_auto_class("AutoProcessor")
    TinyLlavaAudioProcessor.register_for_auto_class("AutoProcessor")


# Each transformers Auto module and the registration that needs it. Registering right after that module has run
# (and not before) keeps both orders working: `import tinyllava_hf` first, or transformers first.
_REGISTRATIONS = {
    "transformers.models.auto.configuration_auto": _register_config,
    "transformers.models.auto.modeling_auto": _register_models,
    "transformers.models.auto.processing_auto": _register_processors,
}


def _importing(module_name: str) -> bool:
    """Whether `module_name` is being imported right now (in `sys.modules`, not yet fully executed)."""
    module = sys.modules.get(module_name)
    return module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False)


def _register_ready() -> None:
    """Run each registration whose transformers Auto module is loaded, when no watched import is under way.

    Registering imports our modules, which import much of transformers; doing that in the middle of an import of
    transformers (or of ours) would meet partially initialised modules. So it runs only once the outermost such
    import has finished, which calls this again.
    """
    if _RegisterAfterImport.depth or any(_importing(name) for name in _REGISTRATIONS):
        return
    for module_name, registration in _REGISTRATIONS.items():
        if module_name in _registered or module_name not in sys.modules:
            continue
        _registered.add(module_name)
        registration()
    if len(_registered) == len(_REGISTRATIONS) and _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)  # everything is registered: stop watching imports


def register_auto_classes() -> None:
    """Register the TinyLLaVA config, models and processors with the transformers Auto classes now (idempotent)."""
    for module_name in _REGISTRATIONS:
        importlib.import_module(module_name)
    _register_ready()


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Runs the pending registrations when an import of transformers (or of our modules) has completely finished.

    It finds nothing itself: for those module names it asks the other finders for the real spec and wraps its loader,
    so the module executes as usual; `depth` counts the wrapped imports under way, nested ones included.
    """

    depth = 0

    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith(("transformers.", f"{__name__}.")):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _RegisteringLoader(spec.loader)
            return spec
        return None


class _RegisteringLoader:
    """The real loader, with `exec_module` followed by the registration; everything else (`get_code` for `python -m`,
    `get_source`, `is_package`, resource readers) is the real loader's own."""

    def __init__(self, loader: importlib.abc.Loader):
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        _RegisterAfterImport.depth += 1
        try:
            self._loader.exec_module(module)
        finally:
            _RegisterAfterImport.depth -= 1
        if _RegisterAfterImport.depth == 0:
            # The import system marks this module complete only after we return; it has fully run, though.
            module.__spec__._initializing = False
            _register_ready()


_FINDER = _RegisterAfterImport()
sys.meta_path.insert(0, _FINDER)
_register_ready()
