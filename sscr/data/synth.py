"""The embedded default data: a synthetic SEN12MS-CR sample in exactly the real file format.

The real data set cannot be downloaded on the build machines, so the pipeline
runs end to end on a small sample that is written with the real names,
band counts, dtypes, georeferencing and official split, and whose content is
physically plausible enough that models and cloud detectors behave on it as
they would on Sentinel data:

* a land-cover map (water, forest, grassland, cropland in parcels, bare soil,
  urban, snow in cold winters) with smooth boundaries (thresholded fractal
  noise), sharp ones (polygonal parcels) and linear features (rivers, roads);
* Sentinel-2 L1C top-of-atmosphere reflectance from per-class surface spectra
  in the 13 bands, mixed by a green-vegetation fraction (phenology), shaded by
  terrain and passed through a simple atmosphere (path radiance plus
  transmittance; strong water-vapour absorption in B9 and B10), in DN
  (reflectance x 10000, uint16);
* Sentinel-1 GRD backscatter (VV, VH) in dB from the same land cover and
  terrain (local incidence angle), with gamma-distributed speckle;
* clouds of every coverage from 0 to 100 %: thick (opaque, bright in every
  band, bright in cirrus B10) and thin or cirrus (semi-transparent), and their
  shadows cast away from the sun, on a ground observed at a nearby date
  (small phenology and radiometric changes against the clear target).

Each patch comes from its own random stream derived from (seed, season, ROI,
patch), so the output does not depend on the order of generation. The true
cloud and shadow masks the generator used are written beside the data, under
``<root>/synth_truth/`` (which the data-set index ignores), so tests can score
cloud detectors against them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from scipy import fft as sfft
from scipy import ndimage
from scipy.spatial import cKDTree
from tqdm import tqdm

from sscr.bands import S1_BANDS, S2_BANDS, S2_CHANNELS
from sscr.config import SynthConfig
from sscr.data.io import why_incomplete, write_raster
from sscr.layout import SEASONS, SPLITS, PatchId, official_splits, parse_roi_key, season_dir, season_name

#: Land-cover classes of the synthetic scenes (values of the ``land_cover`` array).
LAND_COVER: tuple[str, ...] = ("water", "forest", "grassland", "cropland", "bare", "urban", "snow")
WATER, FOREST, GRASS, CROP, BARE, URBAN, SNOW = range(len(LAND_COVER))

#: Directory under the data-set root holding the generator's true cloud and shadow masks.
TRUTH_DIR = "synth_truth"
TRUTH_BANDS: tuple[str, str] = ("cloud", "shadow")
PIXEL_SIZE_M = 10.0
#: Patches of one ROI are laid out on a grid this many patches wide.
GRID_COLUMNS = 8
#: A pixel is cloud in the truth mask where the total cloud opacity reaches this value.
CLOUD_TRUTH_OPACITY = 0.15
#: A pixel is shadow in the truth mask where this fraction of the direct sunlight is blocked.
SHADOW_TRUTH_DARKENING = 0.3
#: Haze thinner than this opacity (far below the DN noise) is no haze: the ground there is clear.
HAZE_FLOOR = 0.005

# Surface (bottom-of-atmosphere) reflectance, bands B1 B2 B3 B4 B5 B6 B7 B8 B8A B9 B10 B11 B12. SWIR of soil and
# vegetation and the brightness of snow are set to the real SEN12MS-CR patches (benchmarks/results/realism.md).
# B9 and B10 hold the surface value; the atmosphere below removes most of it (water vapour).
_SPECTRA = {
    "water": [0.045, 0.040, 0.035, 0.020, 0.012, 0.008, 0.007, 0.006, 0.005, 0.004, 0.003, 0.003, 0.002],
    "forest_on": [0.020, 0.025, 0.045, 0.025, 0.070, 0.200, 0.260, 0.290, 0.300, 0.300, 0.140, 0.140, 0.055],
    "forest_off": [0.030, 0.040, 0.060, 0.060, 0.085, 0.130, 0.160, 0.180, 0.190, 0.190, 0.180, 0.190, 0.120],
    "grass": [0.025, 0.030, 0.075, 0.040, 0.110, 0.270, 0.330, 0.360, 0.370, 0.370, 0.200, 0.200, 0.085],
    "dry_grass": [0.050, 0.070, 0.100, 0.120, 0.150, 0.180, 0.200, 0.220, 0.230, 0.230, 0.250, 0.250, 0.160],
    "crop": [0.020, 0.030, 0.070, 0.035, 0.100, 0.300, 0.380, 0.420, 0.430, 0.430, 0.180, 0.180, 0.070],
    "soil": [0.060, 0.080, 0.110, 0.150, 0.180, 0.200, 0.220, 0.240, 0.250, 0.260, 0.260, 0.260, 0.190],
    "urban": [0.080, 0.090, 0.100, 0.110, 0.120, 0.130, 0.140, 0.150, 0.155, 0.160, 0.170, 0.180, 0.160],
    "snow": [0.700, 0.700, 0.680, 0.660, 0.640, 0.620, 0.600, 0.580, 0.570, 0.500, 0.060, 0.060, 0.040],
}
# What suspended sediment adds to water (at most): green and red, hardly any NIR.
_SEDIMENT = np.array([0.010, 0.015, 0.030, 0.030, 0.020, 0.010, 0.006, 0.004, 0.003, 0.002, 0.0, 0.0, 0.0],
                     np.float32)
# Per class: the spectrum at full green-vegetation fraction and at zero.
_GREEN = np.array([_SPECTRA[k] for k in (  # in the order of LAND_COVER
    "water", "forest_on", "grass", "crop", "grass", "grass", "snow",
)], np.float32)
_BROWN = np.array([_SPECTRA[k] for k in (
    "water", "forest_off", "dry_grass", "soil", "soil", "urban", "snow",
)], np.float32)

# Atmosphere: TOA = path * aerosol + transmittance * surface (Rayleigh and aerosol path radiance make the
# blue bands bright; water vapour absorbs B9 and almost all of B10, which is why B10 sees only high clouds).
_PATH = np.array([0.085, 0.060, 0.038, 0.024, 0.019, 0.014, 0.012, 0.009, 0.008, 0.004, 0.0008, 0.003, 0.002],
                 np.float32)
_TRANSMITTANCE = np.array([0.75, 0.80, 0.85, 0.88, 0.88, 0.90, 0.90, 0.90, 0.90, 0.35, 0.012, 0.92, 0.90],
                          np.float32)
# Share of the ground irradiance coming straight from the sun (what a cloud shadow removes); the
# diffuse sky light that remains in a shadow is bluish, so shadows darken NIR and SWIR most.
_DIRECT = np.array([0.55, 0.60, 0.68, 0.74, 0.77, 0.80, 0.82, 0.84, 0.85, 0.85, 0.85, 0.90, 0.92], np.float32)
# Cloud-top reflectance relative to its blue brightness; B10 is set per cloud (cloud-top height). Thick clouds of
# the real SEN12MS-CR patches are brighter in red, NIR and SWIR than in blue (benchmarks/results/realism.md).
_CLOUD = np.array([1.00, 1.00, 0.97, 1.05, 1.08, 1.10, 1.12, 1.11, 1.15, 0.66, 0.0, 0.95, 0.78], np.float32)
_CIRRUS = np.array([1.00, 1.00, 0.98, 0.97, 0.97, 0.96, 0.96, 0.95, 0.95, 0.85, 0.90, 0.80, 0.65], np.float32)

# Sentinel-1 sigma0 (dB) per class for VV and VH before terrain, moisture and vegetation terms.
_VV_DB = np.array([-25.0, -7.5, -12.0, -13.0, -13.0, -5.0, -14.0], np.float32)
_VH_DB = np.array([-30.0, -13.5, -19.5, -21.0, -21.0, -12.0, -22.0], np.float32)
# Speckle as in the real SEN12MS-CR S1 patches (benchmarks/results/realism.md): GRD resampled to 10 m pixels, so
# neighbouring pixels share their speckle (correlation about 0.6) and homogeneous areas read about 12 looks. Drawn
# single-look per pixel and smoothed with this Gaussian, it has both.
_S1_LOOKS = 1.0
_S1_SPECKLE_SIGMA_PX = 0.8
_S1_NOISE_FLOOR_DB = -28.0
#: S1 is written on a grid of 1/1024 dB, far finer than speckle (dB) or the sensor's calibration (0.1 dB).
#: NumPy runs log10, power and arctan with the SIMD code the CPU offers (AVX-512, AVX2, SSE), whose results
#: differ in the last bits: computed in float64 and rounded to this grid, the written values are the same on
#: every x86-64 machine (a last-bit difference changes a value only within 1e-13 dB of a rounding boundary).
S1_DB_STEP = 1.0 / 1024.0

log = logging.getLogger(__name__)

_BIOMES = ("agricultural", "forest", "urban", "arid", "mixed", "coastal")
_BIOME_WEIGHTS = (0.32, 0.2, 0.1, 0.1, 0.18, 0.1)
_NORTHERN_GREENNESS = {"spring": 0.55, "summer": 0.95, "fall": 0.6, "winter": 0.15}
_SOLAR_DECLINATION = {"spring": 8.0, "summer": 20.0, "fall": -5.0, "winter": -20.0}
_OPPOSITE_SEASON = {"spring": "fall", "summer": "winter", "fall": "spring", "winter": "summer"}


def truth_path(root: str | Path, pid: PatchId) -> Path:
    """Where the generator's true cloud (band 1) and shadow (band 2) masks of a patch are written."""
    return Path(root) / TRUTH_DIR / pid.season / f"{pid.name}.tif"


@dataclass(frozen=True)
class _Roi:
    """What all patches of one ROI share: place, landscape and acquisition geometry."""

    lat: float
    epsg: int
    easting: float
    northing: float
    fractions: dict[str, float]
    relief_m: float
    evergreen: float
    greenness: float
    parcels: str  # "grid" or "voronoi"
    parcel_angle: float
    hedges: bool
    river_prob: float
    snowy: bool
    looks_east: bool
    aerosol: float


def _seed_entropy(seed: int) -> int:
    return int(seed) % (2**63)


def _season_index(season: str) -> int:
    return list(SEASONS.values()).index(season_dir(season))


@lru_cache(maxsize=512)
def _roi(season: str, roi: int, seed: int) -> _Roi:
    """The ROI-level parameters, from a random stream of (seed, season, ROI) only."""
    rng = np.random.default_rng([_seed_entropy(seed), 1, _season_index(season), roi])
    short = season_name(season)
    lat = float(rng.uniform(-45.0, 65.0))
    lon = float(rng.uniform(-175.0, 175.0))
    zone = int((lon + 180.0) // 6.0) + 1
    epsg = (32600 if lat >= 0 else 32700) + zone
    easting = float(np.round(rng.uniform(250_000, 650_000), -1))
    northing = float(np.round(lat * 110_900.0 + (0.0 if lat >= 0 else 10_000_000.0), -1))
    biome = str(rng.choice(_BIOMES, p=_BIOME_WEIGHTS))
    u = rng.uniform
    fractions = {
        "agricultural": dict(agri=u(0.5, 0.8), forest=u(0.05, 0.2), water=u(0.0, 0.05), urban=u(0.02, 0.08),
                             bare=u(0.0, 0.05)),
        "forest": dict(agri=u(0.0, 0.2), forest=u(0.5, 0.85), water=u(0.0, 0.08), urban=u(0.0, 0.03),
                       bare=u(0.0, 0.03)),
        "urban": dict(agri=u(0.05, 0.2), forest=u(0.05, 0.15), water=u(0.0, 0.1), urban=u(0.3, 0.6),
                      bare=u(0.0, 0.05)),
        "arid": dict(agri=u(0.0, 0.15), forest=0.0, water=u(0.0, 0.02), urban=u(0.0, 0.05), bare=u(0.5, 0.9)),
        "mixed": dict(agri=u(0.15, 0.4), forest=u(0.15, 0.35), water=u(0.02, 0.1), urban=u(0.03, 0.12),
                      bare=u(0.0, 0.1)),
        "coastal": dict(agri=u(0.1, 0.3), forest=u(0.05, 0.2), water=u(0.2, 0.5), urban=u(0.05, 0.15),
                        bare=u(0.0, 0.05)),
    }[biome]
    relief_m = float(rng.choice([u(5, 30), u(40, 200), u(300, 900)], p=[0.5, 0.35, 0.15]))
    if abs(lat) < 20.0:
        greenness = 0.8
    else:
        greenness = _NORTHERN_GREENNESS[short if lat >= 0 else _OPPOSITE_SEASON[short]]
    if biome == "arid":
        greenness *= 0.4
    # SEN12MS-CR "winter" is December to February: snow only in cold northern ROIs.
    snowy = short == "winter" and lat > 38.0 and rng.random() < 0.75
    return _Roi(
        lat=lat, epsg=epsg, easting=easting, northing=northing,
        fractions={k: float(v) for k, v in fractions.items()}, relief_m=relief_m,
        evergreen=float(u(0.0, 1.0)), greenness=float(greenness),
        parcels="grid" if rng.random() < 0.6 else "voronoi", parcel_angle=float(u(0.0, math.pi)),
        hedges=bool(rng.random() < 0.4), river_prob=float(u(0.0, 0.6)), snowy=bool(snowy),
        looks_east=bool(rng.random() < 0.5), aerosol=float(u(0.7, 1.4)),
    )


def patch_georeference(pid: PatchId, patch_size: int = 256, seed: int = 0) -> tuple[CRS, Affine]:
    """UTM CRS and 10 m geotransform of a synthetic patch; patches of a ROI tile a grid edge to edge."""
    roi = _roi(pid.season, pid.roi, seed)
    index = max(pid.patch - 1, 0)
    row, col = divmod(index, GRID_COLUMNS)
    step = patch_size * PIXEL_SIZE_M
    west, north = roi.easting + col * step, roi.northing - row * step
    transform = Affine(PIXEL_SIZE_M, 0.0, west, 0.0, -PIXEL_SIZE_M, north)
    return CRS.from_epsg(roi.epsg), transform


# ---------------------------------------------------------------- random fields


def _fractal_noise(rng: np.random.Generator, size: int, count: int, beta: float, scale: float,
                   anisotropy: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """``count`` periodic Gaussian fields (size x size) with a 1/f^beta power spectrum, zero mean, unit std.

    ``scale`` (px) caps the largest structures; ``anisotropy`` > 1 stretches them along ``angle``.
    """
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    along = fx * math.cos(angle) + fy * math.sin(angle)
    across = -fx * math.sin(angle) + fy * math.cos(angle)
    k2 = (along * anisotropy) ** 2 + across**2
    amplitude = ((k2 + (1.0 / scale) ** 2) ** (-beta / 4.0)).astype(np.float32)
    amplitude[0, 0] = 0.0
    shape = (count, size, size // 2 + 1)
    spectrum = np.empty(shape, np.complex64)
    spectrum.real = rng.standard_normal(shape, dtype=np.float32) * amplitude
    spectrum.imag = rng.standard_normal(shape, dtype=np.float32) * amplitude
    fields = sfft.irfft2(spectrum, s=(size, size))
    fields -= fields.mean(axis=(1, 2), keepdims=True)
    fields /= fields.std(axis=(1, 2), keepdims=True) + 1e-12
    return fields


def _top(field: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean mask of the ``fraction`` of pixels where ``field`` is highest."""
    if fraction <= 0.0:
        return np.zeros(field.shape, bool)
    if fraction >= 1.0:
        return np.ones(field.shape, bool)
    return field > np.quantile(field, 1.0 - fraction)


def _rotated(n: int, angle: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates rotated by ``angle`` and shifted randomly: (along, across)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    along = xx * math.cos(angle) + yy * math.sin(angle) + rng.uniform(0, 100)
    across = -xx * math.sin(angle) + yy * math.cos(angle)
    return along, across


def _line(n: int, rng: np.random.Generator, width: float, meander: float) -> np.ndarray:
    """A meandering linear feature (river, road) crossing the patch, ``width`` px wide."""
    along, across = _rotated(n, rng.uniform(0, math.pi), rng)
    centre = rng.uniform(across.min() + 0.2 * n, across.max() - 0.2 * n)
    wiggle = sum(
        meander * rng.uniform(0.3, 1.0)
        * np.sin(2 * math.pi * along / rng.uniform(60, 300) + rng.uniform(0, 6.3))
        for _ in range(2)
    )
    return np.abs(across - centre - wiggle) < width / 2.0


def _parcels(n: int, rng: np.random.Generator, roi: _Roi) -> np.ndarray:
    """Parcel index (0..M-1) per pixel: a rotated grid of strips or Voronoi polygons."""
    if roi.parcels == "voronoi":
        count = max(8, int(n * n / rng.uniform(900, 2500)))
        seeds = rng.uniform(-10, n + 10, (count, 2))
        yy, xx = np.mgrid[0:n, 0:n]
        _, index = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]))
        return index.reshape(n, n)
    along, across = _rotated(n, roi.parcel_angle + rng.normal(0, 0.05), rng)
    edges_along = np.cumsum(rng.uniform(15, 70, 64)) + along.min() - rng.uniform(0, 40)
    edges_across = np.cumsum(rng.uniform(10, 40, 64)) + across.min() - rng.uniform(0, 30)
    cell = np.searchsorted(edges_along, along) * 1000 + np.searchsorted(edges_across, across)
    return np.unique(cell, return_inverse=True)[1].reshape(n, n)


# ---------------------------------------------------------------- scene


@dataclass
class _Scene:
    land_cover: np.ndarray  # (n, n) uint8
    elevation: np.ndarray  # (n, n) metres
    green: np.ndarray  # (13, n, n) surface reflectance at full vegetation fraction
    brown: np.ndarray  # (13, n, n) at zero vegetation fraction
    vegetation: np.ndarray  # (n, n) green-vegetation fraction on the clear date
    vegetation_later: np.ndarray  # (n, n) on the cloudy date
    vv_db: np.ndarray  # (n, n) sigma0 before terrain and speckle
    vh_db: np.ndarray


def _scene(rng: np.random.Generator, n: int, roi: _Roi, snow: bool) -> _Scene:
    """Land cover, surface spectra and radar cross-section of one patch."""
    size = n + n // 2
    land = _fractal_noise(rng, size, 6, beta=3.0, scale=rng.uniform(80, 200))[:, :n, :n]
    fine = _fractal_noise(rng, size, 2, beta=1.8, scale=16.0)[:, :n, :n]
    snow_field, water_field, forest_field, urban_field, bare_field, agri_field = land
    # Patches of one ROI share its landscape but differ in their mix of classes.
    frac = {key: min(1.0, value * rng.lognormal(0.0, 0.35)) for key, value in roi.fractions.items()}

    # Terrain is smoother than land cover (steeper spectrum), so hills shade broadly.
    terrain = _fractal_noise(rng, size, 1, beta=4.0, scale=250.0)[0, :n, :n]
    elevation = terrain * roi.relief_m
    g = roi.greenness
    lc = np.full((n, n), GRASS, np.uint8)
    vegetation = np.clip(g * (0.85 + 0.15 * fine[0]), 0, 1)
    brightness = 1.0 + 0.05 * fine[1]
    vv_offset = np.zeros((n, n), np.float32)

    lc[_top(bare_field, frac["bare"])] = BARE
    # Fields: a region of parcels, each a crop at its own stage, a pasture or ploughed soil.
    agri = _top(agri_field, frac["agri"])
    parcel = _parcels(n, rng, roi)
    m = int(parcel.max()) + 1
    kind = rng.choice([CROP, GRASS, BARE], size=m, p=[0.7, 0.2, 0.1])
    parcel_veg = np.clip(rng.normal(g, 0.25, m), 0.0, 1.0)
    parcel_veg[kind == BARE] = rng.uniform(0.0, 0.08, int((kind == BARE).sum()))
    parcel_soil = rng.uniform(0.7, 1.3, m)
    parcel_moisture = rng.normal(0.0, 1.5, m)
    parcel_change = np.where(rng.random(m) < 0.1, rng.normal(0.0, 0.35, m), 0.0)  # harvest, emergence
    lc[agri] = np.where(kind[parcel] == BARE, CROP, kind[parcel])[agri]
    vegetation = np.where(agri, parcel_veg[parcel] * (0.95 + 0.05 * fine[0]), vegetation)
    brightness = np.where(agri, parcel_soil[parcel] * (1.0 + 0.03 * fine[1]), brightness)
    vv_offset = np.where(agri, parcel_moisture[parcel], vv_offset)
    if roi.hedges:
        edge = np.zeros((n, n), bool)
        edge[:, 1:] |= parcel[:, 1:] != parcel[:, :-1]
        edge[1:, :] |= parcel[1:, :] != parcel[:-1, :]
        edge &= agri
        lc[edge] = GRASS
        vegetation[edge] = max(g, 0.5)

    forest = _top(forest_field, frac["forest"])
    canopy = ndimage.gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), 0.8) * 2.5
    lc[forest] = FOREST
    vegetation = np.where(forest, np.clip(roi.evergreen + (1 - roi.evergreen) * g, 0, 1), vegetation)
    brightness = np.where(forest, 1.0 + 0.08 * canopy, brightness)

    urban = _top(urban_field, frac["urban"])
    # Buildings, yards and streets: blocks of a few pixels, each with its own albedo and radar return.
    cell = int(rng.integers(3, 7))
    cells = (n + cell - 1) // cell
    building_albedo = _blocks(rng.lognormal(0.0, 0.25, (cells, cells)), cell, n)
    building_vv = _blocks(rng.normal(0.0, 3.0, (cells, cells)), cell, n)
    urban_green = _blocks(rng.uniform(0.0, 0.35, (cells, cells)) * g, cell, n)
    lc[urban] = URBAN
    vegetation = np.where(urban, urban_green, vegetation)
    brightness = np.where(urban, building_albedo, brightness)
    vv_offset = np.where(urban, building_vv, vv_offset)

    if snow and roi.snowy:
        snow_cover = _top(terrain + 0.5 * snow_field + 0.2 * fine[0], rng.uniform(0.3, 1.0)) & ~forest
        lc[snow_cover] = SNOW
        brightness = np.where(snow_cover, rng.uniform(0.75, 1.0) * (1.0 + 0.04 * fine[1]), brightness)

    lakes = _top(water_field - 0.6 * terrain, frac["water"])
    if rng.random() < roi.river_prob:
        lakes |= _line(n, rng, rng.uniform(3, 12), rng.uniform(5, 40))
    for _ in range(int(rng.integers(0, 4))):
        road = _line(n, rng, rng.uniform(1.2, 2.5), rng.uniform(0, 6)) & ~lakes
        lc[road] = URBAN
        vegetation[road] = 0.0
        brightness[road] = rng.uniform(0.9, 1.4)
        vv_offset[road] = -12.0  # smooth asphalt: specular, dark to the radar
    lc[lakes] = WATER
    turbidity = rng.uniform(0.0, 1.0)
    brightness = np.where(lakes, 1.0 + 0.05 * fine[1], brightness)
    vv_offset = np.where(lakes, rng.uniform(-2.0, 3.0) + 0.8 * fine[1], vv_offset)  # wind roughens water

    vegetation = vegetation.astype(np.float32)
    vegetation[(lc == WATER) | (lc == SNOW)] = 0.0
    later = np.clip(vegetation + rng.normal(0.0, 0.03) + parcel_change[parcel] * agri, 0.0, 1.0)
    later[(lc == WATER) | (lc == SNOW)] = 0.0

    green = np.moveaxis(_GREEN[lc], -1, 0) * brightness
    brown = np.moveaxis(_BROWN[lc], -1, 0) * brightness
    is_water = lc == WATER
    brown[:, is_water] += turbidity * _SEDIMENT[:, None]
    green[:, is_water] = brown[:, is_water]

    vv_db, vh_db = _cross_section(rng, lc, vegetation, vv_offset, canopy)
    return _Scene(lc, elevation.astype(np.float32), green.astype(np.float32), brown.astype(np.float32),
                  vegetation, later.astype(np.float32), vv_db, vh_db)


def _blocks(values: np.ndarray, cell: int, n: int) -> np.ndarray:
    """Upsample a (cells, cells) array to (n, n) blocks of cell x cell pixels."""
    return np.kron(values.astype(np.float32), np.ones((cell, cell), np.float32))[:n, :n]


def _cross_section(rng: np.random.Generator, lc: np.ndarray, vegetation: np.ndarray, vv_offset: np.ndarray,
                   canopy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radar cross-section (VV, VH in dB) before terrain and speckle.

    Vegetation raises VV a little and VH a lot (volume scattering); buildings add a
    few very bright corner reflectors (double bounce).
    """
    vv_db = _VV_DB[lc] + vv_offset
    vh_db = _VH_DB[lc] + 0.6 * vv_offset
    low = (lc == GRASS) | (lc == CROP) | (lc == BARE)
    vv_db = np.where(low, vv_db + 3.0 * vegetation, vv_db)
    vh_db = np.where(low, vh_db + 7.0 * vegetation, vh_db)
    vv_db = np.where(lc == FOREST, vv_db + 0.7 * canopy, vv_db)
    vh_db = np.where(lc == FOREST, vh_db + 0.7 * canopy, vh_db)
    scatterers = (lc == URBAN) & (rng.random(lc.shape) < 0.03)
    vv_db = np.where(scatterers, vv_db + rng.uniform(5, 12, lc.shape), vv_db)
    vh_db = np.where(scatterers, vh_db + rng.uniform(3, 8, lc.shape), vh_db)
    return vv_db.astype(np.float32), vh_db.astype(np.float32)


# ---------------------------------------------------------------- sensors


def _sun(roi: _Roi, season: str, rng: np.random.Generator) -> tuple[float, float]:
    """Solar zenith and azimuth (degrees, azimuth clockwise from north) at the 10:30 overpass."""
    declination = _SOLAR_DECLINATION[season_name(season)]
    zenith = float(np.clip(abs(roi.lat - declination) + 12.0 + rng.uniform(-3, 3), 20.0, 72.0))
    azimuth = (150.0 if roi.lat >= declination else 30.0) + rng.uniform(-10, 10)
    return zenith, azimuth


def _illumination(elevation: np.ndarray, zenith: float, azimuth: float) -> np.ndarray:
    """Terrain shading: direct light on the slope relative to flat ground, plus a diffuse share."""
    dz_drow, dz_dcol = np.gradient(elevation, PIXEL_SIZE_M)
    # Unit normal of the surface in (east, north, up); rows run south.
    normal = np.stack([-dz_dcol, dz_drow, np.ones_like(elevation)])
    normal /= np.linalg.norm(normal, axis=0)
    z, a = math.radians(zenith), math.radians(azimuth)
    sun = np.array([math.sin(z) * math.sin(a), math.sin(z) * math.cos(a), math.cos(z)], np.float32)
    cos_i = np.tensordot(sun, normal, axes=1)
    return (0.15 + 0.85 * np.clip(cos_i / math.cos(z), 0.0, 2.5)).astype(np.float32)


def _toa(surface: np.ndarray, illumination: np.ndarray, aerosol: float) -> np.ndarray:
    """Top-of-atmosphere reflectance of a (13, H, W) surface reflectance under a given aerosol load."""
    return _PATH[:, None, None] * aerosol + _TRANSMITTANCE[:, None, None] * surface * illumination


def _to_dn(reflectance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur by the sensor PSF, add radiometric noise, quantise to L1C DN (uint16, 0 means no data)."""
    dn = ndimage.gaussian_filter(reflectance, sigma=(0, 0.5, 0.5))
    dn += rng.standard_normal(reflectance.shape, dtype=np.float32) * np.float32(0.0015)
    dn *= np.float32(10000.0)
    return np.clip(np.rint(dn), 1, 65535).astype(np.uint16)


def _sar(scene: _Scene, roi: _Roi, rng: np.random.Generator) -> np.ndarray:
    """Sentinel-1 VV/VH in dB: class cross-section, local-incidence term, resolution blur, speckle."""
    n = scene.land_cover.shape[0]
    incidence = math.radians(rng.uniform(32.0, 44.0))
    # Everything in float64, rounded to S1_DB_STEP at the end: the file is the same whatever SIMD the CPU has.
    elevation = scene.elevation.astype(np.float64)
    # Slope rising away from the sensor faces it (the radar looks east or west, across the track).
    facing = np.gradient(elevation, PIXEL_SIZE_M, axis=1) * (1.0 if roi.looks_east else -1.0)
    local = np.clip(incidence - np.arctan(facing), math.radians(10), math.radians(80))
    # Slopes facing the radar are brighter (more area per pixel, lower local incidence).
    terrain = 10.0 * np.log10(math.sin(incidence) / np.sin(local)) - 0.12 * np.degrees(local - incidence)
    floor = 10.0 ** (_S1_NOISE_FLOOR_DB / 10.0)
    bands = []
    for sigma_db in (scene.vv_db, scene.vh_db):
        power = ndimage.gaussian_filter(10.0 ** ((sigma_db.astype(np.float64) + terrain) / 10.0), 0.7) + floor
        power = power * ndimage.gaussian_filter(rng.gamma(_S1_LOOKS, 1.0 / _S1_LOOKS, (n, n)), _S1_SPECKLE_SIGMA_PX)
        bands.append(10.0 * np.log10(power))
    s1 = (np.round(np.stack(bands) / S1_DB_STEP) * S1_DB_STEP).astype(np.float32)
    # Real patches sometimes hold NaN: a swath edge or a few bad pixels.
    draw = rng.random()
    if draw < 0.05:
        width = int(rng.integers(1, 6))
        s1[:, :, :width] = np.nan
    elif draw < 0.10:
        rows, cols = rng.integers(0, n, (2, int(rng.integers(1, 6))))
        s1[:, rows, cols] = np.nan
    return s1


def _clouds(rng: np.random.Generator, n: int, zenith: float, azimuth: float) -> dict[str, np.ndarray]:
    """Cloud opacity, cloud-top reflectance and shadow strength fields for one cloudy acquisition.

    Coverage (fraction of pixels whose opacity reaches :data:`CLOUD_TRUTH_OPACITY`) is drawn per
    patch: about one patch in eight is clear, one in eight overcast, the rest anywhere between.
    """
    pad = n // 4
    size = n + 2 * pad
    crop = (slice(pad, pad + n), slice(pad, pad + n))
    empty = np.zeros((n, n), np.float32)
    regime = rng.random()
    if regime < 0.12:
        return {"opacity": empty, "reflectance": np.zeros((S2_CHANNELS, n, n), np.float32), "shadow": empty}
    coverage = 1.0 if regime < 0.24 else float(rng.uniform(0.03, 0.97))
    thin = rng.random() < 0.3  # a thin, semi-transparent cloud deck instead of opaque clouds
    max_opacity = rng.uniform(0.5, 0.8) if thin else 1.0
    # float64 from here: exp and tanh then agree to the last bits on every CPU (see S1_DB_STEP).
    density = _fractal_noise(rng, size, 1, beta=rng.uniform(2.6, 3.4), scale=rng.uniform(60, 250))[0]
    density = density.astype(np.float64)
    inner = density[crop]
    threshold = float(np.quantile(inner, 1.0 - coverage)) if coverage < 1.0 else float(inner.min()) - 0.5
    softness = rng.uniform(0.3, 1.2)  # width of the cloud edge, in std of the density field
    steepness = 3.0
    # Shift so that opacity equals the truth level exactly on the threshold contour.
    offset = -math.log(1.0 - CLOUD_TRUTH_OPACITY / max_opacity) / steepness
    thickness = np.maximum((density - threshold) / softness + offset, 0.0)
    opacity = max_opacity * (1.0 - np.exp(-steepness * thickness))
    # Haze: real clouds thin out over tens of metres, and a skirt of haze reaches past their visible edge
    # (at 1-12 px outside the detected cloud, 13-4 % of its brightness: benchmarks/results/realism.md).
    haze = ndimage.gaussian_filter(opacity, rng.uniform(3.0, 8.0)) * rng.uniform(0.1, 0.3)
    haze[haze < HAZE_FLOOR] = 0.0  # beyond the skirt the air is clear, not hazy by a trillionth
    opacity = 1.0 - (1.0 - opacity) * (1.0 - haze)

    # Cloud-top brightness: brighter where thicker, textured, lit on the sunward flanks.
    texture = _fractal_noise(rng, size, 1, beta=2.2, scale=24.0)[0].astype(np.float64)
    gy, gx = np.gradient(density)
    a = math.radians(azimuth)
    lit = np.tanh(4.0 * (gx * math.sin(a) - gy * math.cos(a)))
    brightness = (rng.uniform(0.55, 0.9) * (0.75 + 0.25 * np.tanh(thickness))
                  * (1 + 0.08 * texture + 0.06 * lit))
    spectrum = _CLOUD.copy()
    spectrum[10] = rng.uniform(0.015, 0.06)  # cirrus band: little for the low, thick clouds (cirrus: below)
    reflectance = spectrum[:, None, None] * brightness[crop]

    total = opacity[crop].astype(np.float32)
    if rng.random() < 0.3:
        # Cirrus: thin, streaky, high (very bright in B10 relative to the visible).
        streaks = _fractal_noise(rng, size, 1, beta=3.0, scale=150.0, anisotropy=5.0,
                                 angle=rng.uniform(0, math.pi))[0][crop]
        cirrus = rng.uniform(0.15, 0.45) * np.clip((streaks - rng.uniform(-0.5, 1.0)) / 1.5, 0.0, 1.0)
        cirrus_brightness = rng.uniform(0.25, 0.4)
        both = 1.0 - (1.0 - total) * (1.0 - cirrus)
        weight = np.where(both > 0, cirrus / np.maximum(both, 1e-6), 0.0)
        reflectance = reflectance * (1.0 - weight) + _CIRRUS[:, None, None] * cirrus_brightness * weight
        total = both.astype(np.float32)

    # Shadow: the cloud field projected away from the sun (thin clouds cast faint shadows), soft-edged.
    height = rng.uniform(400.0, 1500.0)
    distance = min(height * math.tan(math.radians(zenith)) / PIXEL_SIZE_M, pad - 2)
    d_col = -distance * math.sin(a)
    d_row = distance * math.cos(a)
    cast = np.roll(opacity, (int(round(d_row)), int(round(d_col))), axis=(0, 1))
    shadow = ndimage.gaussian_filter(cast, 1.5)[crop] * rng.uniform(0.75, 0.95)
    return {"opacity": total, "reflectance": reflectance.astype(np.float32),
            "shadow": shadow.astype(np.float32)}


# ---------------------------------------------------------------- public API


def _patch_rng(pid: PatchId, seed: int) -> np.random.Generator:
    return np.random.default_rng([_seed_entropy(seed), 2, _season_index(pid.season), pid.roi, pid.patch])


def synth_patch(
    pid: PatchId, patch_size: int = 256, seed: int = 0, snow: bool = True
) -> dict[str, np.ndarray]:
    """Generate one synthetic triplet in memory, without touching the disk.

    Returns ``s1`` (2, H, W) float32 dB (VV, VH; may hold NaN), ``s2`` (13, H, W) uint16 DN
    (clear target), ``s2_cloudy`` (13, H, W) uint16 DN, ``cloud`` and ``shadow`` (H, W) uint8
    truth masks, ``land_cover`` (H, W) uint8 (indices into :data:`LAND_COVER`) and ``opacity``
    (H, W) float32 total cloud opacity. Deterministic for (seed, season, ROI, patch).
    """
    n = int(patch_size)
    roi = _roi(pid.season, pid.roi, seed)
    rng = _patch_rng(pid, seed)
    scene = _scene(rng, n, roi, snow)
    zenith, azimuth = _sun(roi, pid.season, rng)
    illumination = _illumination(scene.elevation, zenith, azimuth)

    clear_surface = scene.brown + scene.vegetation * (scene.green - scene.brown)
    clear = _toa(clear_surface, illumination, roi.aerosol * rng.uniform(0.85, 1.15))

    # The cloudy acquisition: same ground a few days apart (phenology, calibration, haze differ).
    later_surface = scene.brown + scene.vegetation_later * (scene.green - scene.brown)
    later_surface *= (1.0 + rng.normal(0.0, 0.015, S2_CHANNELS)).astype(np.float32)[:, None, None]
    clouds = _clouds(rng, n, zenith, azimuth)
    shade = 1.0 - clouds["shadow"][None] * _DIRECT[:, None, None]
    ground = _toa(later_surface * shade, illumination, roi.aerosol * rng.uniform(0.85, 1.15))
    opacity = clouds["opacity"][None]
    cloudy = ground * (1.0 - opacity) + clouds["reflectance"] * opacity

    cloud = clouds["opacity"] >= CLOUD_TRUTH_OPACITY
    shadow = (clouds["shadow"] >= SHADOW_TRUTH_DARKENING) & ~cloud
    return {
        "s1": _sar(scene, roi, rng),
        "s2": _to_dn(clear.astype(np.float32), rng),
        "s2_cloudy": _to_dn(cloudy.astype(np.float32), rng),
        "cloud": cloud.astype(np.uint8),
        "shadow": shadow.astype(np.uint8),
        "land_cover": scene.land_cover,
        "opacity": clouds["opacity"],
    }


def sample_patch_ids(synth: SynthConfig, seasons: list[str] | None = None) -> dict[str, list[PatchId]]:
    """The patches of the synthetic sample per split, ROIs drawn from the official split lists.

    For each split, ``synth.rois[split]`` ROIs of the official list (restricted to ``seasons``)
    are chosen with the seed, taking seasons in turn so the sample spans them; each gets
    ``synth.patches_per_roi`` patches numbered from 1.
    """
    wanted = {season_dir(s) for s in (seasons or list(SEASONS))}
    splits = official_splits()
    chosen: dict[str, list[PatchId]] = {}
    for split_index, split in enumerate(SPLITS):
        rng = np.random.default_rng([_seed_entropy(synth.seed), 3, split_index])
        by_season: dict[str, list[int]] = {}
        for key in sorted(splits[split]):
            season, roi = parse_roi_key(key)
            if season in wanted:
                by_season.setdefault(season, []).append(roi)
        queues = {season: list(rng.permutation(sorted(rois))) for season, rois in sorted(by_season.items())}
        order = list(rng.permutation(sorted(queues)))
        picked: list[tuple[str, int]] = []
        target = int(synth.rois.get(split, 0))
        while len(picked) < target and any(queues.values()):
            for season in order:
                if queues[season] and len(picked) < target:
                    picked.append((str(season), int(queues[season].pop(0))))
        patches = range(1, synth.patches_per_roi + 1)
        chosen[split] = sorted(PatchId(season, roi, patch) for season, roi in picked for patch in patches)
    return chosen


def write_synthetic_patch(root: str | Path, pid: PatchId, patch_size: int = 256, seed: int = 0,
                          snow: bool = True) -> bool:
    """Write one triplet and its truth masks under ``root``; complete files already present are kept.

    Returns True if anything was written. Every file is written atomically. A file that is
    present but cut short or unreadable (:func:`sscr.data.io.why_incomplete`) is written
    again, and said so: the sample is deterministic, so it comes back byte for byte.
    """
    root = Path(root)
    targets = {modality: root / pid.relpath(modality) for modality in ("s1", "s2", "s2_cloudy")}
    targets["truth"] = truth_path(root, pid)
    missing = []
    for key, path in targets.items():
        if not path.exists() and not path.is_symlink():
            missing.append(key)
            continue
        problem = why_incomplete(path)
        if problem:
            log.warning("sscr: %s %s; re-synthesising it", path, problem)
            missing.append(key)
    if not missing:
        return False
    arrays = synth_patch(pid, patch_size, seed, snow)
    crs, transform = patch_georeference(pid, patch_size, seed)
    arrays["truth"] = np.stack([arrays["cloud"], arrays["shadow"]])
    names = {"s1": S1_BANDS, "s2": S2_BANDS, "s2_cloudy": S2_BANDS, "truth": TRUTH_BANDS}
    for key in missing:
        write_raster(targets[key], arrays[key], crs, transform, band_names=names[key])
    return True


def write_synthetic_sample(
    root: str | Path,
    synth: SynthConfig,
    patch_size: int = 256,
    seasons: list[str] | None = None,
    progress: bool = True,
) -> list[PatchId]:
    """Write the synthetic SEN12MS-CR sample under ``root`` in the real layout; returns its patch ids.

    Resumable: a patch whose S1, S2 and S2-cloudy files (and truth mask) exist is skipped.
    """
    pids = sorted(pid for split_pids in sample_patch_ids(synth, seasons).values() for pid in split_pids)
    for pid in tqdm(pids, desc="synthetic sample", unit="patch", disable=not progress):
        write_synthetic_patch(root, pid, patch_size, synth.seed, synth.snow)
    return pids
