import sys

from mars_jax.data.ingest.cli import main

if __name__ == "__main__":
    sys.exit(main())
