"""Execution providers on this machine: what onnxruntime offers, plugin EP registration, sessions on a
target, and what a session really used.

The decision (which providers a target gets) is `schemas.target.select_providers`, pure and shared with
validation; this module only feeds it onnxruntime's view of the machine and builds sessions from its
answer. Plugin EPs (onnxruntime-qnn ships QNN as one) are registered with
`onnxruntime.register_execution_provider_library`: by name when the provider's package is known, or
from a library path in `target.provider_libraries`. Registered plugins show up in
`onnxruntime.get_ep_devices()`, not in `get_available_providers()`, and a session takes them through
`SessionOptions.add_provider_for_devices`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

from schemas.paths import resolve_local_path
from schemas.target import CPU, PROVIDER_SOURCES, ProviderChoice, Target, TargetError, select_providers

from passes.base import PassError

#: Plugin EP names registered in this process (onnxruntime refuses a second registration of a name).
_REGISTERED: dict[str, str] = {}


def _plugin_library(provider: str, target: Target, workflow_dir: Path | None) -> str | None:
    """The plugin library for `provider`: from `provider_libraries`, else from its known package, else None."""
    if provider in target.provider_libraries:
        path = resolve_local_path(target.provider_libraries[provider], workflow_dir or Path.cwd())
        if not path.is_file():
            raise PassError(f"target.provider_libraries.{provider}: no such file {path}; point it at the plugin EP "
                            "shared library (e.g. libonnxruntime_providers_qnn.so)")
        return str(path)
    source = PROVIDER_SOURCES.get(provider)
    if source is None or source.plugin is None:
        return None
    try:
        module = importlib.import_module(source.plugin[1])
    except ImportError:
        return None  # not installed: select_providers reports it as missing, with the install hint
    return str(module.get_library_path())


def register_plugins(target: Target, workflow_dir: Path | None = None, log: Callable[[str], None] | None = None) -> list[str]:
    """Register the plugin EP libraries `target` asks for (once per process); returns the names registered."""
    import onnxruntime as ort

    built_in = set(ort.get_available_providers())
    done = []
    for provider in target.resolved_providers():
        if provider in built_in or provider in _REGISTERED:
            continue
        library = _plugin_library(provider, target, workflow_dir)
        if library is None:
            continue
        try:
            ort.register_execution_provider_library(provider, library)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises bare RuntimeErrors
            if "already registered" not in str(exc).lower():
                raise PassError(f"cannot register the plugin EP {provider} from {library}: {exc}") from exc
        _REGISTERED[provider] = library
        done.append(provider)
        if log:
            log(f"registered the plugin execution provider {provider} from {library}")
    return done


def plugin_devices() -> dict[str, list[Any]]:
    """The OrtEpDevices of each EP that offers some (plugins and built-ins that take the device API)."""
    import onnxruntime as ort

    found: dict[str, list[Any]] = {}
    for device in ort.get_ep_devices():
        found.setdefault(device.ep_name, []).append(device)
    return found


def available_providers() -> list[str]:
    """Every provider a session can use here: onnxruntime's built-ins, then registered plugins."""
    import onnxruntime as ort

    names = list(ort.get_available_providers())
    return names + [p for p in plugin_devices() if p not in names]


def choose(target: Target, workflow_dir: Path | None = None, log: Callable[[str], None] | None = None) -> ProviderChoice:
    """The providers for `target` on this machine (plugins registered first): how every pass picks them.

    A requested provider that is not available is a PassError naming the package that brings it, unless
    the target says `fallback: cpu`: then it is dropped with one `log` line, and the CPU is used.
    """
    register_plugins(target, workflow_dir, log)
    try:
        choice = select_providers(target, available_providers())
    except TargetError as exc:
        raise PassError(str(exc)) from None
    if choice.missing and log:
        log(f"execution provider(s) {', '.join(choice.missing)} not installed; falling back to {', '.join(choice.providers)}")
    return choice


def session_record(session: Any, choice: ProviderChoice) -> dict[str, Any]:
    """What a step records about where it ran: the session's providers (not the config's), and why."""
    used = list(session.get_providers())
    return {"provider": used[0] if used else None, "providers": used, "requested": list(choice.requested),
            "missing": list(choice.missing), "fell_back": choice.fell_back}


def provider_options_for(target: Target, providers: tuple[str, ...] | list[str]) -> list[dict[str, str]]:
    """`target.provider_options` for each provider in order, as the strings onnxruntime takes."""
    return [{k: _option_text(v) for k, v in target.provider_options.get(p, {}).items()} for p in providers]


def _option_text(value: Any) -> str:
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


__all__ = ["CPU", "available_providers", "choose", "plugin_devices", "provider_options_for", "register_plugins",
           "session_record"]


def describe_machine() -> dict[str, Any]:
    """What `pipeline targets` shows: providers onnxruntime offers here (plugins registered), and the
    onnxruntime / onnxruntime-genai flavours installed, with what to install for the missing ones."""
    import importlib.metadata

    import onnxruntime as ort

    from schemas.target import GENAI_FLAVOURS, RUNTIME_FLAVOURS

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    plugins = []
    for provider, source in PROVIDER_SOURCES.items():
        if source.plugin and version(source.plugin[0]):
            register_plugins(Target(providers=[provider]))
            plugins.append(provider)
    built_in = list(ort.get_available_providers())
    providers = [{"name": p, "kind": "built-in" if p in built_in else "plugin"} for p in available_providers()]
    flavours = [{"package": pkg, "brings": what, "version": version(pkg), "install": f"pip install {pkg}"}
                for pkg, what in (*RUNTIME_FLAVOURS, *GENAI_FLAVOURS)]
    have = {p["name"] for p in providers}
    missing = [{"name": p, "install": src.install} for p, src in PROVIDER_SOURCES.items() if p not in have]
    return {"onnxruntime": ort.__version__, "providers": providers, "flavours": flavours, "missing": missing}
