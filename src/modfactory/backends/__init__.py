"""Training backends behind one interface: ``local`` (embedded) and ``mistral``."""

from __future__ import annotations

from modfactory.backends.base import Backend, BackendError
from modfactory.settings import Settings

BACKENDS = ("local", "mistral")


def get_backend(name: str, settings: Settings) -> Backend:
    """The backend called ``name``, configured from ``settings``."""
    if name == "local":
        from modfactory.backends.local import LocalBackend

        return LocalBackend(
            settings.data_dir, epochs=settings.local_epochs, alpha=settings.local_alpha
        )
    if name == "mistral":
        raise BackendError(
            "the mistral backend is not available in this release yet; use --backend local "
            "(or unset MISTRAL_API_KEY to make local the default)"
        )
    raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
