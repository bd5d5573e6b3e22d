"""WSGI entry point for Apache mod_wsgi, uWSGI, gunicorn: `webassets.wsgi:application`."""

import logging
import os
import threading

from . import config

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_apps = {}


def _app_for(settings_path):
    """Build (once per settings file) the app; thread-safe."""
    with _lock:
        app = _apps.get(settings_path)
        if app is None:
            from .app import create_app

            settings = config.load(settings_path or None)
            os.makedirs(settings.BASE_DIR, exist_ok=True)
            app = _apps[settings_path] = create_app(settings)
            logger.info("webassets loaded settings from %s", settings_path or "the environment")
        return app


def application(environ, start_response):
    """Serve a request; settings come from WEBASSETS_SETTINGS (environ first, then os.environ).

    mod_wsgi's `SetEnv WEBASSETS_SETTINGS /etc/webassets/settings.py` arrives
    in the request environ, not in os.environ.
    """
    path = environ.get("WEBASSETS_SETTINGS") or os.environ.get("WEBASSETS_SETTINGS", "")
    return _app_for(path)(environ, start_response)
