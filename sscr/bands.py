"""The bands of the two sensors: names, counts, display indices and value ranges, defined once.

Sentinel-2 L1C has 13 bands (B1 ... B12, with B8A after B8), stored by
SEN12MS-CR as uint16 top-of-atmosphere reflectance x 10000; Sentinel-1 GRD has
two polarisations (VV, VH), stored as float32 backscatter in dB. Every reader,
writer, model and check takes its counts from here, never from a bare number.
"""

from __future__ import annotations

S2_BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12",
)
S1_BANDS: tuple[str, ...] = ("VV", "VH")
S2_CHANNELS = len(S2_BANDS)
"""Sentinel-2 L1C bands B1 ... B12: 13."""
S1_CHANNELS = len(S1_BANDS)
"""Sentinel-1 GRD polarisations VV, VH: 2."""

#: 0-based indices into the 13-band S2 stack used for RGB previews (B4, B3, B2).
RGB_BANDS: tuple[int, int, int] = (S2_BANDS.index("B4"), S2_BANDS.index("B3"), S2_BANDS.index("B2"))

# Value ranges of the benchmark's "default" normalisation (REFERENCE.md section 1).
S1_DB_RANGE: tuple[float, float] = (-25.0, 0.0)
"""S1 backscatter is clipped to this range in dB, then mapped to [0, 1]."""
S2_DN_MAX = 10000.0
"""S2 DN are clipped to [0, S2_DN_MAX] and divided by it: TOA reflectance in [0, 1]."""


def s2_index(band: str) -> int:
    """0-based index of an S2 band name (``"B10"`` -> 10) in the 13-band stack."""
    return S2_BANDS.index(band)

# The mean cloud-free Sentinel-2 L1C spectrum over land, as TOA reflectance: the band means of EuroSAT
# (Helber et al. 2019; 27,000 cloud-free 64 x 64 px L1C patches over 34 European countries, ten land-cover
# classes from forest and crops to residential areas and water; published with torchgeo's EuroSAT
# data module, in DN / 10000). A model that knows nothing yet should predict this, not a flat grey.
CLEAR_LAND_TOA: dict[str, float] = {
    "B1": 0.1354, "B2": 0.1118, "B3": 0.1043, "B4": 0.0948, "B5": 0.1199, "B6": 0.2000, "B7": 0.2369,
    "B8": 0.2297, "B8A": 0.2594, "B9": 0.0732, "B10": 0.0012, "B11": 0.1819, "B12": 0.1119,
}
"""Mean clear-sky L1C TOA reflectance of land per band (EuroSAT band means): vegetation's red edge and NIR
plateau, blue raised by path radiance, B9 and B10 absorbed by water vapour."""
