"""WSGI entry point: the module `webassets.wsgi:application`, or this file as a mod_wsgi script."""

import logging
import os
import sys
import threading

if __package__:
    from . import config
else:
    # mod_wsgi's WSGIScriptAlias (like `python wsgi.py`) runs this file as a script, outside
    # its package, where `from . import` fails. Inside a webassets package, import that very
    # package by its path; a copy elsewhere uses the installed one. Either way the script
    # serves the package's `application` (one app per settings file, however it is loaded).
    _HERE = os.path.dirname(os.path.realpath(__file__))
    _INSIDE = os.path.isfile(os.path.join(_HERE, "__init__.py"))
    if _INSIDE:
        sys.path.insert(0, os.path.dirname(_HERE))
    try:
        import webassets
        from webassets import config, wsgi as _package_wsgi
    except ImportError as ex:
        raise ImportError("%s was loaded as a script file, but the webassets package cannot be "
                          "imported (%s): point WSGIScriptAlias at the wsgi.py inside an "
                          "installed or checked-out webassets" % (__file__, ex)) from ex
    finally:
        if _INSIDE:
            sys.path.remove(os.path.dirname(_HERE))
    if _INSIDE and os.path.dirname(os.path.realpath(webassets.__file__)) != _HERE:
        raise ImportError("%s was loaded as a script file, but this process had imported "
                          "webassets from %s already: one process serves one copy"
                          % (__file__, os.path.dirname(webassets.__file__)))

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_apps = {}


def _app_for(settings_path):
    """Build (once per settings file) the app; thread-safe."""
    with _lock:
        app = _apps.get(settings_path)
        if app is None:
            from .app import create_app

            app = create_app(config.load(settings_path or None))
            app.store.prepare()
            _apps[settings_path] = app
            logger.info("webassets loaded settings from %s", settings_path or "the environment")
        return app


def application(environ, start_response):
    """Serve a request; settings come from WEBASSETS_SETTINGS (environ first, then os.environ).

    mod_wsgi's `SetEnv WEBASSETS_SETTINGS /etc/webassets/settings.py` arrives
    in the request environ, not in os.environ.
    """
    path = environ.get("WEBASSETS_SETTINGS") or os.environ.get("WEBASSETS_SETTINGS", "")
    return _app_for(path)(environ, start_response)


if not __package__:
    application = _package_wsgi.application  # noqa: F811  (the package's, see the top)
