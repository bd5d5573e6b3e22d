"""webassets: a Specify-compatible web asset server (stdlib + ExifRead)."""

__version__ = "0.1.0"
