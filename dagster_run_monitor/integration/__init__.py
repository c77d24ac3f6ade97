"""Where the plugin meets Dagster: the instance class named in dagster.yaml, the one hook
that lets the stock ``dagster-daemon run`` build our daemon, and ``internals``, the only
module that touches Dagster's internals (each checked by ``test_internals.py``)."""
