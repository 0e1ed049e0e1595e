"""Region and industry codes: the one place their forms are written.

Regions are GB/T 2260 administrative division codes: ``33`` a province, ``3306`` a city, ``330602``
a county, so a bureau's scope is a code prefix of 2, 4 or 6 digits; an enterprise is in one county
(6 digits). Industries are GB/T 4754-2017 codes: a division of 2 digits (``17``), a group of 3, a
class of 4; an industry scope is such a code as a prefix.

``[0-9]``, not ``\\d``: Python's ``\\d`` also matches other scripts' digits (３, ٣), which are not codes.
"""

from __future__ import annotations

import re

REGION_CODE_PATTERN = r"^[0-9]{6}$"  # an enterprise's county
REGION_PREFIX_PATTERN = r"^[0-9]{2}([0-9]{2}){0,2}$"  # 33 province, 3306 city, 330602 county
INDUSTRY_CODE_PATTERN = r"^[0-9]{2}([0-9]{1,2})?$"  # 17 division, 171 group, 1711 class (also as a prefix)

REGION_PREFIX = re.compile(REGION_PREFIX_PATTERN)
