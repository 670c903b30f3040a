"""``modfactory``: build, train and evaluate a moderation classifier from the command line.

Entry point only: parse, call the producer / worker / dataset builder, print. Progress goes
to stderr; ``--json`` prints one JSON document on stdout. Exit codes: 0 done, 1 the run
failed or was cancelled, 2 bad input or setting, 3 awaiting approval, 4 the model name
has an unfinished run (MODFACTORY_ACTIVE_RUN_POLICY=refuse), 130 interrupted.
"""

# The command modules register their commands on import, in the order --help lists them;
# ``dataset``'s options are made from the recipe's fields (pydantic): imported when used.
# isort: off
from modfactory.cli import runs, scores, services, models, classify, review, audit  # noqa: F401
from modfactory.cli.app import app, dataset_app, feedback_app, lazy_group, users_app

# isort: on
lazy_group(dataset_app, "modfactory.cli.dataset")
lazy_group(feedback_app, "modfactory.cli.feedback")
lazy_group(users_app, "modfactory.cli.users")

__all__ = ["app"]
