"""Optional third-party packages behind the adapter environments, imported only when used."""

from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = "pip install 'turnrl[envs]'"


class MissingExtraError(ImportError):
    """An adapter environment's third-party package is not installed."""


def require(module: str, env: str, package: str, hint: str = INSTALL_HINT) -> ModuleType:
    """Import `module` for environment `env`, or say which package to install (and how)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"the {env} environment needs {package}: {hint}") from err
