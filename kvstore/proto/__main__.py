"""``python -m kvstore.proto [--force]``: (re)generate the protobuf modules.

Importing :mod:`kvstore.proto` has already brought them up to date; ``--force``
regenerates regardless (e.g. after editing the generator).
"""

import sys

from kvstore.proto._codegen import PACKAGE_DIR, ensure_generated

if __name__ == "__main__":
    done = ensure_generated(force="--force" in sys.argv[1:])
    print("generated" if done else "up to date", PACKAGE_DIR)
