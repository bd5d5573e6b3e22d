"""Settings of the container image: the reference image's, from its environment variables."""

import os

# COMPAT: the reference image refuses to start without ATTACHMENT_KEY (KeyError); so do we,
# rather than serve with the well-known default key. ATTACHMENT_KEY=None turns security off.
if not (os.environ.get("ATTACHMENT_KEY") or os.environ.get("WEBASSETS_KEY")):
    raise RuntimeError("set ATTACHMENT_KEY (Specify 7's ASSET_SERVER_KEY, Specify 6's "
                       "attachment.key) in the container's environment")

BASE_DIR = "/home/specify/attachments"
PORT = 8080
# SERVER_NAME, SERVER_PORT, ATTACHMENT_KEY, DEBUG_MODE and WEBASSETS_<NAME> come from the
# environment (they override this file).
