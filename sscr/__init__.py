"""SSCR: cloud removal for Sentinel-2 by fusing Sentinel-1 SAR, with structure learned from SAR.

Importing the package has no side effects; the stages live in submodules
(``sscr.data``, ``sscr.clouds``, ``sscr.models``, ``sscr.train``, ...).
"""

__version__ = "0.1.0"
