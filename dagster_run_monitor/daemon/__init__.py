"""The ``RUN_MONITOR`` daemon and its pass: observe (storage and worker health), plan (the
core), apply (actions and resumes through Dagster's APIs). Imported only by ``integration``
(which lets the stock ``dagster-daemon run`` build it) and the CLI."""
