"""Natural Earth data on this machine: where it is, and land polygons built from its coastlines.

The maps' coastlines (`plots`) and the `land` and `sea` regions (`aggregation`) read the
1:110m Natural Earth coastlines from a local cartopy data folder (`cartopy_data_dir`);
nothing is ever downloaded.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import numpy as np
import shapely
from wxens.verification.errors import ScoreError

COASTLINE_SHAPEFILE = Path("shapefiles/natural_earth/physical/ne_110m_coastline.shp")
"""The 1:110m coastlines, relative to a cartopy data folder."""

ANTIMERIDIAN_TOLERANCE = 1e-4
"""How close to +-180 degrees longitude (degrees) a coastline's open end must be to be closed
along the antimeridian."""


def cartopy_data_dir() -> Path:
    """Where the Natural Earth data is: `$WXENS_CARTOPY_DATA` (a cartopy data folder of the
    user's), else the sample data's `$WXENS_SAMPLE_DATA/cartopy_data`, else
    `../shared/data/cartopy_data` beside the repository root."""
    if os.environ.get("WXENS_CARTOPY_DATA"):
        return Path(os.environ["WXENS_CARTOPY_DATA"])
    sample_data = os.environ.get("WXENS_SAMPLE_DATA")
    if sample_data:
        return Path(sample_data) / "cartopy_data"
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "cartopy_data"


def coastline_data_available() -> bool:
    """Whether `cartopy_data_dir` holds the 110 m coastlines."""
    return (cartopy_data_dir() / COASTLINE_SHAPEFILE).is_file()


def land_polygons() -> shapely.MultiPolygon:
    """The land of the 110 m Natural Earth coastlines in `cartopy_data_dir`, as polygons in
    longitude (-180 to 180) and latitude (degrees), built once per folder.

    Raises ScoreError naming the folder, and the variables that set it, when the coastlines
    are not there.
    """
    folder = cartopy_data_dir()
    if not coastline_data_available():
        raise ScoreError(
            f"no Natural Earth coastlines under {folder} for the land and sea regions (set"
            " WXENS_CARTOPY_DATA to a cartopy data folder, or WXENS_SAMPLE_DATA to the sample"
            " data)"
        )
    return _land_from_coastlines(folder / COASTLINE_SHAPEFILE)


@cache
def _land_from_coastlines(path: Path) -> shapely.MultiPolygon:
    """Land polygons from a shapefile of coastlines (lines, land not marked).

    Natural Earth ships land polygons separately; the sample data holds only the coastlines,
    so the land is rebuilt from them here. Shapely's `polygonize` makes the faces that closed
    rings bound but does not say which side of a coastline is land, and at 1:110m some
    coastlines are not closed, which no library repairs; so, by hand:

    1. the open lines are joined where their ends meet (`shapely.line_merge`);
    2. a line still open with both ends on the antimeridian is closed along it: when both ends
       are on the same side (+-180), straight between them (Chukotka, Wrangel Island and Fiji,
       cut at 180 degrees; the rest of Eurasia); when on opposite sides, the line goes all
       the way round a pole and is closed along that pole's edge of the lon/lat plane
       (Antarctica, whose coastline runs from -180 to 180 degrees around the south pole);
    3. other open lines are dropped (at 1:110m, two short pieces lying on other coastlines:
       the Black Sea coast near Sochi and a stub of Chukotka);
    4. the faces of the rings (`shapely.polygonize`) are land when inside an odd number of
       rings (even-odd rule: the Caspian Sea, a ring inside Eurasia's, is sea).

    Lakes are not in the coastline file, so they count as land.
    """
    from cartopy.io.shapereader import Reader

    lines = shapely.get_parts(np.array(list(Reader(path).geometries()), dtype=object))
    closed = shapely.is_closed(lines)
    rings = list(lines[closed])
    merged = shapely.get_parts(shapely.line_merge(shapely.multilinestrings(lines[~closed])))
    for line in merged:
        coords = np.asarray(line.coords)
        (x_start, y_start), (x_end, _) = coords[0], coords[-1]
        if line.is_closed:
            rings.append(line)
        elif all(abs(abs(x) - 180) < ANTIMERIDIAN_TOLERANCE for x in (x_start, x_end)):
            if np.sign(x_start) != np.sign(x_end):
                pole = -90.0 if y_start < 0 else 90.0
                coords = np.vstack([coords, [[x_end, pole], [x_start, pole]]])
            rings.append(shapely.LineString(np.vstack([coords, coords[:1]])))
    faces = shapely.get_parts(shapely.polygonize(shapely.get_parts(shapely.unary_union(rings))))
    ring_polygons = np.array([shapely.Polygon(ring.coords) for ring in rings], dtype=object)
    inside = shapely.contains(ring_polygons[:, None], shapely.point_on_surface(faces)[None, :])
    return shapely.MultiPolygon(list(faces[inside.sum(axis=0) % 2 == 1]))
