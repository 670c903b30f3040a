"""Mistral's Classifier Factory through the official SDK.

``backend`` (the Backend: exactly-once files, jobs and starts) · ``answers`` (the SDK's
answers read into our values, its errors into messages) · ``fastpath`` (the SDK's per-request
overheads removed).
"""

from modfactory.backends.mistral.backend import MistralBackend, shared_limiter

__all__ = ["MistralBackend", "shared_limiter"]
