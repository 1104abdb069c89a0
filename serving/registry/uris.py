"""`registry://` URIs: `registry://NAME/VERSION` names one version, `registry://NAME@ALIAS` whatever
version the alias points at when it is resolved."""

from __future__ import annotations

from dataclasses import dataclass

from serving.registry.types import ALIAS_PATTERN, NAME_PATTERN, RegistryError

__all__ = ["SCHEME", "RegistryUri", "is_registry_uri", "parse_uri"]

SCHEME = "registry://"


@dataclass(frozen=True, slots=True)
class RegistryUri:
    model: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{SCHEME}{self.model}" + (f"@{self.alias}" if self.alias else f"/{self.version}")


def is_registry_uri(uri: str | None) -> bool:
    return bool(uri) and uri.lower().startswith(SCHEME)  # type: ignore[union-attr]


def parse_uri(uri: str) -> RegistryUri:
    """Parse `registry://NAME/VERSION` or `registry://NAME@ALIAS`; RegistryError says what is wrong."""
    if not is_registry_uri(uri):
        raise RegistryError(
            f"'{uri}' is not a registry URI: use registry://NAME/VERSION or registry://NAME@ALIAS"
        )
    rest = uri[len(SCHEME) :].rstrip("/")
    if "@" in rest:
        name, _, alias = rest.partition("@")
        _check_name(name, uri)
        if not ALIAS_PATTERN.match(alias):
            raise RegistryError(
                f"bad alias '{alias}' in '{uri}': aliases are lower-case words like 'production'"
            )
        return RegistryUri(name, alias=alias)
    name, _, version = rest.partition("/")
    _check_name(name, uri)
    if not version.isdigit() or int(version) < 1:
        raise RegistryError(
            f"'{uri}' names no version: use registry://{name}/VERSION (a number from 1) or registry://{name}@ALIAS"
        )
    return RegistryUri(name, version=int(version))


def _check_name(name: str, uri: str) -> None:
    if not NAME_PATTERN.match(name):
        raise RegistryError(f"bad model name '{name}' in '{uri}': letters, digits, '.', '_' and '-'")
