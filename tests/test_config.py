"""Tests for webassets.config: the reference settings.py, env overrides, validation."""

import os
import re
import sys
import types

import pytest

from webassets import config

REFERENCE_SETTINGS = '''
# Sample Specify web asset server settings.
DEBUG = True
KEY = 'test_attachment_key'
TIME_TOLERANCE = 150
REQUIRE_KEY_FOR_GET = False
ALLOW_STATIC_FILE_ACCESS = True
HOST = 'localhost'
PORT = 8080
SERVER_NAME = HOST
SERVER_PORT = PORT
DEVELOPMENT_PORT = PORT
COLLECTION_DIRS = None
BASE_DIR = '/home/specify/attachments/'
THUMB_DIR = 'thumbnails'
ORIG_DIR = 'originals'
CAN_THUMBNAIL = {'image/jpeg', 'image/gif', 'image/png', 'image/tiff', 'application/pdf'}
SERVER = 'wsgiref'
'''

# What specify/web-asset-server's Dockerfile appends to settings.py.
DOCKER_LINES = '''
import os
KEY = os.environ['ATTACHMENT_KEY']
SERVER_NAME = os.environ['SERVER_NAME']
SERVER_PORT = int(os.getenv('SERVER_PORT', 8080))
DEBUG = os.getenv('DEBUG_MODE', 'false').lower() == 'true'
SERVER = 'paste'
'''


def write(tmp_path, text, name="settings.py"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_reference_settings_load_unchanged(tmp_path):
    settings = config.load(write(tmp_path, REFERENCE_SETTINGS), environ={})
    assert settings.KEY == "test_attachment_key"
    assert settings.keys == ("test_attachment_key",)
    assert settings.public_name == "localhost" and settings.public_port == 8080
    assert settings.BASE_DIR == "/home/specify/attachments"
    assert "application/pdf" in settings.CAN_THUMBNAIL


def test_docker_lines_read_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTACHMENT_KEY", "secret")
    monkeypatch.setenv("SERVER_NAME", "host.docker.internal")
    monkeypatch.setenv("SERVER_PORT", "80")
    path = write(tmp_path, REFERENCE_SETTINGS + DOCKER_LINES)
    settings = config.load(path)
    assert (settings.KEY, settings.SERVER_NAME, settings.SERVER_PORT) == (
        "secret", "host.docker.internal", 80)


def test_docker_lines_without_the_variable_name_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("ATTACHMENT_KEY", raising=False)
    path = write(tmp_path, REFERENCE_SETTINGS + DOCKER_LINES)
    with pytest.raises(config.ConfigError, match="settings.py.*ATTACHMENT_KEY"):
        config.load(path)


def test_secret_key_module_beside_settings(tmp_path):
    write(tmp_path, "KEY = 'from-sibling'\n", "secret_key.py")
    settings = config.load(write(tmp_path, "from secret_key import KEY\n"), environ={})
    assert settings.KEY == "from-sibling"


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, REFERENCE_SETTINGS)
    environ = {"WEBASSETS_PORT": "9000", "ATTACHMENT_KEY": "k2", "DEBUG_MODE": "false",
               "WEBASSETS_COLLECTION_DIRS": '{"KUFish": "fish"}', "WEBASSETS_TIME_TOLERANCE": "None",
               "WEBASSETS_THUMBNAIL_SIZES": "123,200", "WEBASSETS_PUBLIC_URL": "https://a.example.org/x/"}
    settings = config.load(path, environ=environ)
    assert settings.PORT == 9000 and settings.KEY == "k2" and settings.DEBUG is False
    assert settings.COLLECTION_DIRS == {"KUFish": "fish"}
    assert settings.TIME_TOLERANCE is None
    assert settings.THUMBNAIL_SIZES == (123, 200)
    assert settings.PUBLIC_URL == "https://a.example.org/x"
    assert settings.SERVER_PORT == 8080  # the file's SERVER_PORT = PORT was evaluated in the file


def test_settings_path_from_environment(tmp_path):
    path = write(tmp_path, "PORT = 1234\n")
    assert config.load(environ={"WEBASSETS_SETTINGS": path}).PORT == 1234


def test_key_list_for_rotation(tmp_path):
    settings = config.load(write(tmp_path, "KEY = ['new', 'old']\n"), environ={})
    assert settings.keys == ("new", "old")
    assert config.load(environ={"WEBASSETS_KEY": "new,old"}).keys == ("new", "old")
    assert config.load(environ={"WEBASSETS_KEY": "None"}).keys == ()


def test_server_name_defaults_to_host():
    settings = config.from_mapping({"HOST": "assets.example.org", "PORT": 81})
    assert (settings.public_name, settings.public_port) == ("assets.example.org", 81)


@pytest.mark.parametrize("name, value, reason", [
    ("PORT", "abc", "integer"),
    ("PORT", 70000, "integer"),
    ("TIME_TOLERANCE", -1, "integer"),
    ("REQUIRE_KEY_FOR_GET", "maybe", "True or False"),
    ("KEY", "", "non-empty"),
    ("KEY", 42, "string"),
    ("COLLECTION_DIRS", {"a": "../escape"}, "relative"),
    ("COLLECTION_DIRS", ["a"], "dict"),
    ("THUMB_DIR", "/abs", "relative"),
    ("CAN_THUMBNAIL", {"jpeg"}, "MIME"),
    ("PUBLIC_URL", "ftp://x", "http"),
    ("PUBLIC_URL", "https://x/?q=1", "query"),
    ("MAX_SCALE", 0, "integer"),
    ("THUMBNAIL_SIZES", [], "list"),
])
def test_invalid_values_name_file_setting_and_reason(tmp_path, name, value, reason):
    path = write(tmp_path, "%s = %r\n" % (name, value))
    with pytest.raises(config.ConfigError) as info:
        config.load(path, environ={})
    message = str(info.value)
    assert path in message and name in message and reason in message


def test_bad_environment_value_names_the_environment():
    with pytest.raises(config.ConfigError, match="Invalid PORT in the environment"):
        config.load(environ={"WEBASSETS_PORT": "x"})


def test_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, "KEY = \n")
    with pytest.raises(config.ConfigError, match="settings.py"):
        config.load(path, environ={})


def test_missing_file(tmp_path):
    with pytest.raises(config.ConfigError, match="nope.py"):
        config.load(str(tmp_path / "nope.py"), environ={})


def test_unknown_names_are_ignored(tmp_path, caplog):
    settings = config.load(write(tmp_path, "IPADDR = '0.0.0.0'\nPORT = 8081\n"), environ={})
    assert settings.PORT == 8081
    assert "IPADDR" in caplog.text


# ---------------------------------------------------------------------------- the schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_settings_table():
    """Return the names cell of each row of README's settings table (under '## Settings')."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        section = handle.read().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line.split("|")[1] for line in section.splitlines()
                     if line.startswith("| `"))


def test_readme_and_example_describe_every_setting():
    table = readme_settings_table()
    with open(os.path.join(ROOT, "etc", "settings.py.example"), encoding="utf-8") as handle:
        example = handle.read()
    names = [setting.name for setting in config.SCHEMA]
    assert [name for name in names if "`%s`" % name not in table] == []
    assert [name for name in names if not re.search(r"(?m)^%s = " % name, example)] == []
    # ... and nothing else: no stale names either.
    assert set(re.findall(r"`([A-Z][A-Z_]+)`", table)) <= set(names)
    assert set(re.findall(r"(?m)^([A-Z][A-Z_]+) = ", example)) <= set(names)


def test_schema_is_the_settings():
    assert config.Settings._fields == tuple(setting.name for setting in config.SCHEMA)
    assert config.Settings() == tuple(setting.default for setting in config.SCHEMA)
    assert all(setting.help and "\n" not in setting.help for setting in config.SCHEMA)


def test_thumbnail_workers_share_the_cpus_among_the_processes(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert config.Settings(PROCESSES=3).thumbnail_workers == 3
    assert config.Settings(PROCESSES=1).thumbnail_workers == 8
    assert config.Settings(PROCESSES=3, THUMBNAIL_WORKERS=5).thumbnail_workers == 5
    # Under mod_wsgi, each daemon process of the group gets its share, whatever PROCESSES says.
    monkeypatch.setitem(sys.modules, "mod_wsgi", types.SimpleNamespace(maximum_processes=2))
    assert config.Settings().processes == 2 and config.Settings().thumbnail_workers == 4


def test_public_base():
    assert config.Settings().public_base("/assets") == "http://localhost:8080/assets"
    settings = config.from_mapping({"PUBLIC_URL": "https://a.example.org/x/"})
    assert settings.public_base("/ignored") == "https://a.example.org/x"


def test_overrides_are_checked_like_the_file():
    settings = config.override(config.Settings(), {"PORT": 8081}, "the command line")
    assert settings.PORT == 8081
    with pytest.raises(config.ConfigError, match="Invalid PORT in the command line"):
        config.override(settings, {"PORT": 70000}, "the command line")


def test_command_line_values_are_checked(monkeypatch, capsys):
    from webassets import __main__ as cli

    monkeypatch.delenv("WEBASSETS_SETTINGS", raising=False)
    assert cli.main(["serve", "--port", "70000"]) == cli.EXIT_CONFIG
