"""Prefect flows and deployments of SSCR: orchestration only, no ML logic.

- :mod:`flows.pipeline`: ``download -> cloudmasks -> train -> evaluate -> register``, one task per DVC stage;
- :mod:`flows.tune`: the Optuna study (DVC stage ``tune``), then the best configuration retrained and registered;
- :mod:`flows.promote`: move ``@champion`` to the newest registered version if it is better;
- :mod:`flows.deploy`: serve the three as deployments (``python -m flows.deploy`` from the project root).
"""
