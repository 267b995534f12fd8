"""Shared CLI plumbing: settings, console, readable errors instead of tracebacks."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from skulens.settings import ConfigError, Settings, load_settings

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def settings_from() -> Settings:
    """Load settings for the current command (profile and home come from the global options)."""
    return load_settings()


def _known_errors() -> tuple[type[BaseException], ...]:
    from skulens.data.catalog import DataQualityError
    from skulens.data.mapping import MappingError
    from skulens.data.sources import SourceError
    from skulens.orchestration.airflow import AirflowError

    return (ConfigError, SourceError, MappingError, DataQualityError, FileNotFoundError, ValueError, AirflowError)


def fail_on_errors(func: F) -> F:
    """Turn expected errors (bad config, bad input, failed gates) into a message and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except _known_errors() as exc:
            err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {exc}", soft_wrap=True)
            raise typer.Exit(code=1) from exc

    return wrapper  # type: ignore[return-value]
