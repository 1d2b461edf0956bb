"""SSCR: cloud removal for Sentinel-2 by fusing Sentinel-1 SAR, with structure learned from SAR.

Importing the package has no side effects; the stages live in submodules.
Imports run one way, each layer using only those above it in this list
(``tests/test_architecture.py`` holds the exact order):

- facts and foundation: ``bands``, ``layout``, ``faults``; ``config``, ``fsutil``;
- algorithms and services: ``clouds/``, ``plots``, ``tracking`` (MLflow runs);
- the data set: ``data/``;
- what stages compute with: ``models/``, ``metrics``; ``losses``, ``checkpoint``, ``predict``, ``registry``;
  ``serving`` (the logged MLflow model);
- stages, none importing another: ``cloudmasks``, ``train``, ``evaluate``, ``infer``, ``ensemble``;
- on top: ``tune`` (Optuna over ``train``), ``cli``, ``pyfunc_model``, and the Prefect ``flows/``.
"""

__version__ = "0.1.0"
