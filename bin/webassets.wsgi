"""mod_wsgi script file: `WSGIScriptAlias / /path/to/webassets/bin/webassets.wsgi`.

Settings come from `SetEnv WEBASSETS_SETTINGS /etc/webassets/settings.py` (or the
process environment). Uses the installed webassets, else the one in this checkout.
"""

import importlib.util
import os
import sys

if importlib.util.find_spec("webassets") is None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

from webassets.wsgi import application  # noqa: E402  (after the path fix above)

__all__ = ["application"]
