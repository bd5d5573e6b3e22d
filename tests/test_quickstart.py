"""bin/quickstart's Python: the part that prints Specify's values runs against this package."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_prints_the_values_specify_needs(tmp_path):
    with open(os.path.join(ROOT, "bin", "quickstart"), encoding="utf-8") as f:
        script = f.read()
    # The heredoc of print_specify_values(): what a newcomer's first run executes.
    snippet = re.search(r"print_specify_values\(\) \{\n.*?<<'EOF'\n(.*?)\nEOF\n", script,
                        re.S).group(1)
    settings = tmp_path / "settings.py"
    settings.write_text("KEY = 'k3y'\nSERVER_NAME = 'assets.example.org'\nPORT = 8080\n"
                        "BASE_DIR = %r\n" % str(tmp_path / "store"))
    result = subprocess.run([sys.executable, "-", str(settings)], input=snippet.encode("utf-8"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr.decode("utf-8", "replace")
    output = result.stdout.decode("utf-8")
    assert "http://assets.example.org:8080/web_asset_store.xml" in output
    assert "k3y" in output


def test_setup_cfg_installs_every_subpackage():
    # `pip install .` (not editable) copies only the packages setup.cfg names:
    # a subpackage left out imports fine from the checkout and fails once installed.
    import configparser
    import fnmatch
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"), encoding="utf-8")
    assert config["options"]["packages"].strip() == "find:"
    patterns = [p.strip() for p in config["options.packages.find"]["include"].split(",")]
    for directory, _dirs, files in os.walk(os.path.join(ROOT, "webassets")):
        if "__init__.py" in files:
            package = os.path.relpath(directory, ROOT).replace(os.sep, ".")
            assert any(fnmatch.fnmatchcase(package, p) for p in patterns), package
