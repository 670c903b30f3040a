"""The embedded backend: a real classifier trained with no key and no network.

``backend`` (the Backend: jobs, files, trainer processes) · ``jobs`` (job records, progress
and leases in Redis) · ``trainer`` (the training process) · ``selection`` (the model chosen
on validation) · ``fitting`` (its candidates, fitted in parallel) · ``models`` (saved models,
loaded and scored).
"""

from modfactory.backends.local.backend import LocalBackend

__all__ = ["LocalBackend"]
